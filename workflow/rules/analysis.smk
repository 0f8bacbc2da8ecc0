# Fixed-point analysis of each DEQ: residual traces and per-state accuracy, clean and
# adversarial, and the mechanism diagnostics (gradient alignment with the true gradient,
# backward residuals, batch dependence; analysis.diagnostics).


rule analyze:
    input:
        checkpoint=checkpoint(),
        split=split_json(),
    output:
        analysis(),
    params:
        cli=cli_args,
        settings=lambda w: slices.settings(slices.analysis_slice(job_config(w))),
        code=code_of("analyze"),
    log:
        log("analyze", "{model}.log"),
    wildcard_constraints:
        model=deq_pattern(),
    threads: config["threads"]
    resources:
        gpu=jobs.gpus(config),
        mem_mb=lambda w: jobs.resources(config, w.model).mem_mb,
        runtime=lambda w: jobs.resources(config, w.model).eval_minutes,
    conda:
        ENV
    shell:
        "deqrobust analyze {params.cli}"
        " --checkpoint {input.checkpoint} --out {output} --no-progress > {log} 2>&1"


# Training dynamics of each trained DEQ: every snapshot its training kept, analysed on the same
# test images (deqrobust.trajectory).
rule trajectory:
    input:
        snapshots=snapshots(),
        split=split_json(),
    output:
        trajectory(),
    params:
        cli=cli_args,
        settings=lambda w: slices.settings(slices.trajectory_slice(job_config(w))),
        code=code_of("trajectory"),
    log:
        log("trajectory", "{model}.log"),
    wildcard_constraints:
        model=names_pattern(plan.trained_deqs(config)),
    threads: config["threads"]
    resources:
        gpu=jobs.gpus(config),
        mem_mb=lambda w: jobs.resources(config, w.model).mem_mb,
        runtime=lambda w: jobs.resources(config, w.model).eval_minutes,
    conda:
        ENV
    shell:
        "deqrobust trajectory {params.cli}"
        " --snapshots {input.snapshots} --out {output} --no-progress > {log} 2>&1"
