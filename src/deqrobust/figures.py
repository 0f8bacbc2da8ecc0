"""Figures of the results and analyses; this module only draws.

Data come from ``deqrobust.queries`` (the tidy table's queries) and the analysis records.
Each figure function returns a matplotlib ``Figure`` built without pyplot, so the CLI can
save it and a notebook can display it without a second copy of the plotting code. Pieces
that a profile did not run (no analysis of a model, no per-state rows) show as an empty
panel with a note, never as an error. Every figure is grown until its text fits inside
its canvas (``fit``), so nothing is clipped, whatever the lengths of the names.
"""

from __future__ import annotations

import contextlib
import os
import re
import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deqrobust import queries, tabular
from deqrobust.atomic import atomic_path, write_text
from deqrobust.vocab import FINAL

DPI = 150
MARGIN = 0.05  # inches added beyond the text when a figure grows
MIN_AXES = 0.5  # inches: the smallest plot (width and height) a figure may leave


# ---------------------------------------------------------------- figures
@contextlib.contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        yield


@contextlib.contextmanager
def _seeded_jitter(seed: int = 0) -> Iterator[None]:
    """seaborn's strip-plot jitter draws from numpy's global generator: seed it here (and restore
    it after), so two runs on the same data give byte-identical figures."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _label(analysis: dict) -> str:
    model = analysis["model"]
    return _model_label(model["name"], model["training"], model["grad"])


def _model_label(name: str, training: str, grad: str | None) -> str:
    return f"{name} ({training}, {grad})"


def residual_frame(analyses: list[dict]) -> pd.DataFrame:
    """Per model, input kind and step: median and quartiles of the relative residual."""
    rows = []
    for a in analyses:
        for kind, summary in a["inputs"].items():
            res = summary["residual"]
            for step, (med, q25, q75) in enumerate(zip(res["median"], res["q25"], res["q75"]), start=1):
                rows.append(
                    {
                        "model": _label(a),
                        "training": a["model"]["training"],
                        "inputs": kind,
                        "step": step,
                        "median": med,
                        "q25": q25,
                        "q75": q75,
                    }
                )
    return pd.DataFrame(rows, columns=["model", "training", "inputs", "step", "median", "q25", "q75"]).astype(
        {"median": float, "q25": float, "q75": float}
    )


def _steps_axis(ax, label: str = "solver step n") -> None:
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()  # not set_yticks([]): that would clear the ticks of every axis sharing y


def training_colours(trainings) -> dict:
    """One colour per training, the same in every figure that tells trainings apart."""
    names = sorted(set(trainings))
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def residual_figure(analyses: list[dict]) -> Figure:
    """(a) Relative residual vs solver step: median line, quartile band; facets clean/adversarial."""
    frame = residual_frame(analyses)
    kinds = [k for k in ("clean", "adversarial") if k in set(frame["inputs"])] or ["clean"]
    with _style():
        fig = Figure(figsize=(5 * len(kinds), 4), layout="constrained")
        axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
        palette = training_colours(frame["training"])
        tols = {a["tol"] for a in analyses} - {0}
        budgets = {a["deployed_budget"] for a in analyses}
        for ax, kind in zip(axes, kinds):
            part = frame[frame["inputs"] == kind]
            if part.empty:
                _empty(ax, "no analysis")
                continue
            sns.lineplot(
                part, x="step", y="median", hue="training", style="model", palette=palette, ax=ax, estimator=None
            )
            for _, line in part.groupby("model"):
                ax.fill_between(
                    line["step"],
                    line["q25"],
                    line["q75"],
                    alpha=0.2,
                    color=palette[line["training"].iloc[0]],
                    linewidth=0,
                )
            for tol in tols:
                ax.axhline(tol, color="grey", linestyle=":", linewidth=1)
            for budget in budgets:
                ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set(title=f"{kind} inputs", ylabel="relative residual ||f(z)-z|| / ||f(z)||")
            _steps_axis(ax)
        fig.suptitle("Forward solver residual (median, quartile band); dotted: tolerance, dashed: deployed budget")
    return fit(fig)


def convergence_figure(analyses: list[dict]) -> Figure:
    """Share of samples within tolerance by step n (a curve that stays below 1 never converges)."""
    rows = []
    for a in analyses:
        for kind, summary in a["inputs"].items():
            counts = np.cumsum(summary["steps_to_tol"]["counts"]) / summary["n"]
            rows += [
                {"model": _label(a), "inputs": kind, "step": s, "share converged": c}
                for s, c in enumerate(counts, start=1)
            ]
    frame = pd.DataFrame(rows, columns=["model", "inputs", "step", "share converged"])
    with _style():
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        if frame.empty:
            _empty(ax, "no analysis")
        else:
            sns.lineplot(frame, x="step", y="share converged", hue="model", style="inputs", ax=ax, estimator=None)
            ax.set(ylim=(-0.02, 1.02), title="Samples within the solver tolerance")
            _steps_axis(ax)
    return fit(fig)


def sample_traces_figure(analyses: list[dict], max_samples: int = 50) -> Figure:
    """Per-sample relative residual traces (the raw matrix of the analysis), one panel per model."""
    with _style():
        fig = Figure(figsize=(4 * max(len(analyses), 1), 3.5), layout="constrained")
        axes = fig.subplots(1, max(len(analyses), 1), sharey=True, squeeze=False)[0]
        if not analyses:
            _empty(axes[0], "no analysis")
        colors = dict(zip(("clean", "adversarial"), sns.color_palette("colorblind")))
        for ax, a in zip(axes, analyses):
            for kind, summary in a["inputs"].items():
                traces = np.array(summary["per_sample"]["rel_residual"][:max_samples], dtype=float)
                steps = np.arange(1, traces.shape[1] + 1)
                ax.plot(steps, traces.T, color=colors[kind], alpha=0.25, linewidth=0.7)
                ax.plot([], [], color=colors[kind], label=f"{kind} (first {len(traces)})")
            if a["tol"] > 0:
                ax.axhline(a["tol"], color="grey", linestyle=":", linewidth=1)
            ax.set_yscale("log")
            ax.set(title=_label(a), ylabel="relative residual")
            _steps_axis(ax)
            ax.legend(loc="upper right")
    return fit(fig)


def state_accuracy_figure(analyses: list[dict], table: pd.DataFrame | None) -> Figure:
    """(b) Per DEQ: accuracy of h(z_n) per step (analysis, top) and, given the table, the
    robust accuracy of the defense that predicts with state n (bottom)."""
    by_name = {a["model"]["name"]: a for a in analyses}
    deqs = list(by_name)
    if table is not None:
        deqs += [m for m in queries.state_models(table) if m not in by_name]
    nrows, ncols = (1 if table is None else 2), max(len(deqs), 1)
    with _style():
        fig = Figure(figsize=(4 * ncols, 3.5 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)  # not shared: an empty panel would hide tick labels
        if not deqs:
            _empty(axes[0, 0], "no DEQ analysis or per-state rows")
        for col, model in enumerate(deqs):
            if model in by_name:
                a = by_name[model]
                frame = pd.DataFrame(
                    [
                        {"step": s, "accuracy": acc, "inputs": kind}
                        for kind, summary in a["inputs"].items()
                        for s, acc in enumerate(summary["accuracy"], start=1)
                    ]
                )
                sns.lineplot(frame, x="step", y="accuracy", style="inputs", ax=axes[0, col], color="k", estimator=None)
                axes[0, col].set(
                    title=f"{_label(a)}\nh(z_n); adversarial: {a['attack']} via {a['estimator']}", ylim=(-0.02, 1.02)
                )
                _steps_axis(axes[0, col], "solver state n")
            else:
                _empty(axes[0, col], f"{model}: no analysis")
            if table is None:
                continue
            frame = queries.state_table_frame(table, model)
            if frame.empty:
                _empty(axes[1, col], f"{model}: no per-state rows")
                continue
            sns.lineplot(frame, x="step", y="accuracy", hue="series", ax=axes[1, col], marker="o", estimator=None)
            axes[1, col].set(title=f"{model}: defense 'state n' (table)", ylim=(-0.02, 1.02))
            _steps_axis(axes[1, col], "solver state n")
    return fit(fig)


def alignment_figure(analyses: list[dict]) -> Figure:
    """Cosine between each estimator's input gradient and the true gradient of the same output
    (median, quartile band) against the state n, one panel per model (columns) and input kind
    (rows); final-state estimators are markers with quartile bars at 'final'."""
    from deqrobust.analysis import alignment_frame
    from deqrobust.stats import ALIGNED_COSINE

    frame = alignment_frame(analyses)
    models = list(dict.fromkeys(frame["model"]))
    kinds = [k for k in ("clean", "adversarial") if k in set(frame["inputs"])] or ["clean"]
    names = sorted(set(frame["estimator"]))
    palette = dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))
    with _style():
        fig = Figure(figsize=(4.5 * max(len(models), 1), 3.5 * len(kinds)), layout="constrained")
        axes = fig.subplots(len(kinds), max(len(models), 1), squeeze=False, sharey=True)
        if not models:
            _empty(axes[0, 0], "no alignment in the analyses")
        for col, model in enumerate(models):
            steps = sorted(frame.loc[frame["model"] == model, "step"].dropna().unique())
            final_x = (max(steps) if steps else 0) + 1.5
            for row, kind in enumerate(kinds):
                ax, part = axes[row, col], frame[(frame["model"] == model) & (frame["inputs"] == kind)]
                first = part.iloc[0] if len(part) else None
                if first is None:
                    _empty(ax, f"{model}: no {kind} alignment")
                    continue
                finals = part[part["step"].isna()].sort_values("estimator")
                for estimator, line in part[part["step"].notna()].groupby("estimator"):
                    line = line.sort_values("step")
                    ax.plot(
                        line["step"],
                        line["median"],
                        marker="o",
                        markersize=3,
                        color=palette[estimator],
                        label=estimator,
                    )
                    ax.fill_between(
                        line["step"], line["q25"], line["q75"], color=palette[estimator], alpha=0.2, linewidth=0
                    )
                offsets = np.linspace(-0.25, 0.25, len(finals)) if len(finals) > 1 else [0.0]
                for offset, (_, point) in zip(offsets, finals.iterrows()):
                    ax.errorbar(
                        final_x + offset,
                        point["median"],
                        color=palette[point["estimator"]],
                        marker="D",
                        yerr=[[point["median"] - point["q25"]], [point["q75"] - point["median"]]],
                        capsize=3,
                        linestyle="none",
                        label=f"{point['estimator']} (final)",
                    )
                ax.axhline(ALIGNED_COSINE, color="grey", linestyle=":", linewidth=1)
                ticks = [*steps, final_x]
                ax.set_xticks(ticks, [*(str(int(t)) for t in steps), FINAL])
                ax.set(
                    xlabel="state n",
                    ylabel="cosine to the true gradient",
                    ylim=(-1.05, 1.05),
                    title=f"{_model_label(model, first['training'], first['grad'])}\n{kind} inputs "
                    f"(n={int(part['n'].max())})",
                )
                ax.legend(loc="best", fontsize="small")
        fig.suptitle(
            f"Gradient alignment with the true gradient of the same output (median, quartiles); "
            f"dotted: {ALIGNED_COSINE:g}"
        )
    return fit(fig)


def residual_distribution_figure(analyses: list[dict]) -> Figure:
    """Per-sample relative residuals, clean against adversarial inputs, per model: the forward
    solve at the deployed budget and the backward (adjoint) solve of exact after its budget."""
    from deqrobust.analysis import diagnostic_residual_frame

    frame = diagnostic_residual_frame(analyses)
    frame["model"] = [_model_label(*key) for key in zip(frame["model"], frame["training"], frame["grad"])]
    solves = {
        "forward": ("forward solve at the deployed budget", {a["tol"] for a in analyses}),
        "backward": (
            "backward solve of exact after its budget",
            {a["diagnostics"]["backward_solver"].get("tol") for a in analyses if "diagnostics" in a},
        ),
    }
    palette = dict(zip(("clean", "adversarial"), sns.color_palette("colorblind")))
    with _style():
        fig = Figure(figsize=(10, 4), layout="constrained")
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, (solve, (title, tols)) in zip(axes, solves.items()):
            part = frame[frame["solve"] == solve]
            finite = part[np.isfinite(part["residual"]) & (part["residual"] > 0)]
            if finite.empty:
                _empty(ax, f"no {solve} residuals in the analyses")
                continue
            sns.boxplot(
                finite, x="model", y="residual", hue="inputs", palette=palette, log_scale=True, ax=ax, fliersize=0
            )
            with _seeded_jitter():
                sns.stripplot(
                    finite,
                    x="model",
                    y="residual",
                    hue="inputs",
                    palette=palette,
                    dodge=True,
                    size=2,
                    alpha=0.5,
                    ax=ax,
                    legend=False,
                )
            for tol in tols - {None, 0}:
                ax.axhline(tol, color="grey", linestyle=":", linewidth=1)
            dropped = len(part) - len(finite)
            ax.set(
                title=title + (f"\n({dropped} non-finite or zero left out)" if dropped else ""),
                xlabel="",
                ylabel="relative residual",
            )
            ax.set_xticks(ax.get_xticks(), [_wrap(t.get_text(), 24) for t in ax.get_xticklabels()])
        fig.suptitle("Per-sample residuals, clean and adversarial inputs; dotted: tolerance")
    return fit(fig)


def training_dynamics_figure(trajectories: list[dict]) -> Figure:
    """Along training, per model instance (colour: training; line style: seed): the deployed forward
    residual (median, quartile band, log scale), each final-state estimator's cosine to the deployed
    model's true gradient (median, quartile band), and clean accuracy, against the epoch. Snapshots
    made during unrolled pretraining are hollow markers."""
    from deqrobust.stats import ALIGNED_COSINE
    from deqrobust.trajectory import frame as trajectory_frame

    frame = trajectory_frame(trajectories)
    estimators = sorted(e for e in frame["estimator"].dropna().unique()) if len(frame) else []
    colours = training_colours(frame["training"] if len(frame) else [])
    seeds = sorted(frame["seed"].unique()) if len(frame) else []
    styles = dict(zip(seeds, ["-", "--", ":", "-."] * (len(seeds) // 4 + 1)))
    panels = [
        ("forward_residual", "deployed forward residual"),
        *((e, f"cosine of {e}@final") for e in estimators),
        ("clean_accuracy", "clean accuracy"),
    ]
    with _style():
        fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        if frame.empty:
            _empty(axes[0], "no training trajectories")
        for ax, (key, title) in zip(axes, panels):
            for model, part in frame.groupby("model", sort=False):
                first = part.iloc[0]
                style = {"color": colours[first["training"]], "linestyle": styles[first["seed"]]}
                label = f"{model} ({first['training']})"
                if key in ("forward_residual", "clean_accuracy"):
                    part = part.drop_duplicates("iteration").sort_values("epoch")
                else:
                    part = part[part["estimator"] == key].sort_values("epoch")
                if part.empty:
                    continue
                low, mid, high = (
                    (part[f"{key}_{q}"] for q in ("q25", "median", "q75"))
                    if key == "forward_residual"
                    else (part[f"cosine_{q}"] for q in ("q25", "median", "q75"))
                    if key in estimators
                    else (None, part[key], None)
                )
                ax.plot(part["epoch"], mid, label=label, **style)
                pre = part["pretraining"].to_numpy(dtype=bool)
                ax.scatter(part["epoch"][pre], mid[pre], facecolors="none", edgecolors=style["color"], s=14)
                ax.scatter(part["epoch"][~pre], mid[~pre], color=style["color"], s=10)
                if low is not None:
                    ax.fill_between(part["epoch"], low, high, color=style["color"], alpha=0.12, linewidth=0)
            if key == "forward_residual":
                ax.set_yscale("log")
            elif key in estimators:
                ax.axhline(ALIGNED_COSINE, color="grey", linestyle=":", linewidth=1)
            ax.set(xlabel="epoch", title=title)
        if not frame.empty:
            axes[-1].legend(loc="best", fontsize="x-small")
        fig.suptitle("Along training, on the same test images (median and quartiles; hollow: unrolled pretraining)")
    return fit(fig)


def learning_curves_figure(curves: pd.DataFrame, aims: dict[str, dict[str, float]]) -> Figure:
    """Each trained instance's development-split accuracy (clean, and under the dev PGD of model
    selection) against the epoch, colour by training (as in the other figures), marker by model and
    line style by seed, with each model's accuracy ``aims`` (by model, deqrobust.instances.model_aims;
    measured on the test images) as dashed lines: where a model plateaued, and how far from its aim."""
    bases = list(dict.fromkeys(curves["base_model"])) if len(curves) else []
    training_of = dict(zip(curves["base_model"], curves["training"])) if len(curves) else {}
    colours = training_colours(training_of.values())
    markers = dict(zip(bases, ["o", "s", "^", "D", "v", "P"] * (len(bases) // 6 + 1)))
    seeds = sorted(curves["seed"].unique()) if len(curves) else []
    styles = dict(zip(seeds, ["-", "--", ":", "-."] * (len(seeds) // 4 + 1)))
    panels = [
        ("dev_clean_acc", "clean", "clean accuracy"),
        ("dev_robust_acc", "pgd10", "robust accuracy (the PGD of model selection)"),
    ]
    with _style():
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        if curves.empty:
            _empty(axes[0], "no learning curves")
        for ax, (column, aim_key, title) in zip(axes, panels):
            for model, part in curves.groupby("model", sort=False):
                first = part.iloc[0]
                part = part.sort_values("epoch")
                ax.plot(
                    part["epoch"],
                    100 * part[column],
                    color=colours[first["training"]],
                    linestyle=styles[first["seed"]],
                    marker=markers[first["base_model"]],
                    markersize=3,
                    label=model,
                )
            for base in bases:
                if aim_key in aims.get(base, {}):
                    colour = colours[training_of[base]]
                    ax.axhline(100 * aims[base][aim_key], color=colour, linestyle=(0, (4, 3)), linewidth=1)
            ax.set(xlabel="epoch", ylabel="%", title=title)
        if not curves.empty:
            axes[-1].legend(loc="best", fontsize="x-small")
        fig.suptitle("Learning curves on the development split (dashed: the model's aim on the test images)")
    return fit(fig)


def heatmap_figure(table: pd.DataFrame, model: str) -> Figure:
    """(c) Robust accuracy (%) per estimator@attacked state (rows) and attack (columns), one panel per defense.

    The colour scale spans the model's own range of accuracies (shared by its panels), so
    differences of a few points show; every cell is annotated with its percentage.
    """
    defenses = queries.attacked_defenses(table, model)
    grids = {d: queries.heatmap_grid(table, model, d) for d in defenses}
    values = np.concatenate([g.to_numpy(dtype=float).ravel() for g in grids.values()]) if grids else np.array([])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 100.0)
    if high - low < 1:  # one value (or nearly): a 1-point band around it
        low, high = low - 0.5, high + 0.5
    rows = max((len(g) for g in grids.values()), default=1)
    attacks = max((len(g.columns) for g in grids.values()), default=1)
    with _style():
        fig = Figure(
            figsize=(1.5 + (1.8 + 1.2 * attacks) * max(len(defenses), 1), 2.4 + 0.45 * rows), layout="constrained"
        )
        axes = fig.subplots(1, max(len(defenses), 1), squeeze=False)[0]
        if not defenses:
            _empty(axes[0], f"{model}: no attacked cells")
        for ax, defense in zip(axes, defenses):
            grid = grids[defense]
            sns.heatmap(
                grid,
                annot=grid.map(lambda v: f"{v:.1f}%"),
                fmt="",
                vmin=low,
                vmax=high,
                cmap="viridis",
                ax=ax,
                cbar=ax is axes[len(defenses) - 1],
                cbar_kws={"label": "robust accuracy (%)"},
            )
            worst = queries.worst_case_accuracy(table, model, defense)
            note = f"; worst case {100 * worst:.1f}%" if worst is not None else ""
            ax.set(title=f"defense: {defense}{note}", xlabel="attack", ylabel="estimator\n@ attacked state")
            ax.set_xticklabels([_wrap(t.get_text(), 12) for t in ax.get_xticklabels()], rotation=0)
            ax.set_yticklabels([_wrap(t.get_text(), 28) for t in ax.get_yticklabels()], rotation=0)
        fig.suptitle(f"{model}: robust accuracy by gradient estimator and attack")
    return fit(fig)


def _wrap(text: str, width: int) -> str:
    """Long names over several lines (broken after hyphens where possible)."""
    return textwrap.fill(text, width, break_long_words=False) if len(text) > width else text


# ---------------------------------------------------------------- output
def fit(fig: Figure) -> Figure:
    """Grow the figure until all its text (titles, tick and axis labels, legends) lies inside the
    canvas and no plot is squeezed below MIN_AXES by its labels (constrained layout shrinks
    the axes before it lets text out)."""
    FigureCanvasAgg(fig)  # a renderer to measure text with
    for _ in range(10):
        fig.draw_without_rendering()
        box = fig.get_tightbbox()  # inches, from the figure's lower left corner
        width, height = fig.get_size_inches()
        grow_w = max(0.0, -box.x0) + max(0.0, box.x1 - width)
        grow_h = max(0.0, -box.y0) + max(0.0, box.y1 - height)
        for ax in fig.axes:
            if ax.get_label() != "<colorbar>":
                pos = ax.get_position()
                grow_w = max(grow_w, MIN_AXES - pos.width * width)
                grow_h = max(grow_h, MIN_AXES - pos.height * height)
        if grow_w <= 0 and grow_h <= 0:
            break
        fig.set_size_inches(width + (grow_w + 2 * MARGIN) * (grow_w > 0), height + (grow_h + 2 * MARGIN) * (grow_h > 0))
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically (a killed job leaves no complete-looking figure)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_all(
    table: pd.DataFrame,
    analyses: list[dict],
    out_dir: str | os.PathLike,
    profile: str = "",
    trajectories: list[dict] | None = None,
    curves: pd.DataFrame | None = None,
    aims: dict[str, dict[str, float]] | None = None,
) -> list[Path]:
    """Every figure as PNG and the main table as main.md and main.tex in ``out_dir``; with
    ``trajectories``, the training dynamics too; with learning ``curves`` (deqrobust.aims), the
    learning curves against the ``aims``."""
    out = Path(out_dir)
    written = [
        save_figure(residual_figure(analyses), out / "residual.png"),
        save_figure(convergence_figure(analyses), out / "convergence.png"),
        save_figure(sample_traces_figure(analyses), out / "residual_samples.png"),
        save_figure(state_accuracy_figure(analyses, table), out / "state_accuracy.png"),
        save_figure(alignment_figure(analyses), out / "alignment.png"),
        save_figure(residual_distribution_figure(analyses), out / "residual_distribution.png"),
    ]
    if trajectories:
        written.append(save_figure(training_dynamics_figure(trajectories), out / "training_dynamics.png"))
    if curves is not None and not curves.empty:
        written.append(save_figure(learning_curves_figure(curves, aims or {}), out / "learning_curves.png"))
    for model in table["model"].unique():
        written.append(save_figure(heatmap_figure(table, model), out / f"heatmap_{_slug(model)}.png"))
    header, rows = tabular.main_table_rows(table, profile)
    caption = tabular.CAPTION
    write_text(
        out / "main.md", f"# Main robustness table ({profile})\n\n{caption}\n\n" + tabular.markdown_table(header, rows)
    )
    write_text(out / "main.tex", tabular.latex_table(header, rows, f"{caption} Profile: {profile}."))
    return written + [out / "main.md", out / "main.tex"]
