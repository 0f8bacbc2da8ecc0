# The one paths module of the workflow, plus the config plumbing every rule shares.
#
# Every path derives from config["results"], config["reports"] and config["data"]["root"].
# Each job calls the CLI as `deqrobust CMD --config CONFIGFILE OVERRIDES ...`, where CONFIGFILE
# is the profile file Snakemake loaded and OVERRIDES repeats, as `--set key=value`,
# whatever the command line changed on top of it (--config, extra --configfile), so the
# library sees exactly the config Snakemake validated.
#
# Reruns: each rule's `params` hold the slice of the config its output depends on, so
# an edit of one attack reruns only the cells of that attack and what depends on them
# (Snakemake's default `params` rerun trigger). The config file itself is no input.
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

ENV = "../envs/deqrobust.yaml"
SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
# A conda env (--use-conda) installs this clone editable through pip's ${VAR} expansion.
os.environ.setdefault("DEQROBUST_ROOT", str(Path(workflow.basedir).resolve()))

# Names are used as path components.
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
BASELINE_ESTIMATOR = "autograd"  # plain backprop: the estimator of the deep-network baselines
FINAL = "final"
NAMED_STATES = (FINAL, "ensemble")  # attacked states besides the solver steps 1..N


# --------------------------------------------------------------------------------------
# The config file in use and the command-line overrides
# --------------------------------------------------------------------------------------
def _configfile_in_use():
    files = list(workflow.configfiles)
    if not files:
        raise WorkflowError("no config file: give --configfile config/<profile>.yaml")
    path = Path(files[0])
    try:
        return os.path.relpath(path) if path.is_absolute() and Path.cwd() in path.parents else str(path)
    except ValueError:
        return str(path)


CONFIGFILE = _configfile_in_use()
CONFIG_SETS = ""  # set by check_config(): the --set flags of the command-line overrides


def _yaml_scalar(text):
    """Snakemake's --config parses nested values with YAML's BaseLoader (all strings)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            return value
    return value


def _coerce_cli_values(raw, node):
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(node.get(key), dict):
            _coerce_cli_values(value, node[key])
        elif isinstance(value, str):
            node[key] = _yaml_scalar(value)
        elif isinstance(value, list):
            node[key] = [_yaml_scalar(v) if isinstance(v, str) else v for v in value]


def coerce_cli_config():
    """`--config 'data={archive: /x.tar.gz, allow_md5_mismatch: true}'` gives typed values."""
    _coerce_cli_values(workflow.config_settings.config or {}, config)


def _leaf_diff(base, new, prefix=()):
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            yield from _leaf_diff(base[key], value, (*prefix, key))
        elif key not in base or base[key] != value:
            yield ".".join((*prefix, key)), value


def _cli_overrides():
    """`--set` flags that turn the config file into the config Snakemake validated."""
    file_cfg = yaml.safe_load(Path(CONFIGFILE).read_text()) or {}
    try:
        validate(file_cfg, SCHEMA)  # fill the same defaults
    except WorkflowError:
        pass  # only the command line made it valid: every differing key is passed on
    flags = []
    for key, value in _leaf_diff(file_cfg, config):
        flags.append(f"--set {shlex.quote(f'{key}={json.dumps(value)}')}")
    return " ".join(flags)


def cli_args(wildcards, threads):
    """`--config CONFIGFILE`, the command-line overrides and `--set threads=N` of a CLI call.

    A params function that takes `threads` is "derived" for Snakemake, so the file name
    and the override flags are no rerun trigger; what a job depends on is its `settings`
    param (the config slice, after overrides).
    """
    return f"--config {shlex.quote(CONFIGFILE)} {CONFIG_SETS} --set threads={threads}".replace("  ", " ")


def configfile_arg(wildcards, threads):
    """The config file name, as a derived (non-trigger) param like cli_args."""
    return CONFIGFILE


def _cuda_available():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # snakemake may run outside the torch env (--use-conda)
        smi = shutil.which("nvidia-smi")
        return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def check_gpu():
    """onstart: a GPU-scale profile run locally without CUDA stops before its first job.

    Snakemake calls onstart only for real runs (not -n, --lint, --report); --touch and
    cluster submission (jobs run on other hosts) are let through.
    """
    if config["require_gpu"] and workflow.local_exec and not workflow.touch and not _cuda_available():
        _fail(
            f"profile {config['profile']!r} is GPU-scale (require_gpu: true) and no CUDA device is visible. "
            "Run the CPU profile instead: snakemake --cores 2 --configfile config/quick.yaml "
            "(or override at your own risk with --config require_gpu=False; expect weeks of compute)."
        )


def _check_specs(estimators, attacks):
    """Each estimator and attack spec through the library's own builders (keys, values)."""
    try:
        from deqrobust.attacks import build_attack
        from deqrobust.config import ConfigError
        from deqrobust.estimators import build_estimator
    except ImportError:  # snakemake outside the package's env (--use-conda): the jobs check
        return
    for name, spec in estimators.items():
        try:
            build_estimator(spec)
        except (ConfigError, TypeError) as err:
            _fail(f"evaluation.estimators.{name}: {err}")
    for name, spec in attacks.items():
        try:
            build_attack(name, spec)
        except (ConfigError, TypeError) as err:
            _fail(f"evaluation.attacks.{name}: {err}")


def _fail(message):
    raise WorkflowError(f"config {CONFIGFILE}: {message}")


def check_config():
    """Cross-references the schema cannot express; the GPU check. Runs before any job."""
    global CONFIG_SETS
    ev = config["evaluation"]
    estimators, attacks = ev["estimators"], ev["attacks"]
    for kind, names in (("model", config["models"]), ("estimator", estimators), ("attack", attacks)):
        for name in names:
            if not re.fullmatch(NAME_RE, name):
                _fail(f"{kind} name {name!r} must match {NAME_RE} (it becomes a path component)")
    if BASELINE_ESTIMATOR in estimators:
        _fail(f"evaluation.estimators.{BASELINE_ESTIMATOR}: the name is reserved for the baselines' plain backprop")
    budget = config["solver"]["budget"]
    for i, group in enumerate(ev["cells"]):
        for name in group["estimators"]:
            if name not in estimators:
                _fail(f"evaluation.cells[{i}].estimators: {name!r} is not in evaluation.estimators ({', '.join(estimators)})")
        for name in group["attacks"]:
            if name not in attacks:
                _fail(f"evaluation.cells[{i}].attacks: {name!r} is not in evaluation.attacks ({', '.join(attacks)})")
        for state in group["states"]:
            if state not in NAMED_STATES and not (isinstance(state, int) and 1 <= state <= budget):
                _fail(f"evaluation.cells[{i}].states: {state!r} must be 'final', 'ensemble' or a solver step 1..{budget} (solver.budget)")
    for name in ev["baseline_attacks"]:
        if name not in attacks:
            _fail(f"evaluation.baseline_attacks: {name!r} is not in evaluation.attacks ({', '.join(attacks)})")
    if deqs():
        for section, key, known in (
            ("evaluation.early_exit", ev["early_exit"]["estimator"], estimators),
            ("evaluation.early_exit", ev["early_exit"]["attack"], attacks),
            ("analysis", config["analysis"]["estimator"], estimators),
            ("analysis", config["analysis"]["attack"], attacks),
        ):
            if key not in known:
                _fail(f"{section}: {key!r} is not defined ({', '.join(known)})")
    _check_specs(estimators, attacks)
    # Local runs: one GPU job at a time unless --resources gpu=N says otherwise
    # (Snakemake leaves custom resources uncapped; workflow/profiles/default sets the same,
    # but a workflow profile is only found next to the Snakefile, so this is the fallback).
    # A cluster run (--jobs N with an executor) sets `nodes` and is left alone.
    if workflow.nodes is None and "gpu" not in workflow.global_resources:
        workflow.global_resources["gpu"] = 1
    CONFIG_SETS = _cli_overrides()


# --------------------------------------------------------------------------------------
# Models and the evaluation matrix
# --------------------------------------------------------------------------------------
def _models(deq):
    return [name for name, spec in config["models"].items() if (spec["arch"] == "mdeq") == deq]


def deqs():
    return _models(True)


def baselines():
    return _models(False)


def _alternation(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def deq_pattern():
    """Wildcard constraint of rules that only apply to DEQs."""
    return _alternation(deqs())


def cells():
    """(model, estimator, attack, state) of every evaluation job, in config order."""
    ev = config["evaluation"]
    seen = []
    for model in deqs():
        for group in ev["cells"]:
            for estimator in group["estimators"]:
                for attack in group["attacks"]:
                    for state in group["states"]:
                        cell = (model, estimator, attack, str(state))
                        if cell not in seen:
                            seen.append(cell)
    for model in baselines():
        for attack in ev["baseline_attacks"]:
            cell = (model, BASELINE_ESTIMATOR, attack, FINAL)
            if cell not in seen:
                seen.append(cell)
    return seen


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


def early_exit(model="{model}"):
    return results("early_exit", f"{model}.json")


def cell(model="{model}", estimator="{estimator}", attack="{attack}", state="{state}"):
    return results("eval", model, estimator, attack, f"state-{state}.json")


def analysis(model="{model}"):
    return results("analysis", f"{model}.json")


def table():
    return reports("table.csv")


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
    return [cell(*c) for c in cells()]


def all_analyses():
    return [analysis(m) for m in deqs()]


def all_targets():
    return [
        *[checkpoint(m) for m in config["models"]],
        *[early_exit(m) for m in deqs()],
        *all_cells(),
        table(),
        *all_analyses(),
        figures_dir(),
        report_md(),
        metrics_json(),
        *[notebook_out(n) for n in notebooks()],
    ]


# --------------------------------------------------------------------------------------
# Rerun triggers: the config slice each output depends on (canonical JSON strings)
# --------------------------------------------------------------------------------------
def _json(obj):
    return json.dumps(obj, sort_keys=True)


def _solvers():
    return {"solver": config["solver"], "backward_solver": config["backward_solver"], "seed": config["seed"]}


def data_settings():
    d = config["data"]
    return _json({k: d[k] for k in ("dev_size", "split_seed")})


def train_settings(wildcards):
    spec = copy.deepcopy(config["models"][wildcards.model])
    training = copy.deepcopy(config["training"])
    training.update(spec.pop("training_overrides", {}) or {})
    # not a rerun trigger: the backend never changes the result, amp only when on
    # (so outputs trained before these keys existed stay up to date)
    training.pop("distributed_backend", None)
    if training.get("amp") is False:
        training.pop("amp")
    d = config["data"]
    return _json({**spec, "training": training, "train_subset": d["train_subset"], **_solvers()})


def select_settings(wildcards):
    ee = config["evaluation"]["early_exit"]
    ev = config["evaluation"]
    return _json({
        **ee,
        "estimator_spec": ev["estimators"][ee["estimator"]],
        "attack_spec": ev["attacks"][ee["attack"]],
        **_solvers(),
    })


def cell_settings(wildcards):
    ev = config["evaluation"]
    estimator = None
    if wildcards.estimator != BASELINE_ESTIMATOR:
        estimator = ev["estimators"][wildcards.estimator]
    return _json({
        "estimator": estimator,
        "attack": ev["attacks"][wildcards.attack],
        "num_examples": ev["num_examples"],
        "test_subset": config["data"]["test_subset"],
        **_solvers(),
    })


def analysis_settings(wildcards):
    an = config["analysis"]
    ev = config["evaluation"]
    return _json({
        **an,
        "estimator_spec": ev["estimators"][an["estimator"]],
        "attack_spec": ev["attacks"][an["attack"]],
        "test_subset": config["data"]["test_subset"],
        **_solvers(),
    })


# --------------------------------------------------------------------------------------
# Resources: gpu (0/1), mem_mb, runtime (minutes); a cluster profile may override them
# --------------------------------------------------------------------------------------
def gpus():
    return 1 if config["require_gpu"] or config["device"].startswith("cuda") else 0


# A train job given several GPUs (--set-resources train:gpu=N) runs under torchrun.
def train_launcher(wildcards, threads, resources):
    """`deqrobust`, or torchrun with one process per GPU when the job has more than one."""
    n = int(resources.gpu)
    if n <= 1:
        return "deqrobust"
    return f"torchrun --standalone --nproc_per_node {n} -m deqrobust.cli"


def rank_threads(wildcards, threads, resources):
    """Under torchrun, the job's CPU threads divided among its processes (a later --set wins)."""
    n = int(resources.gpu)
    return f" --set threads={max(1, threads // n)}" if n > 1 else ""


# Per model scale: (train runtime, evaluation/analysis runtime, mem_mb), minutes and MB.
_SCALE = {
    "tiny": (120, 60, 4000),
    "small": (240, 120, 6000),
    "large": (4320, 720, 16000),
    "xl": (10080, 1440, 32000),
    "preact_resnet18": (1440, 240, 16000),
    "wrn34_10": (4320, 720, 32000),
}


def _scale(model):
    spec = config["models"][model]
    key = spec.get("size", "tiny") if spec["arch"] == "mdeq" else spec["arch"]
    return _SCALE.get(key, _SCALE["large"])


def train_runtime(wildcards):
    return _scale(wildcards.model)[0]


def eval_runtime(wildcards):
    return _scale(wildcards.model)[1]


def model_mem(wildcards):
    return _scale(wildcards.model)[2]
