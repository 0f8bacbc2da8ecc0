# deqrobust: reproduction of "A Closer Look at the Adversarial Robustness of Deep
# Equilibrium Models" (NeurIPS 2022). Every rule is one call of the `deqrobust` CLI;
# workflow/rules/common.smk owns every path. See docs/workflow.md.
#
#   snakemake --cores 8 --use-conda                        # the paper (config/config.yaml, GPU)
#   snakemake --cores 2 --configfile config/quick.yaml     # CPU reproduction, about an hour
#   snakemake --cores 2 --configfile config/smoke.yaml \
#       --config 'data={archive: /path/cifar-10-python.tar.gz}'   # minutes, for tests
import shutil

from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

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


include: "workflow/rules/common.smk"


coerce_cli_config()  # --config 'data={archive: PATH}': nested values are read as YAML
# Stops before any job runs, naming the wrong key or value.
validate(config, "workflow/schemas/config.schema.yaml")
check_config()  # names used across sections, states within the solver budget


onstart:
    check_gpu()  # require_gpu without CUDA: stop before the first job, naming quick.yaml


wildcard_constraints:
    model=NAME_RE,
    estimator=NAME_RE,
    attack=NAME_RE,
    notebook=NAME_RE,


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        all_targets(),
