# Figures, the reproduction report and the executed analysis notebooks.


rule figures:
    input:
        table=table(),
        analyses=all_analyses(),
    output:
        report(
            directory(figures_dir()),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        cli=cli_args,
    log:
        log("figures.log"),
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "deqrobust figures {params.cli}"
        " --table {input.table} --analysis {input.analyses} --out-dir {output} > {log} 2>&1"


rule report:
    input:
        table=table(),
        analyses=all_analyses(),
    output:
        report(
            report_md(),
            caption="../report/report.rst",
            category="Reproduction report",
        ),
    params:
        cli=cli_args,
    log:
        log("report.log"),
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "deqrobust report {params.cli}"
        " --table {input.table} --analysis {input.analyses} --out {output} > {log} 2>&1"


# notebooks/*.py are jupytext (percent format) notebooks; they read their inputs from
# DEQROBUST_TABLE, DEQROBUST_ANALYSIS (comma separated) and DEQROBUST_FIGURES, run from the
# repository root, and are stored executed as .ipynb.
rule notebook:
    input:
        notebook=notebook_source(),
        table=table(),
        analyses=all_analyses(),
        figures=figures_dir(),
    output:
        notebook_out(),
    params:
        analyses=lambda wildcards, input: ",".join(input.analyses),
    log:
        log("notebook", "{notebook}.log"),
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "DEQROBUST_TABLE={input.table} DEQROBUST_ANALYSIS={params.analyses}"
        " DEQROBUST_FIGURES={input.figures}"
        " jupytext --to ipynb --execute --run-path . --output {output} {input.notebook}"
        " > {log} 2>&1"
