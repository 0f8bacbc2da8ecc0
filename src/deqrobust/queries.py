"""Queries on the tidy results table (deqrobust.tidy): the rows and numbers the main table, the
figures, the report and the notebooks read, so none of them parses a column itself."""

from __future__ import annotations

import json

import pandas as pd

from deqrobust.tidy import (
    AUTOATTACK_TYPES,
    CLEAN,
    DEFENSES,
    IDENTITY,
    PAPER_EPS_255,
    PAPER_PGD_STEPS,
    PER_STATE,
    PSEUDO_ATTACKS,
    WORST_CASE,
    attack_label,
)
from deqrobust.vocab import FINAL, score_step

MAIN_KEYS = ("clean", "pgd10", "autoattack", "worst_case")  # keys of main rows and headline metrics


def state_order(state: str) -> tuple[int, int]:
    """Sort key of an attacked state: final first, then solver steps in order, then anything else."""
    return (0, 0) if state == FINAL else (1, int(state)) if str(state).isdigit() else (2, 0)


def attacked(table: pd.DataFrame, model: str | None = None, defense: str | None = None) -> pd.DataFrame:
    """The rows of real attacks (no clean or worst-case rows), of one model and defense if given."""
    keep = ~table["attack"].isin(PSEUDO_ATTACKS)
    if model is not None:
        keep &= table["model"] == model
    if defense is not None:
        keep &= table["defense"] == defense
    return table[keep]


def strongest(rows: pd.DataFrame) -> dict | None:
    """The row with the lowest accuracy (the strongest attack) as a dict, None if there is none."""
    if rows.empty:
        return None
    row = rows.sort_values(["accuracy", "n"], ascending=[True, False]).iloc[0]
    return {
        "accuracy": float(row["accuracy"]),
        "ci_low": float(row["ci_low"]),
        "ci_high": float(row["ci_high"]),
        "n": int(row["n"]),
        "estimator": row["estimator"],
        "attacked_state": row["attacked_state"],
        "attack": row["attack"],
    }


def main_column(table: pd.DataFrame) -> pd.Series:
    """Per row, the main-table column it feeds (one of MAIN_KEYS), or None."""
    radius = table["eps_255"] == PAPER_EPS_255
    pgd10 = (table["attack_type"] == "pgd") & (table["attack_steps"] == PAPER_PGD_STEPS) & radius
    autoattack = table["attack_type"].isin(AUTOATTACK_TYPES) & radius
    out = pd.Series(None, index=table.index, dtype=object)
    out[table["attack"] == CLEAN] = "clean"
    out[table["attack"] == WORST_CASE] = "worst_case"
    out[pgd10.fillna(False).astype(bool)] = "pgd10"
    out[autoattack.fillna(False).astype(bool)] = "autoattack"
    return out


def main_columns(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(key, heading) of the main table's columns; an attack column is headed by what ran in it."""
    columns = main_column(table)
    headings = {"clean": "clean", "worst_case": "worst case"}
    for key, unrun in (("pgd10", f"PGD-{PAPER_PGD_STEPS}"), ("autoattack", "AutoAttack")):
        rows = table[columns == key].drop_duplicates(["attack_type", "attack_params"])
        labels = list(
            dict.fromkeys(attack_label(t, json.loads(p)) for t, p in zip(rows["attack_type"], rows["attack_params"]))
        )
        headings[key] = unrun if not labels else labels[0] if len(labels) == 1 else "strongest of " + ", ".join(labels)
    return [(key, headings[key]) for key in MAIN_KEYS]


def main_rows(table: pd.DataFrame) -> list[dict]:
    """One row per model and defense with the strongest cell of each main column (None when not run)."""
    columns = main_column(table)
    rows = []
    for model, of_model in table.groupby("model", sort=False):
        first = of_model.iloc[0]
        for defense in [d for d in DEFENSES if d in set(of_model["defense"])]:
            cells = of_model[of_model["defense"] == defense]
            entry = {**{k: first[k] for k in IDENTITY}, "defense": defense}
            for key in MAIN_KEYS:
                entry[key] = strongest(cells[columns[cells.index] == key])
            rows.append(entry)
    return rows


def headline_metrics(table: pd.DataFrame) -> dict:
    """{model: {defense: {clean, pgd10, autoattack, worst_case: accuracy or None, n}}} for metrics files."""
    out: dict = {}
    for row in main_rows(table):
        ns = [row[key]["n"] for key in MAIN_KEYS if row[key]]
        out.setdefault(row["model"], {})[row["defense"]] = {
            **{key: (row[key]["accuracy"] if row[key] else None) for key in MAIN_KEYS},
            "n": max(ns) if ns else None,
        }
    return out


def heatmap_grid(table: pd.DataFrame, model: str, defense: str) -> pd.DataFrame:
    """Robust accuracy (%) of one model and defense: rows 'estimator@attacked state' (final first,
    then by step), columns attacks."""
    part = attacked(table, model, defense)
    grid = (
        part.assign(cell=part["estimator"] + "@" + part["attacked_state"].astype(str)).pivot(
            index="cell", columns="attack", values="accuracy"
        )
        * 100
    )
    return grid.loc[sorted(grid.index, key=lambda c: (state_order(c.rsplit("@", 1)[1]), c))]


def attacked_defenses(table: pd.DataFrame, model: str) -> list[str]:
    """The defenses (in DEFENSES order) under which a model has attacked cells."""
    present = set(attacked(table, model)["defense"])
    return [d for d in DEFENSES if d in present]


def worst_case_accuracy(table: pd.DataFrame, model: str, defense: str) -> float | None:
    """The per-example worst-case accuracy of a model's defense, None without worst-case rows."""
    rows = table[(table["model"] == model) & (table["defense"] == defense) & (table["attack"] == WORST_CASE)]
    return None if rows.empty else float(rows["accuracy"].min())


def state_models(table: pd.DataFrame) -> list[str]:
    """Models with per-state rows (the DEQs)."""
    return list(table.loc[table["defense"] == PER_STATE, "model"].unique())


def state_table_frame(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """Per scored state n of the per-state defense: clean, per-example worst case and, per attack,
    the strongest cell (columns step, series, accuracy)."""
    rows = table[(table["model"] == model) & (table["defense"] == PER_STATE)]
    frame = rows.assign(step=rows["scored_state"].map(score_step).astype(int))
    series = frame[frame["attack"].isin(PSEUDO_ATTACKS)][["step", "attack", "accuracy"]]
    per_attack = (
        frame[~frame["attack"].isin(PSEUDO_ATTACKS)]
        .groupby(["attack", "step"], as_index=False)["accuracy"]
        .min()
        .assign(attack=lambda d: d["attack"] + " (strongest cell)")
    )
    return pd.concat([series, per_attack], ignore_index=True).rename(columns={"attack": "series"})
