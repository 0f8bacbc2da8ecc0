# Fixed-point analysis of each DEQ: residual traces and per-state accuracy, clean and
# adversarial.


rule analyze:
    input:
        checkpoint=checkpoint(),
        split=split_json(),
    output:
        analysis(),
    params:
        cli=cli_args,
        settings=analysis_settings,
    log:
        log("analyze", "{model}.log"),
    wildcard_constraints:
        model=deq_pattern(),
    threads: config["threads"]
    resources:
        gpu=gpus(),
        mem_mb=model_mem,
        runtime=eval_runtime,
    conda:
        ENV
    shell:
        "deqrobust analyze {params.cli}"
        " --checkpoint {input.checkpoint} --out {output} --no-progress > {log} 2>&1"
