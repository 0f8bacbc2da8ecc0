# Train every model instance (DEQs and deep-network baselines, one per seed); resumable:
# an interrupted job leaves <model dir>/resume.pt, which the rerun picks up.
# A job given several GPUs (e.g. --set-resources train:gpu=4) trains data-parallel:
# torchrun starts one process per GPU and the job's threads are shared among them
# (docs/workflow.md, "Multi-GPU training").


rule train:
    input:
        split=split_json(),
        batches=batches_dir(),
    output:
        checkpoint=checkpoint(),
        curves=training_curves(),
        summary=training_summary(),
        snapshots=snapshots(),
    params:
        cli=cli_args,
        launcher=train_launcher,
        rank_threads=rank_threads,
        settings=lambda w: slices.settings(slices.train_slice(config, w.model)),
        code=code_of("train"),
        out=lambda wildcards, output: os.path.dirname(output.checkpoint),
    log:
        log("train", "{model}.log"),
    threads: config["threads"]
    resources:
        gpu=jobs.gpus(config),
        mem_mb=lambda w: jobs.resources(config, w.model).mem_mb,
        runtime=lambda w: jobs.resources(config, w.model).train_minutes,
    conda:
        ENV
    shell:
        "{params.launcher} train {params.cli}{params.rank_threads}"
        " --model {wildcards.model} --out {params.out} > {log} 2>&1"


# A model with `checkpoint:` (a file of the authors' training code) or of arch factory (a user's
# DEQ: its factory and weights) is imported instead of trained (deqrobust.plan.imported): its
# checkpoint.pt is written where training would put it, and every later rule reads it unchanged.
# It has no metrics.csv or summary.json.
for _name in plan.imported(config):
    _spec = config["models"][_name]
    _key = "weights" if _spec["arch"] == vocab.FACTORY else "checkpoint"
    if not os.path.isfile(_spec[_key]):
        _example = (
            "{factory: mypkg.models:build, weights: /path/to/weights.pt, training: pgd}"
            if _key == "weights"
            else "{checkpoint: /path/to/model_best.pth.tar, grad: exact, training: pgd}"
        )
        raise WorkflowError(
            f"models.{_name}.{_key}: {_spec[_key]!r} is no file. Give the file of this model and how it was "
            f"trained, e.g. --config 'models={{{_name}: {_example}}}'"
        )


ruleorder: import_checkpoint > train


rule import_checkpoint:
    input:
        source=import_source,
    output:
        checkpoint=checkpoint(),
    params:
        how=import_how,
        grad=lambda w: config["models"][w.model]["grad"],
        training=lambda w: config["models"][w.model]["training"],
        settings=lambda w: slices.settings(slices.import_slice(config, w.model)),
        code=code_of("import"),
    log:
        log("import", "{model}.log"),
    wildcard_constraints:
        model=names_pattern(plan.imported(config)),
    threads: 1
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    conda:
        ENV
    shell:
        "deqrobust import {params.how} --grad {params.grad} --training {params.training}"
        " --name {wildcards.model} --out {output.checkpoint} > {log} 2>&1"


rule select_exit:
    input:
        checkpoint=checkpoint(),
        split=split_json(),
    output:
        early_exit(),
    params:
        cli=cli_args,
        settings=lambda w: slices.settings(slices.select_slice(job_config(w))),
        code=code_of("select-exit"),
    log:
        log("select_exit", "{model}.log"),
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
        "deqrobust select-exit {params.cli}"
        " --checkpoint {input.checkpoint} --out {output} > {log} 2>&1"
