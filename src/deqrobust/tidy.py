"""The tidy results table: its columns and constants, ``merge``, and its files.

One row per model, gradient estimator, attacked state, solver setting (coupling and batch
size), attack, defense and scored state. ``merge`` builds it from the evaluation cells and
copies each cell's recorded attack and estimator specs and solver setting into columns, so no
reader parses an attack's name: the figures and the report read the table only through the
queries of deqrobust.queries. The main table, the figures and claims 2-5 read the profile's solver setting
(``profile_rows``); cells under another (the authors' batch coupling) are compared with them in
the report's "Batch coupling" section.

Main table columns, per model and defense (accuracy in %, Wilson 95 % CI):
- clean: the defense's clean accuracy;
- PGD: the strongest PGD cell of the paper's setting (10 steps at 8/255), i.e. the lowest
  accuracy over every estimator and attacked state;
- AutoAttack: the strongest cell over the AutoAttack suite and its components run as
  separate attacks (at 8/255); headed "AutoAttack" only when the standard suite at its
  own settings is all that ran, otherwise by the attacks that did run
  (e.g. "APGD-CE (20 it.)");
- worst case: the per-example worst case over clean and every attack, estimator and state.

Per-example outcomes (``merge_outcomes``; ``results/<profile>/outcomes.csv.gz``): the same
rows before counting, each with its 0/1 outcomes over the cell's example indices as one
string, so paired tests (``deqrobust.stats``) compare two rows example by example; the
table is computed from them (``tabulate``).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from deqrobust.atomic import atomic_path
from deqrobust.errors import ConfigError
from deqrobust.plan import coupling_of
from deqrobust.specs import COMPONENTS, attack_params, estimator_params
from deqrobust.stats import wilson
from deqrobust.vocab import BASELINE_ESTIMATOR, ENSEMBLE, FINAL, score_step, step_score

# Defenses (the `defense` column): how the DEQ predicts.
EARLY_EXIT = "early_exit"  # the head of the state n chosen on the dev split (select-exit)
DEFENSES = (FINAL, EARLY_EXIT, ENSEMBLE)
PER_STATE = "state"  # the head of every state n (scored_state: vocab.step_score(n), "state_n")

# Pseudo-attacks (the `attack` column) and their estimator/attacked_state entries.
CLEAN = "clean"  # no attack: clean accuracy (estimator and state NONE)
WORST_CASE = "worst-case"  # per example, the worst over every attacked cell (estimator and state ANY)
PSEUDO_ATTACKS = (CLEAN, WORST_CASE)
NONE, ANY = "none", "any"

PAPER_EPS_255 = 8  # the paper's L-inf radius: the main table compares at it
PAPER_PGD_STEPS = 10  # the paper's PGD (PGD-10)
AUTOATTACK_TYPES = ("autoattack", *COMPONENTS)
DISPLAY = {c: "Square" if c == "square" else c.upper() for c in COMPONENTS}  # 'apgd-ce' -> 'APGD-CE'

IDENTITY = ("model", "arch", "training", "grad")
# The solver setting a cell ran under: its solvers' coupling (plan.coupling_of) and evaluation batch;
# the profile's unless its cell group sets another (the authors' batch coupling, docs/workflow.md).
SOLVE_COLUMNS = ("coupling", "batch_size")
SPEC_COLUMNS = (
    "attack_type",
    "attack_version",
    "eps_255",
    "attack_steps",
    "restarts",
    "attack_params",
    "estimator_type",
    "estimator_params",
)
COLUMNS = (
    *IDENTITY,
    "estimator",
    "attacked_state",
    "attack",
    "defense",
    "scored_state",
    "correct",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    *SOLVE_COLUMNS,
    *SPEC_COLUMNS,
)
# Where the table's data came from (provenance.data_source), the same in every row; written by
# `deqrobust merge` after the COLUMNS (a table of ``merge`` alone, without the data's record, has them blank).
PROVENANCE_COLUMNS = ("data_md5", "data_official")
SORT = ["model", "attack", "estimator", "attacked_state", "defense", "scored_state", *SOLVE_COLUMNS]
# Per-example outcomes: the table's rows before counting. ``base_model`` is the model's name
# without its seed suffix (the model itself when the profile has one seed); ``indices`` the
# test examples as ranges ("0-299"); ``outcomes`` one character 0/1 per example, in that order.
OUTCOME_COLUMNS = (
    *IDENTITY,
    "base_model",
    "seed",
    "estimator",
    "attacked_state",
    "attack",
    "defense",
    "scored_state",
    "n",
    "indices",
    "outcomes",
    *SOLVE_COLUMNS,
    *SPEC_COLUMNS,
    "checkpoint_md5",
)


def worst_case(cells: list[dict]) -> dict[str, list[int]]:
    """Per score key and example: 1 only if the example is classified correctly on clean input AND
    under every cell's attack. Clean counts: an attack that fails on an example the model already
    gets wrong does not make that example robust. The cells are one model's (same clean outcomes)."""
    keys = cells[0]["adversarial"]
    vectors = [cells[0]["clean"], *(c["adversarial"] for c in cells)]
    return {key: [min(v[key][i] for v in vectors) for i in range(cells[0]["num_examples"])] for key in keys}


def index_ranges(indices: list[int]) -> str:
    """Example indices as ranges: [0, 1, 2, 5] -> '0-2,5' (compact for the usual 0..n-1)."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def expand_ranges(text: str) -> list[int]:
    """The inverse of ``index_ranges``."""
    out: list[int] = []
    for part in filter(None, str(text).split(",")):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def outcome_text(outcomes: list[int]) -> str:
    return "".join("1" if v else "0" for v in outcomes)


def outcome_array(text: str) -> np.ndarray:
    """An ``outcomes`` string as a 0/1 array (1 = correct)."""
    arr = np.frombuffer(str(text).encode(), dtype=np.uint8) - ord("0")
    if arr.size and arr.max() > 1:
        raise ValueError(f"outcomes must be a string of 0 and 1, got {str(text)[:20]!r}...")
    return arr.astype(np.int8)


def canonical(obj: dict) -> str:
    """Canonical JSON (sorted keys, no spaces): equal settings give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def attack_columns(spec: dict) -> dict:
    """The attack's type and settings as table columns, from its recorded config spec.

    Defaults are filled as ``deqrobust.specs`` fills them; AutoAttack settings left to the
    version stay out of ``attack_params`` (and blank in the columns). ``attack_steps`` is
    PGD's steps, APGD's or FAB's n_iter, or Square's n_queries.
    """
    kind, params = attack_params(spec, f"recorded attack spec {spec!r}")
    params = {k: v for k, v in params.items() if v is not None}
    return {
        "attack_type": kind,
        "attack_version": params.get("version"),
        "eps_255": params["eps_255"],
        "attack_steps": params.get("steps", params.get("n_iter", params.get("n_queries"))),
        "restarts": params.get("restarts"),
        "attack_params": canonical(params),
    }


def estimator_columns(estimator: str, spec: dict) -> dict:
    """The estimator's type and settings (defaults filled); a baseline's plain backprop has no spec."""
    if not spec and estimator == BASELINE_ESTIMATOR:
        return {"estimator_type": BASELINE_ESTIMATOR, "estimator_params": canonical({})}
    kind, params = estimator_params(spec, f"recorded spec of estimator {estimator!r}")
    return {"estimator_type": kind, "estimator_params": canonical(params)}


def attack_label(attack_type: str, params: dict) -> str:
    """What ran, in words: 'AutoAttack' only for the standard suite at its own settings,
    else the attack and its settings ('PGD-10', 'APGD-CE (20 it.)', 'Square (5000 queries)')."""
    radius = [] if params["eps_255"] == PAPER_EPS_255 else [f"eps {params['eps_255']:g}/255"]
    restarts = [f"{params['restarts']} restarts"] if params.get("restarts", 1) > 1 else []
    if attack_type == "pgd":
        name, extra = f"PGD-{params['steps']}", restarts
    elif attack_type == "autoattack":
        settings = sorted((k, v) for k, v in params.items() if k not in ("eps_255", "version", "attacks"))
        if params["version"] == "standard" and not settings and not radius:
            return "AutoAttack"
        name = (
            f"AutoAttack custom: {'+'.join(DISPLAY[a] for a in params['attacks'])}"
            if params["version"] == "custom"
            else f"AutoAttack {params['version']}"
        )
        extra = [f"{k}={v}" for k, v in settings]
    else:
        units = [("n_iter", "it."), ("n_queries", "queries"), ("n_target_classes", "target classes")]
        name, extra = DISPLAY[attack_type], [f"{params[k]} {unit}" for k, unit in units if k in params] + restarts
    extra += radius
    return f"{name} ({', '.join(extra)})" if extra else name


def _rows_of(scores: dict, exit_state: int | None) -> list[dict]:
    """Rows of one score dict (clean or adversarial) under every defense and state."""
    picks = [(FINAL, FINAL), (ENSEMBLE, ENSEMBLE)] if ENSEMBLE in scores else [(FINAL, FINAL)]
    if exit_state is not None:
        picks.append((EARLY_EXIT, step_score(exit_state)))
    picks += [(PER_STATE, key) for key in scores if score_step(key) is not None]
    return [
        {"defense": defense, "scored_state": key, "n": len(scores[key]), "outcomes": outcome_text(scores[key])}
        for defense, key in picks
        if key in scores
    ]


CELL_KEYS = (
    "model",
    "estimator",
    "estimator_spec",
    "attack",
    "attack_spec",
    "attacked_state",
    "indices",
    "labels",
    "clean",
    "adversarial",
)


def read_cell(path: str | os.PathLike, cfg: dict | None = None) -> dict:
    """An evaluation cell, or ConfigError naming the file: missing, not a cell, or (given the
    profile's ``cfg``) run with other settings than the profile gives its attack or estimator name,
    which would merge it under a name it does not mean."""
    path = Path(path)
    try:
        cell = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"cell {path} does not exist; run it first (`deqrobust evaluate`, or the workflow)") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(
            f"{path} is not an evaluation cell (not JSON); valid: a file `deqrobust evaluate` wrote"
        ) from None
    missing = [k for k in CELL_KEYS if not isinstance(cell, dict) or k not in cell]
    if missing:
        raise ConfigError(f"{path} is not an evaluation cell: it has no {', '.join(missing)}")
    older = [k for k in (*SOLVE_COLUMNS, "checkpoint_md5") if k not in cell]
    if older:
        raise ConfigError(f"{path} {_OLDER.format(what=', '.join(older))} rerun the cell (`deqrobust evaluate`)")
    if cfg is not None:
        for kind, defined in (("attack", cfg["evaluation"]["attacks"]), ("estimator", cfg["evaluation"]["estimators"])):
            name, spec = cell[kind], cell[f"{kind}_spec"]
            if name in defined and spec != defined[name]:
                raise ConfigError(
                    f"{path} ran {kind} {name!r} as {spec}, but this profile defines {name!r} as "
                    f"{defined[name]}: rerun the cell with this profile, or give those settings "
                    f"another {kind} name"
                )
    return cell


def merge_outcomes(
    cell_paths: Iterable[str | os.PathLike], exit_paths: Iterable[str | os.PathLike], cfg: dict | None = None
) -> pd.DataFrame:
    """Per-example outcomes (OUTCOME_COLUMNS) from evaluation cells and early-exit choices: attacked
    rows, and per model and solver setting (coupling, batch size) its clean rows and the per-example
    worst case over clean and every cell of that setting (never across settings: under batch
    coupling the defense itself differs)."""
    exits = {}
    for path in exit_paths:
        record = json.loads(Path(path).read_text())
        exits[record["model"]] = record["state"]
    cells = [read_cell(p, cfg) for p in cell_paths]
    if not cells:
        raise ConfigError("merge needs at least one evaluation cell")
    blank = dict.fromkeys(SPEC_COLUMNS)
    rows, by_model = [], {}
    for cell in cells:
        ident = {
            **{k: cell[k] for k in IDENTITY},
            "base_model": cell.get("base_model") or cell["model"],
            "seed": cell.get("seed"),
            "indices": index_ranges(cell["indices"]),
            "checkpoint_md5": cell["checkpoint_md5"],  # the run stamp: which model made the cell
            **{k: cell[k] for k in SOLVE_COLUMNS},
        }
        by_model.setdefault((cell["model"], *(ident[k] for k in SOLVE_COLUMNS)), (ident, []))[1].append(cell)
        specs = {**attack_columns(cell["attack_spec"]), **estimator_columns(cell["estimator"], cell["estimator_spec"])}
        for row in _rows_of(cell["adversarial"], exits.get(cell["model"])):
            rows.append(
                {
                    **ident,
                    "estimator": cell["estimator"],
                    "attacked_state": str(cell["attacked_state"]),
                    "attack": cell["attack"],
                    **row,
                    **specs,
                }
            )
    for (model, *_), (ident, group) in by_model.items():
        reference = group[0]
        stamps = {c.get("checkpoint_md5") for c in group} - {None}
        if len(stamps) > 1:
            raise ConfigError(
                f"cells of model {model!r} were made from different checkpoints (MD5 "
                f"{', '.join(sorted(stamps))}): some are stale; rerun the workflow to remake them"
            )
        for other in group[1:]:
            if any(other[k] != reference[k] for k in ("indices", "labels", "clean")):
                setting = ", ".join(f"{k} {ident[k]}" for k in SOLVE_COLUMNS)
                raise ConfigError(
                    f"cells of model {model!r} ({setting}) disagree on the clean examples; "
                    "were they run with different configs?"
                )
        for row in _rows_of(reference["clean"], exits.get(model)):
            rows.append({**ident, "estimator": NONE, "attacked_state": NONE, "attack": CLEAN, **row, **blank})
        for row in _rows_of(worst_case(group), exits.get(model)):
            rows.append({**ident, "estimator": ANY, "attacked_state": ANY, "attack": WORST_CASE, **row, **blank})
    frame = pd.DataFrame(rows)
    frame["seed"] = pd.to_numeric(frame["seed"]).astype("Int64")
    _integers(frame)
    return frame[list(OUTCOME_COLUMNS)].sort_values(SORT, kind="stable").reset_index(drop=True)


def profile_solve(cfg: dict) -> dict:
    """The profile's solver setting as the SOLVE_COLUMNS hold it."""
    return {"coupling": coupling_of(cfg), "batch_size": cfg.get("evaluation", {}).get("batch_size")}


def profile_rows(frame: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """The rows (of a table or of per-example outcomes) of the profile's solver setting, the ones the
    main table, the figures and claims 2-5 read."""
    keep = pd.Series(True, index=frame.index)
    for column, value in profile_solve(cfg).items():
        keep &= frame[column] == value
    return frame[keep]


def tabulate(outcomes: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (COLUMNS) from per-example outcomes: counts, accuracy and Wilson interval."""
    table = outcomes.assign(correct=[str(o).count("1") for o in outcomes["outcomes"]])
    table["accuracy"] = table["correct"] / table["n"]
    bounds = [wilson(c, n) for c, n in zip(table["correct"], table["n"])]
    table["ci_low"] = [b[0] for b in bounds]
    table["ci_high"] = [b[1] for b in bounds]
    return table[list(COLUMNS)].reset_index(drop=True)


def merge(
    cell_paths: Iterable[str | os.PathLike], exit_paths: Iterable[str | os.PathLike], cfg: dict | None = None
) -> pd.DataFrame:
    """The tidy table from evaluation cells and early-exit choices (``tabulate`` of ``merge_outcomes``)."""
    return tabulate(merge_outcomes(cell_paths, exit_paths, cfg))


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the table as CSV atomically (a killed job leaves no complete-looking table)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_outcomes(outcomes: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write per-example outcomes as gzipped CSV atomically; the gzip header carries no time stamp
    or file name, so equal outcomes give equal bytes (DVC and the rerun checks see no change)."""
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed,
    ):
        packed.write(outcomes.to_csv(index=False).encode())


# A file merged or recorded by an older deqrobust (before 0.2: without the solver setting, spec,
# provenance or run-stamp columns) is refused, naming what it lacks; the workflow's code trigger
# reruns such steps anyway (docs/workflow.md).
_OLDER = "was made by a deqrobust older than 0.2 (no {what}):"


def _refuse_older(frame: pd.DataFrame, path, columns: Iterable[str], again: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} {_OLDER.format(what='columns ' + ', '.join(missing))} {again}")
    frame["coupling"] = frame["coupling"].astype(object)
    frame["batch_size"] = pd.to_numeric(frame["batch_size"]).astype("Int64")
    return frame


def load_outcomes(path: str | os.PathLike) -> pd.DataFrame:
    """Per-example outcomes as ``merge_outcomes`` made them (outcomes and indices kept as text)."""
    if not Path(path).is_file():
        raise ConfigError(
            f"per-example outcomes {path} do not exist; make them with `deqrobust merge --outcomes` "
            "(the workflow's merge rule)"
        )
    text = {
        c: str
        for c in (
            "model",
            "base_model",
            "attacked_state",
            "scored_state",
            "indices",
            "outcomes",
            "attack_params",
            "estimator_params",
            "checkpoint_md5",
        )
    }
    frame = pd.read_csv(path, dtype=text, compression="gzip")
    frame = _refuse_older(frame, path, OUTCOME_COLUMNS, "rerun `deqrobust merge --outcomes` (the merge rule)")
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    """The tidy table with states kept as text (attacked: 'final', a step, 'any'; scored: 'state_n', ...)."""
    if not Path(path).is_file():
        raise ConfigError(f"table {path} does not exist; make it with `deqrobust merge` (the workflow's merge rule)")
    text = ("attacked_state", "scored_state", "model", "attack_params", "estimator_params")
    table = _refuse_older(pd.read_csv(path, dtype=dict.fromkeys(text, str)), path, COLUMNS, "rerun `deqrobust merge`")
    for column in PROVENANCE_COLUMNS:
        if column not in table.columns:
            table[column] = None
    return table


def _integers(table: pd.DataFrame) -> None:
    """Counts as integers with blanks (not 10.0); eps_255 too when every radius is whole."""
    eps = pd.to_numeric(table["eps_255"])
    table["eps_255"] = eps.astype("Int64") if (eps.dropna() % 1 == 0).all() else eps
    for column in ("attack_steps", "restarts", "batch_size"):
        table[column] = pd.to_numeric(table[column]).astype("Int64")
