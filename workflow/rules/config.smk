# The workflow-library boundary: Snakemake's `config` is built by the library's own loader,
# and every CLI call is given the same files and overrides.
#
# deqrobust.config, plan, instances and vocab are torch-free, so they import wherever Snakemake runs
# (with --use-conda too: Snakemake brings PyYAML and jsonschema). config.load reads the
# files Snakemake was given (--configfile, in order, or config/config.yaml) and the raw
# --config entries as `key=value` overrides, and runs every check (schema, ranges, names
# across sections, states, estimator and attack specs); slices.check_steps adds the
# references of early_exit and analysis. A wrong key or value stops `snakemake` (even -n)
# before any job, with the message the CLI gives for the same files and overrides.
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

if importlib.util.find_spec("deqrobust") is None:  # not installed: this clone's library
    sys.path.insert(0, str(Path(workflow.basedir, "src")))

from deqrobust import codeprint, instances, jobs, ownership, plan, slices, vocab
from deqrobust.config import load
from deqrobust.errors import ConfigError


def _shown(path):
    """A config file as jobs are given it: relative to the working directory when inside it."""
    path = Path(path)
    inside = path.is_absolute() and Path.cwd() in path.parents
    return os.path.relpath(path) if inside else str(path)


CONFIGFILES = [_shown(f) for f in workflow.configfiles]
_args = workflow.config_settings.config_args or []
OVERRIDES = [_args] if isinstance(_args, str) else list(_args)  # the raw --config entries

try:
    _checked = load(CONFIGFILES, OVERRIDES)
    slices.check_steps(_checked)
    ownership.check(_checked["results"], _checked["profile"])   # a results folder belongs to one profile
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_checked)

CLI_CONFIG = " ".join(
    [*(f"-c {shlex.quote(f)}" for f in CONFIGFILES), *(f"--set {shlex.quote(o)}" for o in OVERRIDES)]
)


def cli_args(wildcards, threads):
    """`-c FILE ... --set OVERRIDE ... --set threads=N` of a CLI call, and `--set seed=N` for
    the jobs of a seed instance (`<model>.s<seed>`, deqrobust.instances).

    A params function that takes `threads` is "derived" for Snakemake: file names and
    overrides are no rerun trigger; what a job depends on is its `settings` param (a slice
    from deqrobust.slices).
    """
    model = wildcards.get("model")
    seed = instances.seed_override(config, model) if model is not None else ""
    return f"{CLI_CONFIG} --set threads={threads}" + (f" --set {seed}" if seed else "")


def overrides_json(wildcards, threads):
    """The run's --config overrides as a JSON list, a derived (non-trigger) param: the notebooks
    load the config the report loaded (deqrobust.inputs.notebook_inputs)."""
    return json.dumps(OVERRIDES)


def configfile_arg(wildcards, threads):
    """The first config file, as a derived (non-trigger) param like cli_args."""
    return CONFIGFILES[0]


# Local runs: one GPU job at a time unless --resources gpu=N says otherwise (Snakemake
# leaves custom resources uncapped; workflow/profiles/default sets the same, but a workflow
# profile is only found next to the Snakefile, so this is the fallback). A cluster run
# (--jobs N with an executor) sets `nodes` and is left alone.
if workflow.nodes is None and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = 1


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
        raise WorkflowError(
            plan.require_gpu_message(config)
            + " Workflow: snakemake --cores 2 --configfile config/quick.yaml, or --config require_gpu=False."
        )
