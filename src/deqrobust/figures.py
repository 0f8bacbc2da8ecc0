"""Figures and the main robustness table, from the tidy table and the fixed-point analyses.

Each figure function returns a matplotlib ``Figure`` built without pyplot, so the CLI can
save it and a notebook can display it without a second copy of the plotting code. Pieces
that a profile did not run (no AutoAttack, no analysis of a model, no per-state rows) show
as "not run" or an empty panel with a note, never as an error.

Columns of the main table, per model and defense (accuracy in %, Wilson 95 % CI):
- clean: the defense's clean accuracy;
- PGD-10: the strongest PGD-10 cell, i.e. the lowest accuracy over every estimator and
  attacked state;
- AutoAttack: the lowest accuracy over AutoAttack cells; when the components were run as
  separate attacks this is the weakest-link component, an upper bound of the per-example
  worst case over components;
- worst case: the table's per-example worst case over every attack, estimator and state.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deqrobust.atomic import atomic_path, write_text
from deqrobust.attacks import COMPONENTS, PGD_PARAMS
from deqrobust.config import load

DPI = 150
DEFENSES = ("final", "early_exit", "ensemble")
NOT_RUN = "not run"
REFERENCES = (  # RobustBench, CIFAR-10, L-inf 8/255: (model, clean %, AutoAttack %)
    ("Madry et al. PGD-AT, WideResNet-34-10", 87.14, 44.04),
    ("Rice et al. early-stopped PGD-AT, WideResNet-34-20", 85.34, 53.42),
    ("Wong et al. fast AT, PreAct ResNet-18", 83.34, 43.21),
)
COLUMNS = (("clean", "clean"), ("pgd10", "PGD-10"), ("autoattack", "AutoAttack"), ("worst_case", "worst case"))


# ---------------------------------------------------------------- inputs
def load_table(path: str | os.PathLike) -> pd.DataFrame:
    """The tidy table with states kept as text (attacked: 'final', a step, 'any'; scored: 'state_n', ...)."""
    return pd.read_csv(path, dtype={"attacked_state": str, "scored_state": str, "model": str})


def _guess_spec(attack: str) -> dict:
    """Without the config: 'autoattack...' and AutoAttack component names, or 'pgd<steps>'."""
    low = attack.lower()
    if low.startswith(("autoattack", *COMPONENTS)):
        return {"name": "autoattack"}
    match = re.fullmatch(r"pgd-?(\d+)", low)
    return {"name": "pgd", "steps": int(match.group(1))} if match else {}


def attack_kind(attack: str, attacks: dict | None = None) -> str:
    """'pgd10' (PGD, 10 steps), 'autoattack' (or a component), 'clean', 'worst-case' or 'other'.

    Read from the config's attack spec (guessed from the name without one); an attack at
    another radius than the paper's 8/255 is 'other'.
    """
    if attack in ("clean", "worst-case"):
        return attack
    spec = {**PGD_PARAMS, **((attacks or {}).get(attack) or _guess_spec(attack))}
    if spec["eps_255"] != 8:
        return "other"
    if spec.get("name") == "autoattack" or spec.get("name") in COMPONENTS:
        return "autoattack"
    return "pgd10" if spec.get("name") == "pgd" and spec["steps"] == 10 else "other"


def state_order(state: str) -> tuple[int, int]:
    """Sort key: final first, then solver steps in order, then anything else."""
    return (0, 0) if state == "final" else (1, int(state)) if str(state).isdigit() else (2, 0)


def notebook_inputs(profile: str = "smoke") -> dict:
    """Paths and config a notebook reads, from the environment the workflow sets.

    DEQROBUST_CONFIG (default ``config/<profile>.yaml``), DEQROBUST_REPORTS (default the
    config's ``reports``), DEQROBUST_TABLE (default ``<reports>/table.csv``) and
    DEQROBUST_ANALYSIS (comma-separated; default ``<results>/analysis/*.json``, the
    workflow's layout). Without a config file, attack types are guessed from their names.
    """
    env = os.environ.get
    config_path = Path(env("DEQROBUST_CONFIG", f"config/{profile}.yaml"))
    cfg = load(config_path) if config_path.is_file() else {"profile": profile, "models": {},
                                                           "reports": f"reports/{profile}",
                                                           "results": f"results/{profile}"}
    reports = Path(env("DEQROBUST_REPORTS", cfg["reports"]))
    analyses = env("DEQROBUST_ANALYSIS")
    return {
        "config": cfg,
        "reports": reports,
        "table": Path(env("DEQROBUST_TABLE", reports / "table.csv")),
        "analysis": ([Path(p) for p in analyses.split(",") if p] if analyses is not None
                     else sorted(Path(cfg["results"], "analysis").glob("*.json"))),
    }


# ---------------------------------------------------------------- main table
def strongest(rows: pd.DataFrame) -> dict | None:
    """The row with the lowest accuracy (the strongest attack) as a dict, None if there is none."""
    if rows.empty:
        return None
    row = rows.sort_values(["accuracy", "n"], ascending=[True, False]).iloc[0]
    return {"accuracy": float(row["accuracy"]), "ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"]),
            "n": int(row["n"]), "estimator": row["estimator"], "attacked_state": row["attacked_state"],
            "attack": row["attack"]}


def main_rows(table: pd.DataFrame, attacks: dict | None = None) -> list[dict]:
    """One row per model and defense with the entries of ``COLUMNS`` (None when not run)."""
    kinds = table["attack"].map(lambda a: attack_kind(a, attacks))
    rows = []
    for model, of_model in table.groupby("model", sort=False):
        first = of_model.iloc[0]
        for defense in [d for d in DEFENSES if d in set(of_model["defense"])]:
            cells = of_model[of_model["defense"] == defense]
            entry = {"model": model, "arch": first["arch"], "training": first["training"], "grad": first["grad"],
                     "defense": defense}
            for key, _ in COLUMNS:
                kind = "worst-case" if key == "worst_case" else key
                entry[key] = strongest(cells[kinds[cells.index] == kind])
            rows.append(entry)
    return rows


def headline_metrics(table: pd.DataFrame, attacks: dict | None = None) -> dict:
    """{model: {defense: {clean, pgd10, autoattack, worst_case: accuracy or None, n}}} for metrics files."""
    out: dict = {}
    for row in main_rows(table, attacks):
        values = {key: (row[key]["accuracy"] if row[key] else None) for key, _ in COLUMNS}
        ns = [row[key]["n"] for key, _ in COLUMNS if row[key]]
        out.setdefault(row["model"], {})[row["defense"]] = {**values, "n": max(ns) if ns else None}
    return out


def _pct(cell: dict | None) -> str:
    if cell is None:
        return NOT_RUN
    return f"{100 * cell['accuracy']:.1f} ({100 * cell['ci_low']:.1f}-{100 * cell['ci_high']:.1f})"


def main_table_rows(table: pd.DataFrame, attacks: dict | None, profile: str) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the main table: measured rows, then the reference rows."""
    header = ["model", "training", "defense", "n", *(label for _, label in COLUMNS), "source"]
    rows = []
    for row in main_rows(table, attacks):
        ns = [row[key]["n"] for key, _ in COLUMNS if row[key]]
        rows.append([row["model"], row["training"], row["defense"], str(max(ns)) if ns else "-",
                     *(_pct(row[key]) for key, _ in COLUMNS), f"measured ({profile})"])
    for name, clean, aa in REFERENCES:
        rows.append([name, "adversarial", "-", "10000", f"{clean:.2f}", "-", f"{aa:.2f}", "-",
                     "RobustBench (reference only, not measured here)"])
    return header, rows


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", text)


def latex_table(header: list[str], rows: Iterable[list[str]], caption: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_latex_escape(caption)}}}",
             r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


CAPTION = ("Accuracy (%, Wilson 95% CI) on CIFAR-10 under L-inf 8/255; PGD-10 and AutoAttack are the "
           "strongest cell over estimators and attacked states; worst case is per example over every attack; "
           "'not run' means this profile has no such attack. Reference rows are public RobustBench figures "
           "for context, not results of this run.")


# ---------------------------------------------------------------- figures
@contextlib.contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        yield


def _label(analysis: dict) -> str:
    model = analysis["model"]
    return f"{model['name']} ({model['training']}, {model['grad']})"


def residual_frame(analyses: list[dict]) -> pd.DataFrame:
    """Per model, input kind and step: median and quartiles of the relative residual."""
    rows = []
    for a in analyses:
        for kind, summary in a["inputs"].items():
            res = summary["residual"]
            for step, (med, q25, q75) in enumerate(zip(res["median"], res["q25"], res["q75"]), start=1):
                rows.append({"model": _label(a), "training": a["model"]["training"], "inputs": kind,
                             "step": step, "median": med, "q25": q25, "q75": q75})
    return pd.DataFrame(rows, columns=["model", "training", "inputs", "step", "median", "q25", "q75"]).astype(
        {"median": float, "q25": float, "q75": float})


def _steps_axis(ax, label: str = "solver step n") -> None:
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()  # not set_yticks([]): that would clear the ticks of every axis sharing y


def residual_figure(analyses: list[dict]) -> Figure:
    """(a) Relative residual vs solver step: median line, quartile band; facets clean/adversarial."""
    frame = residual_frame(analyses)
    kinds = [k for k in ("clean", "adversarial") if k in set(frame["inputs"])] or ["clean"]
    with _style():
        fig = Figure(figsize=(5 * len(kinds), 4), layout="constrained")
        axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
        palette = dict(zip(sorted(set(frame["training"])), sns.color_palette("colorblind")))
        tols = {a["tol"] for a in analyses} - {0}
        budgets = {a["deployed_budget"] for a in analyses}
        for ax, kind in zip(axes, kinds):
            part = frame[frame["inputs"] == kind]
            if part.empty:
                _empty(ax, "no analysis")
                continue
            sns.lineplot(part, x="step", y="median", hue="training", style="model", palette=palette, ax=ax,
                         estimator=None)
            for _, line in part.groupby("model"):
                ax.fill_between(line["step"], line["q25"], line["q75"], alpha=0.2,
                                color=palette[line["training"].iloc[0]], linewidth=0)
            for tol in tols:
                ax.axhline(tol, color="grey", linestyle=":", linewidth=1)
            for budget in budgets:
                ax.axvline(budget, color="grey", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            ax.set(title=f"{kind} inputs", ylabel="relative residual ||f(z)-z|| / ||f(z)||")
            _steps_axis(ax)
        fig.suptitle("Forward solver residual (median, quartile band); dotted: tolerance, dashed: deployed budget")
    return fig


def convergence_figure(analyses: list[dict]) -> Figure:
    """Share of samples within tolerance by step n (a curve that stays below 1 never converges)."""
    rows = []
    for a in analyses:
        for kind, summary in a["inputs"].items():
            counts = np.cumsum(summary["steps_to_tol"]["counts"]) / summary["n"]
            rows += [{"model": _label(a), "inputs": kind, "step": s, "share converged": c}
                     for s, c in enumerate(counts, start=1)]
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
    return fig


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
    return fig


def state_table_frame(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per scored state n: clean, per-example worst case and, per attack, the strongest cell."""
    rows = table[(table["model"] == model) & (table["defense"] == "state")]
    frame = rows.assign(step=rows["scored_state"].str.removeprefix("state_").astype(int))
    series = frame[frame["attack"].isin(["clean", "worst-case"])][["step", "attack", "accuracy"]]
    per_attack = (frame[~frame["attack"].isin(["clean", "worst-case"])].groupby(["attack", "step"], as_index=False)
                  ["accuracy"].min().assign(attack=lambda d: d["attack"] + " (strongest cell)"))
    return pd.concat([series, per_attack], ignore_index=True).rename(columns={"attack": "series"})


def state_accuracy_figure(analyses: list[dict], table: pd.DataFrame | None) -> Figure:
    """(b) Per DEQ: accuracy of h(z_n) per step (analysis, top) and, given the table, the
    robust accuracy of the defense that predicts with state n (bottom)."""
    by_name = {a["model"]["name"]: a for a in analyses}
    deqs = list(by_name)
    if table is not None:
        deqs += [m for m in table.loc[table["defense"] == "state", "model"].unique() if m not in by_name]
    nrows, ncols = (1 if table is None else 2), max(len(deqs), 1)
    with _style():
        fig = Figure(figsize=(4 * ncols, 3.5 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)   # not shared: an empty panel would hide tick labels
        if not deqs:
            _empty(axes[0, 0], "no DEQ analysis or per-state rows")
        for col, model in enumerate(deqs):
            if model in by_name:
                a = by_name[model]
                frame = pd.DataFrame([{"step": s, "accuracy": acc, "inputs": kind}
                                      for kind, summary in a["inputs"].items()
                                      for s, acc in enumerate(summary["accuracy"], start=1)])
                sns.lineplot(frame, x="step", y="accuracy", style="inputs", ax=axes[0, col], color="k",
                             estimator=None)
                axes[0, col].set(title=f"{_label(a)}\nh(z_n); adversarial: {a['attack']} via {a['estimator']}",
                                 ylim=(-0.02, 1.02))
                _steps_axis(axes[0, col], "solver state n")
            else:
                _empty(axes[0, col], f"{model}: no analysis")
            if table is None:
                continue
            frame = state_table_frame(table, model)
            if frame.empty:
                _empty(axes[1, col], f"{model}: no per-state rows")
                continue
            sns.lineplot(frame, x="step", y="accuracy", hue="series", ax=axes[1, col], marker="o", estimator=None)
            axes[1, col].set(title=f"{model}: defense 'state n' (table)", ylim=(-0.02, 1.02))
            _steps_axis(axes[1, col], "solver state n")
    return fig


def heatmap_figure(table: pd.DataFrame, model: str) -> Figure:
    """(c) Robust accuracy (%) per estimator@attacked state (rows) and attack (columns), one panel per defense."""
    cells = table[(table["model"] == model) & table["defense"].isin(DEFENSES)
                  & ~table["attack"].isin(["clean", "worst-case"])]
    defenses = [d for d in DEFENSES if d in set(cells["defense"])]
    height = 1.5 + 0.45 * max(len(cells[["estimator", "attacked_state"]].drop_duplicates()), 1)
    with _style():
        fig = Figure(figsize=(1.2 + 3.2 * max(len(defenses), 1), height), layout="constrained")
        axes = fig.subplots(1, max(len(defenses), 1), squeeze=False)[0]
        if not defenses:
            _empty(axes[0], f"{model}: no attacked cells")
        for ax, defense in zip(axes, defenses):
            part = cells[cells["defense"] == defense]
            grid = (part.assign(cell=part["estimator"] + "@" + part["attacked_state"].astype(str))
                    .pivot(index="cell", columns="attack", values="accuracy") * 100)
            order = sorted(grid.index, key=lambda c: (state_order(c.rsplit("@", 1)[1]), c))
            sns.heatmap(grid.loc[order], annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis", ax=ax,
                        cbar=ax is axes[len(defenses) - 1], cbar_kws={"label": "robust accuracy (%)"})
            worst = table[(table["model"] == model) & (table["defense"] == defense) & (table["attack"] == "worst-case")]
            note = f"; worst case {100 * worst['accuracy'].min():.0f}%" if not worst.empty else ""
            ax.set(title=f"defense: {defense}{note}", xlabel="attack", ylabel="estimator@attacked state")
        fig.suptitle(f"{model}: robust accuracy by gradient estimator and attack")
    return fig


# ---------------------------------------------------------------- output
def save_figure(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically (a killed job leaves no complete-looking figure)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_all(table: pd.DataFrame, analyses: list[dict], out_dir: str | os.PathLike, attacks: dict | None = None,
              profile: str = "") -> list[Path]:
    """Every figure as PNG and the main table as main.md and main.tex in ``out_dir``."""
    out = Path(out_dir)
    written = [save_figure(residual_figure(analyses), out / "residual.png"),
               save_figure(convergence_figure(analyses), out / "convergence.png"),
               save_figure(sample_traces_figure(analyses), out / "residual_samples.png"),
               save_figure(state_accuracy_figure(analyses, table), out / "state_accuracy.png")]
    for model in table["model"].unique():
        written.append(save_figure(heatmap_figure(table, model), out / f"heatmap_{_slug(model)}.png"))
    header, rows = main_table_rows(table, attacks, profile)
    write_text(out / "main.md", f"# Main robustness table ({profile})\n\n{CAPTION}\n\n" + markdown_table(header, rows))
    write_text(out / "main.tex", latex_table(header, rows, f"{CAPTION} Profile: {profile}."))
    return written + [out / "main.md", out / "main.tex"]
