# One job per cell of the estimator x attack x attacked-state matrix, under the profile's
# solvers or a cell group's coupling and batch ({solve}: '' or '.batch96'; resumable by
# batch: the CLI keeps <cell>.partial/ while running; it is not an output), then the merge.


rule evaluate:
    input:
        checkpoint=checkpoint(),
        split=split_json(),
    output:
        cell(),
    params:
        cli=cell_cli_args,
        settings=lambda w: slices.settings(slices.cell_slice(cell_job_config(w), w.estimator, w.attack)),
        code=code_of("evaluate"),
    log:
        log("evaluate", "{model}", "{estimator}", "{attack}", "state-{state}{solve}.log"),
    wildcard_constraints:
        state=vocab.STATE_RE,
        solve=vocab.SOLVE_RE,
    threads: config["threads"]
    resources:
        gpu=jobs.gpus(config),
        mem_mb=lambda w: jobs.resources(config, w.model).mem_mb,
        runtime=lambda w: jobs.resources(config, w.model).eval_minutes,
    conda:
        ENV
    shell:
        "deqrobust evaluate {params.cli}"
        " --checkpoint {input.checkpoint} --estimator {wildcards.estimator}"
        " --attack {wildcards.attack} --state {wildcards.state} --out {output} > {log} 2>&1"


rule merge:
    input:
        cells=all_cells(),
        early_exit=all_early_exits(),
        split=split_json(),   # the archive the table's data came from (its provenance columns)
    output:
        table=report(
            table(),
            caption="../report/table.rst",
            category="Robustness table",
        ),
        outcomes=outcomes(),
    params:
        cli=cli_args,
        code=code_of("merge"),
    log:
        log("merge.log"),
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "deqrobust merge {params.cli}"
        " --cells {input.cells} --early-exit {input.early_exit} --out {output.table}"
        " --outcomes {output.outcomes} > {log} 2>&1"
