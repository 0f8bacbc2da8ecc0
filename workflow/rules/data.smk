# CIFAR-10: download (or import data.archive), verify, carve the development split.


rule data:
    output:
        split=split_json(),
        batches=directory(batches_dir()),
    params:
        cli=cli_args,
        settings=slices.settings(slices.data_slice(config)),
        code=code_of("data"),
    log:
        log("data.log"),
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "deqrobust data {params.cli}"
        " > {log} 2>&1"
