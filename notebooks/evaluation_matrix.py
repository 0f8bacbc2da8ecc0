# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,language_info
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
#     file_extension: .py
#     mimetype: text/x-python
#     nbconvert_exporter: python
#     pygments_lexer: ipython3
# ---

# %% [markdown]
# # The estimator x attack x defense matrix
#
# This notebook reads the merged robustness table of one profile and shows the figures that
# test claims 2 to 5 of Yang, Pang & Liu (NeurIPS 2022). All plotting lives in
# `deqrobust.figures` and all verdict rules in `deqrobust.report`; this notebook only
# arranges and explains them.
#
# **Inputs (environment variables, set by the workflow):**
#
# | variable | meaning | default |
# |---|---|---|
# | `DEQROBUST_PROFILE` | the profile (paper, quick, smoke) | `profile` of `params.yaml` |
# | `DEQROBUST_CONFIG` | the profile config (models, scale) | `config/<profile>.yaml` |
# | `DEQROBUST_OVERRIDES` | the run's `--config` overrides, a JSON list | none |
# | `DEQROBUST_REPORTS` | the profile's reports folder | `reports` of the config |
# | `DEQROBUST_TABLE` | tidy table CSV (`deqrobust merge`) | `$DEQROBUST_REPORTS/table.csv` |
# | `DEQROBUST_ANALYSIS` | comma-separated analysis JSONs (`deqrobust analyze`) | `<results of the config>/analysis/*.json` |
# | `DEQROBUST_OUTCOMES` | per-example outcomes (`deqrobust merge --outcomes`) | `<results of the config>/outcomes.csv.gz` |
# | `DEQROBUST_EARLY_EXIT` | comma-separated development records (`deqrobust select-exit`) | `<results of the config>/early_exit/*.json` |
#
# The defaults are files of the checkout, found from any working directory (Jupyter starts
# the kernel in `notebooks/`): the nearest folder above that holds the `Snakefile`. Paths
# given in the variables are read from the working directory. The table carries each
# attack's type and settings as columns, so nothing here depends on attack names.

# %%
# %matplotlib inline
from IPython.display import Markdown, display

from deqrobust import analysis, figures, inputs, report, tabular, tidy

paths = inputs.notebook_inputs(require=("table",))
print(inputs.describe_inputs(paths))
cfg = paths["config"]
table = tidy.profile_rows(tidy.load_table(paths["table"]), cfg)  # cells of the profile's solver setting
analyses = [analysis.load(p) for p in paths["analysis"]]
print(f"table {paths['table']}: {len(table)} rows, models {', '.join(table['model'].unique())}")

# %% [markdown]
# ## Main table
#
# Per model and defense: clean accuracy, the strongest PGD-10 cell, the strongest cell of the
# AutoAttack family, and the per-example worst case over every attack, estimator and attacked
# state (accuracy in %, Wilson 95 % interval in brackets). "Strongest" means the lowest accuracy
# over all gradient estimators and attacked states. A column is headed by what ran in it:
# "AutoAttack" only for the standard suite, otherwise the attack and its iterations (for
# example "APGD-CE (20 it.)"). The RobustBench rows are published figures
# of large deep networks, given for context only: they were not measured here and come from
# models trained for hundreds of epochs, so a CPU profile is not expected to approach them.

# %%
header, rows = tabular.main_table_rows(table, cfg["profile"])
display(Markdown(tabular.markdown_table(header, rows)))

# %% [markdown]
# ## Robust accuracy by gradient estimator and attack
#
# One figure per model, one panel per defense (final state, early exit, ensemble of states).
# Rows are the gradient estimator and the state it was computed at (`exact@final`,
# `unroll@final` use the final state; `intermediate@n` and `adjoint@n` use solver state n);
# columns are attacks; the number is robust accuracy in %, and the colour scale spans the
# model's own range (shared by its panels), so that a few points of difference show. How to
# read it against the paper:
#
# - **Claim 2 (obfuscation):** in the *final* panel, the `@final` rows should be clearly
#   higher (brighter) than the `@n` rows: final-state gradients over-estimate robustness.
# - **Claim 3 (stronger attacks):** the lowest value in the final panel should sit in an
#   `@n` row.
# - **Claim 4 (defenses):** the early-exit and ensemble panels should be higher than the final
#   panel under the rows that are strongest against each of them.
#
# A standard-trained DEQ is near 0 % everywhere: its rows say that the attacks work at all.

# %%
for model in table["model"].unique():
    display(figures.heatmap_figure(table, model))

# %% [markdown]
# ## Accuracy of each solver state
#
# Top row: accuracy of the head applied to each solver iterate h(z_n), on clean and on
# adversarial inputs (from the fixed-point analysis). Bottom row: the defense that predicts
# with state n, from the table: clean accuracy, the per-example worst case over every attack,
# and per attack its strongest cell. Early states that keep more robust accuracy than the
# final state are what makes the early-exit defense of claim 4 work.

# %%
display(figures.state_accuracy_figure(analyses, table))

# %% [markdown]
# ## Verdicts on claims 2 to 5
#
# The rules are fixed in `deqrobust.report` (and printed in the reproduction report); they
# were not tuned to the results. Each is a paired test on the per-example outcomes the merge
# wrote; "not tested" says which model, cell or record the rule needs and this profile lacks.

# %%
outcomes = tidy.load_outcomes(paths["outcomes"]) if paths["outcomes"].is_file() else None
for finding in report.findings(analyses, cfg, outcomes, report.load_exits(paths["early_exit"]))[1:]:
    display(
        Markdown(
            f"**Claim {finding.claim}: {finding.verdict}.** {report.CLAIMS[finding.claim]}\n\n"
            f"*Rule:* {report.RULES[finding.claim]}\n\n" + "\n".join(finding.evidence)
        )
    )

# %% [markdown]
# ## Batch coupling
#
# The table above and the verdicts read the cells of the profile's solver setting. Cells the
# profile also ran under the authors' batch-coupled solver (a cell group's `coupling: batch`)
# are compared here with the same cells per sample, on the same images: how much of a
# final-state over-estimate comes from the coupling rather than from the DEQ (the report's
# section of the same name; evidence, no verdict).

# %%
coupling = report.coupling_lines(outcomes, analyses, cfg)
display(Markdown("\n".join(coupling[1:]) if coupling else "No cell of this profile ran under batch coupling."))
