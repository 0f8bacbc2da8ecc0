"""The main table as Markdown and LaTeX: rows from deqrobust.queries, RobustBench references
beside them for context."""

from __future__ import annotations

import re
from typing import Iterable

import pandas as pd

from deqrobust.queries import main_columns, main_rows

NOT_RUN = "not run"
REFERENCES = (  # RobustBench, CIFAR-10, L-inf 8/255: (model, clean %, AutoAttack %)
    ("Madry et al. PGD-AT, WideResNet-34-10", 87.14, 44.04),
    ("Rice et al. early-stopped PGD-AT, WideResNet-34-20", 85.34, 53.42),
    ("Wong et al. fast AT, PreAct ResNet-18", 83.34, 43.21),
)
CAPTION = (
    "Accuracy (%, Wilson 95% CI) on CIFAR-10 under L-inf 8/255; the attack columns hold the strongest "
    "cell over estimators and attacked states (over every attack the heading names); worst case is per "
    "example over every attack; 'not run' means this profile has no such attack. Reference rows are "
    "public RobustBench AutoAttack figures for context, not results of this run."
)


def _pct(cell: dict | None) -> str:
    if cell is None:
        return NOT_RUN
    return f"{100 * cell['accuracy']:.1f} ({100 * cell['ci_low']:.1f}-{100 * cell['ci_high']:.1f})"


def main_table_rows(table: pd.DataFrame, profile: str) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the main table: measured rows, then the RobustBench reference rows
    (their AutoAttack figure is marked as such when the column holds another attack)."""
    columns = main_columns(table)
    header = ["model", "training", "defense", "n", *(heading for _, heading in columns), "source"]
    rows = []
    for row in main_rows(table):
        ns = [row[key]["n"] for key, _ in columns if row[key]]
        rows.append(
            [
                row["model"],
                row["training"],
                row["defense"],
                str(max(ns)) if ns else "-",
                *(_pct(row[key]) for key, _ in columns),
                f"measured ({profile})",
            ]
        )
    tag = "" if dict(columns)["autoattack"] == "AutoAttack" else " (AutoAttack)"
    for name, clean, aa in REFERENCES:
        rows.append(
            [
                name,
                "adversarial",
                "-",
                "10000",
                f"{clean:.2f}",
                "-",
                f"{aa:.2f}{tag}",
                "-",
                "RobustBench (reference only, not measured here)",
            ]
        )
    return header, rows


def markdown_table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([_%&#$])", r"\\\1", text)


def latex_table(header: list[str], rows: Iterable[list[str]], caption: str) -> str:
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        f"\\caption{{{_latex_escape(caption)}}}",
        r"\begin{tabular}{" + "l" * len(header) + "}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
