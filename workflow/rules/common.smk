# The one paths module of the workflow, and the input and params functions the rules share.
#
# Every path derives from config["results"], config["reports"] and config["data"]["root"].
# Which jobs exist (models, cells), what each depends on (its `settings` param: Snakemake's
# params rerun trigger) and what each needs (resources) come from deqrobust.plan,
# deqrobust.slices and deqrobust.jobs, the same functions the library uses; workflow/rules/config.smk builds `config`.
import os
import re
from pathlib import Path

ENV = "../envs/deqrobust.yaml"
# A conda env (--use-conda) installs this clone editable through pip's ${VAR} expansion.
os.environ.setdefault("DEQROBUST_ROOT", str(Path(workflow.basedir).resolve()))


# --------------------------------------------------------------------------------------
# Models (their instances: one per seed, deqrobust.instances) and the evaluation matrix
# --------------------------------------------------------------------------------------
def job_config(wildcards):
    """The config of a job of model instance {model}: the profile's, with the instance's seed."""
    return instances.instance_config(config, wildcards.model)


def names_pattern(names):
    """Wildcard constraint matching exactly these names (none: nothing)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def deq_pattern():
    """Wildcard constraint of rules that only apply to DEQs."""
    return names_pattern(plan.deqs(config))


# --------------------------------------------------------------------------------------
# Paths (the only place that builds them)
# --------------------------------------------------------------------------------------
def results(*parts):
    return os.path.join(config["results"], *parts)


def reports(*parts):
    return os.path.join(config["reports"], *parts)


def data_root(*parts):
    return os.path.join(config["data"]["root"], *parts)


def log(*parts):
    return results("logs", *parts)


def split_json():
    return data_root("cifar10-split.json")


def batches_dir():
    return data_root("cifar-10-batches-py")


def model_dir(model="{model}"):
    return results("models", model)


def checkpoint(model="{model}"):
    return os.path.join(model_dir(model), "checkpoint.pt")


def training_curves(model="{model}"):
    return os.path.join(model_dir(model), "metrics.csv")


def training_summary(model="{model}"):
    return os.path.join(model_dir(model), "summary.json")


def snapshots(model="{model}"):
    """The list of the weights a training kept at its selection points (snapshots/ beside it)."""
    return os.path.join(model_dir(model), "snapshots.json")


def trajectory(model="{model}"):
    return results("trajectory", f"{model}.json")


def early_exit(model="{model}"):
    return results("early_exit", f"{model}.json")


def cell(model="{model}", estimator="{estimator}", attack="{attack}", state="{state}", solve="{solve}"):
    """A cell's file; `solve` is '' under the profile's solvers and evaluation batch, else a
    cell group's coupling and batch size ('.batch96', deqrobust.vocab.SolveSetting.suffix)."""
    return results("eval", model, estimator, attack, f"state-{state}{solve}.json")


def analysis(model="{model}"):
    return results("analysis", f"{model}.json")


def table():
    return reports("table.csv")


def outcomes():
    """Per-example outcomes of every cell (the report's paired tests); gzipped, beside the cells."""
    return results("outcomes.csv.gz")


def figures_dir():
    return reports("figures")


def report_md():
    return reports("report.md")


def metrics_json():
    return reports("metrics.json")


def notebooks():
    """Every jupytext notebook in notebooks/ is executed against this profile's results."""
    return sorted(p.stem for p in Path(workflow.basedir, "notebooks").glob("*.py"))


def notebook_source(name="{notebook}"):
    return os.path.join("notebooks", f"{name}.py")


def notebook_out(name="{notebook}"):
    return reports("notebooks", f"{name}.ipynb")


def all_cells():
    return [cell(c.model, c.estimator, c.attack, c.state, c.setting.suffix) for c in plan.cells(config)]


def all_early_exits():
    return [early_exit(m) for m in plan.deqs(config)]


def all_analyses():
    return [analysis(m) for m in plan.deqs(config)]


def all_summaries():
    return [training_summary(m) for m in plan.trained(config)]


def all_training_curves():
    return [training_curves(m) for m in plan.trained(config)]


def all_trajectories():
    return [trajectory(m) for m in plan.trained_deqs(config)]


def all_targets():
    return [
        *[checkpoint(m) for m in instances.instance_names(config)],
        *all_early_exits(),
        *all_cells(),
        table(),
        *all_analyses(),
        *all_trajectories(),
        figures_dir(),
        report_md(),
        metrics_json(),
        *[notebook_out(n) for n in notebooks()],
    ]


# --------------------------------------------------------------------------------------
# The rerun trigger for library code: a rule's `code` param (deqrobust.codeprint)
# --------------------------------------------------------------------------------------
def code_of(command):
    """The fingerprint of the library code `deqrobust <command>` runs: a change of it reruns the rule."""
    return codeprint.command_fingerprint(command)


# --------------------------------------------------------------------------------------
# Params of the train rule
# --------------------------------------------------------------------------------------
# A train job given several GPUs (--set-resources train:gpu=N) runs under torchrun.
def train_launcher(wildcards, threads, resources):
    """`deqrobust`, or torchrun with one process per GPU when the job has more than one."""
    n = int(resources.gpu)
    if n <= 1:
        return "deqrobust"
    return f"torchrun --standalone --nproc_per_node {n} -m deqrobust.cli"


# --------------------------------------------------------------------------------------
# The import rule: the authors' checkpoint, or a user's DEQ (arch factory) by its factory and weights
# --------------------------------------------------------------------------------------
def import_source(wildcards):
    spec = config["models"][wildcards.model]
    return spec["weights"] if spec["arch"] == vocab.FACTORY else spec["checkpoint"]


def import_how(wildcards, input):
    """The source of `deqrobust import`: the authors' file, or --factory, --kwargs and --weights."""
    spec = config["models"][wildcards.model]
    if spec["arch"] != vocab.FACTORY:
        return shlex.quote(input.source)
    kwargs = json.dumps(spec.get("kwargs") or {})
    return f"--factory {spec['factory']} --kwargs {shlex.quote(kwargs)} --weights {shlex.quote(input.source)}"


# --------------------------------------------------------------------------------------
# Params of the evaluate rule
# --------------------------------------------------------------------------------------
def cell_job_config(wildcards):
    """The config of cell {model} {solve}: the instance's, under the cell's coupling and batch."""
    return plan.cell_config(job_config(wildcards), vocab.SolveSetting.parse_suffix(wildcards.solve))


def cell_cli_args(wildcards, threads):
    """cli_args, and `--coupling C --batch-size N` for a cell off the profile's setting. One
    derived param (it takes `threads`): no rerun trigger (the cell's `settings` slice holds
    both), and the rule's shell text stays that of the cells made before cells had a setting
    (Snakemake's `code` trigger compares it)."""
    setting = vocab.SolveSetting.parse_suffix(wildcards.solve)
    solve = "" if setting.coupling is None else f" --coupling {setting.coupling} --batch-size {setting.batch_size}"
    return cli_args(wildcards, threads) + solve


def rank_threads(wildcards, threads, resources):
    """Under torchrun, the job's CPU threads divided among its processes (a later --set wins)."""
    n = int(resources.gpu)
    return f" --set threads={max(1, threads // n)}" if n > 1 else ""
