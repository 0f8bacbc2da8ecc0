# deqrobust: reproduction of "A Closer Look at the Adversarial Robustness of Deep
# Equilibrium Models" (NeurIPS 2022). Every rule is one call of the `deqrobust` CLI;
# workflow/rules/common.smk owns every path; deqrobust.plan says which jobs exist,
# deqrobust.slices what each depends on. See docs/workflow.md.
#
#   snakemake --cores 8 --use-conda                        # the paper (config/config.yaml, GPU)
#   snakemake --cores 2 --configfile config/quick.yaml     # CPU reproduction, about an hour
#   snakemake --cores 2 --configfile config/smoke.yaml \
#       --config 'data={archive: /path/synthetic.tar.gz, allow_md5_mismatch: true}'   # minutes, for tests
import shutil

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

min_version("9.0")

# --use-conda without conda: one line with both routes, before Snakemake's "Error running conda info".
if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method and not shutil.which("conda"):
    raise WorkflowError(
        "--use-conda needs conda on PATH and there is none: install it (Miniforge, https://conda-forge.org/download/) "
        "or drop --use-conda and run in the pip environment: bash .ci/setup && . .venv/bin/activate"
    )


report: "workflow/report/workflow.rst"

# The paper profile is the default. A --configfile on the command line replaces it
# (Snakemake would otherwise merge the two files, and the paper's models would leak
# into a smaller profile).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# `config` from the library's loader and checks (deqrobust.config, deqrobust.plan): a wrong
# key or value stops here, before any job, naming it.
include: "workflow/rules/config.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/dvc.smk"


onstart:
    check_gpu()  # require_gpu without CUDA: stop before the first job, naming quick.yaml
    ownership.claim(config["results"], config["profile"])
    dvc_record_start()  # DVC records what a run finishes (workflow/rules/dvc.smk)


onsuccess:
    dvc_record_end("end")


onerror:
    dvc_record_end("failed run")


wildcard_constraints:
    model=plan.NAME_RE,
    estimator=plan.NAME_RE,
    attack=plan.NAME_RE,
    notebook=plan.NAME_RE,


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        all_targets(),
