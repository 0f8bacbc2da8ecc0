# Figures, the reproduction report and the executed analysis notebooks.


rule figures:
    input:
        table=table(),
        analyses=all_analyses(),
        trajectories=all_trajectories(),
        curves=all_training_curves(),
    output:
        report(
            directory(figures_dir()),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        cli=cli_args,
        settings=lambda w: slices.settings(slices.report_slice(config)),
        code=code_of("figures"),
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
        " --training-curves {input.curves} --out-dir {output} > {log} 2>&1"


rule report:
    input:
        table=table(),
        outcomes=outcomes(),
        early_exit=all_early_exits(),
        analyses=all_analyses(),
        trajectories=all_trajectories(),
        summaries=all_summaries(),
    output:
        report=report(
            report_md(),
            caption="../report/report.rst",
            category="Reproduction report",
        ),
        metrics=metrics_json(),
    params:
        cli=cli_args,
        settings=lambda w: slices.settings(slices.report_slice(config)),
        code=code_of("report"),
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
        " --analysis {input.analyses} --trajectory {input.trajectories} --summary {input.summaries}"
        " --out {output.report} --metrics {output.metrics} > {log} 2>&1"


# notebooks/*.py are jupytext (percent format) notebooks; they read the report's inputs from
# DEQROBUST_TABLE, DEQROBUST_OUTCOMES, DEQROBUST_ANALYSIS and DEQROBUST_EARLY_EXIT (comma
# separated), DEQROBUST_REPORTS, DEQROBUST_CONFIG and DEQROBUST_OVERRIDES (the run's --config, so
# their verdicts are the report's), run from the repository root, and are stored executed as .ipynb.
rule notebook:
    input:
        notebook=notebook_source(),
        table=table(),
        analyses=all_analyses(),
        outcomes=outcomes(),
        early_exit=all_early_exits(),
    output:
        notebook_out(),
    params:
        analyses=lambda wildcards, input: ",".join(input.analyses),
        exits=lambda wildcards, input: ",".join(input.early_exit),
        overrides=overrides_json,
        reports=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        config=configfile_arg,
        code=lambda w: codeprint.fingerprint(notebook_source(w.notebook)),
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
        " DEQROBUST_OUTCOMES={input.outcomes} DEQROBUST_EARLY_EXIT={params.exits}"
        " DEQROBUST_REPORTS={params.reports} DEQROBUST_CONFIG={params.config} DEQROBUST_OVERRIDES={params.overrides:q}"
        " jupytext --to ipynb --execute --run-path . --output {output} {input.notebook}"
        " > {log} 2>&1"
