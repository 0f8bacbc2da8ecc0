# Figures, the reproduction report and the executed analysis notebooks.


rule figures:
    input:
        table=table(),
        analyses=all_analyses(),
        trajectories=all_trajectories(),
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
        " --table {input.table} --analysis {input.analyses} --trajectory {input.trajectories}"
        " --out-dir {output} > {log} 2>&1"


rule report:
    input:
        table=table(),
        outcomes=outcomes(),
        early_exit=all_early_exits(),
        analyses=all_analyses(),
        trajectories=all_trajectories(),
    output:
        report=report(
            report_md(),
            caption="../report/report.rst",
            category="Reproduction report",
        ),
        metrics=metrics_json(),
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
        " --table {input.table} --outcomes {input.outcomes} --early-exit {input.early_exit}"
        " --analysis {input.analyses} --trajectory {input.trajectories}"
        " --out {output.report} --metrics {output.metrics} > {log} 2>&1"


# notebooks/*.py are jupytext (percent format) notebooks; they read their inputs from
# DEQROBUST_TABLE, DEQROBUST_ANALYSIS (comma separated), DEQROBUST_REPORTS and
# DEQROBUST_CONFIG, run from the repository root, and are stored executed as .ipynb.
rule notebook:
    input:
        notebook=notebook_source(),
        table=table(),
        analyses=all_analyses(),
    output:
        notebook_out(),
    params:
        analyses=lambda wildcards, input: ",".join(input.analyses),
        reports=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        config=configfile_arg,
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
        " DEQROBUST_REPORTS={params.reports} DEQROBUST_CONFIG={params.config}"
        " jupytext --to ipynb --execute --run-path . --output {output} {input.notebook}"
        " > {log} 2>&1"
