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
# # Fixed-point analysis: do adversarially trained DEQs reach their equilibrium?
#
# Claim 1 of Yang, Pang & Liu (NeurIPS 2022): an adversarially trained DEQ needs more solver
# steps to reach its fixed point, or never reaches it. `deqrobust analyze` ran the forward
# solver of each DEQ with a longer budget and tolerance 0 on clean test images and on
# adversarial ones, and recorded every sample's relative residual
# ||f(z_n) - z_n|| / ||f(z_n)|| and the accuracy of h(z_n) at every step n. All plotting
# lives in `deqrobust.figures`, the verdict rule in `deqrobust.report`. The mechanism
# diagnostics below (gradient alignment with the true gradient, backward residuals, batch
# dependence) test the precondition of claim 2.
#
# **Inputs (environment variables, set by the workflow):**
#
# | variable | meaning | default |
# |---|---|---|
# | `DEQROBUST_ANALYSIS` | comma-separated analysis JSONs (`deqrobust analyze`) | `<results of the config>/analysis/*.json` |
# | `DEQROBUST_PROFILE`, `DEQROBUST_CONFIG` | the profile and its config | `profile` of `params.yaml`, `config/<profile>.yaml` |
# | `DEQROBUST_OVERRIDES` | the run's `--config` overrides, a JSON list | none |
# | `DEQROBUST_REPORTS`, `DEQROBUST_TABLE` | reports folder and tidy table (not needed here) | as in `evaluation_matrix` |
#
# The defaults are files of the checkout, found from any working directory (the nearest folder
# above that holds the `Snakefile`); paths given in the variables are read from the working
# directory.

# %%
# %matplotlib inline
from IPython.display import Markdown, display

from deqrobust import analysis, figures, inputs, report, tabular

paths = inputs.notebook_inputs(require=("analysis",))
print(inputs.describe_inputs(paths))
analyses = [analysis.load(p) for p in paths["analysis"]]
for a in analyses:
    m = a["model"]
    print(
        f"{m['name']}: {m['arch']}-{m['size']}, training {m['training']}, gradient {m['grad']}; "
        f"{a['num_examples']} images, {a['solver']['budget']} steps of {a['solver']['name']} traced, "
        f"tolerance {a['tol']:g}, deployed budget {a['deployed_budget']}"
    )

# %% [markdown]
# ## Residual versus solver step
#
# The line is the median relative residual over samples, the band the interquartile range,
# on a log scale; the dotted line is the solver tolerance of the config and the dashed line
# the deployed budget (the number of steps the model uses when it predicts). Colour separates
# standard from adversarial training; the left panel is clean inputs, the right adversarial
# inputs. Claim 1 predicts that the adversarially trained curves lie above the standard ones
# and flatten out above the tolerance.

# %%
display(figures.residual_figure(analyses))

# %% [markdown]
# ## Share of samples within the tolerance
#
# For each step n, the share of samples whose residual has reached the tolerance by step n.
# A curve that ends below 1 means that share of samples never converged within the traced
# budget; a curve that rises later means more steps are needed.

# %%
display(figures.convergence_figure(analyses))

# %% [markdown]
# ## Individual samples
#
# The summaries above can hide two populations (most samples converge, some diverge). Each
# thin line is one sample's residual trace (the first 50 of each input kind).

# %%
display(figures.sample_traces_figure(analyses))

# %% [markdown]
# ## Accuracy of h(z_n) per step
#
# If the prediction of early states differs from that of late states, the equilibrium is not
# where the accuracy is: with adversarial inputs, early states of a robust DEQ can be more
# accurate than its fixed point, which is the basis of the early-exit defense (claim 4).

# %%
display(figures.state_accuracy_figure(analyses, None))

# %% [markdown]
# ## Mechanism diagnostics: is the final-state gradient the gradient of what the model computes?
#
# The paper's mechanism: the forward solve of an adversarially trained DEQ does not converge,
# so gradients that assume a fixed point (`exact`, `unroll`, `neumann` at the final state) are
# misaligned with the true gradient of the model's output, and the attack is weakened
# (claim 2). `deqrobust analyze` measures each link on the first `analysis.diagnostics.num_examples`
# test images and their adversarial versions (docs/results.md, "Mechanism diagnostics"):
#
# - **alignment**: per image, the cosine between an estimator's input gradient and the true
#   gradient of the same output (`solver_autograd`: autograd through the solver's own
#   iterations). 1 means the estimator is the true gradient; below 0.9 (dotted) the report
#   counts it as misaligned, claim 2's precondition. Lines: the state-n estimators at each
#   state n (median, quartile band); diamonds: the final-state estimators at `final`.

# %%
display(figures.alignment_figure(analyses))

# %% [markdown]
# - **residuals**: the forward relative residual of the iterate the deployed solver returns
#   (its own budget and tolerance), and the relative residual of the backward (adjoint) solve
#   of `exact` after the backward solver's budget. A residual far above the tolerance (dotted)
#   means the fixed point, or the implicit gradient's linear system, was not solved.

# %%
display(figures.residual_distribution_figure(analyses))

# %% [markdown]
# Median cosine per estimator and state (the table of the report):

# %%
header, rows = report.alignment_rows(analyses)
display(Markdown(tabular.markdown_table(header, rows) if rows else "*No alignment in these analyses.*"))

# %% [markdown]
# - **batch dependence**: per image, the cosine between its gradient computed in a batch of
#   clean test images and computed alone, under per-sample solver decisions (`sample`, our
#   default: 1 by construction) and under the authors' whole-batch decisions (`batch`). Below 1
#   under `batch`, part of what an attack sees comes from the other images of the batch.

# %%
dependence = analysis.batch_dependence_frame(analyses)
display(
    Markdown(
        tabular.markdown_table(list(dependence.columns), dependence.round(3).astype(str).values.tolist())
        if len(dependence)
        else "*No batch dependence in these analyses.*"
    )
)
for a in analyses:
    t = a.get("timing", {})
    if "alignment_per_example" in t:
        print(
            f"{a['model']['name']}: gradients compared on {a['diagnostics']['num_examples']} images "
            f"({t['alignment_per_example']:.2f} s per image), batch dependence on a batch of "
            f"{a['diagnostics']['batch_size']} ({t['batch_dependence']:.0f} s)"
        )

# %% [markdown]
# ## Verdict on claim 1
#
# The rule is fixed in `deqrobust.report` and was not tuned to the results.

# %%
finding = report.claim1(analyses)
display(
    Markdown(
        f"**Claim 1: {finding.verdict}.** {report.CLAIMS[1]}\n\n*Rule:* {report.RULES[1]}\n\n"
        + "\n".join(finding.evidence)
    )
)
