"""Training dynamics of a DEQ: does its fixed point break as (adversarial) training goes on?

A training keeps its weights at every selection point (deqrobust.training: ``snapshots.json``
lists them). Each snapshot is analysed here on the same first ``analysis.trajectory.num_examples``
test images, so two snapshots compare image by image:

- ``forward_residual``: per image, the relative residual of the iterate the deployed solver
  returns (its budget, tolerance and coupling, in the evaluation's batches);
- ``traced_residual``: per image, the relative residual at step ``analysis.budget`` of a solve
  with tolerance 0, and ``never_converged``: the share of images whose residual never meets the
  deployed tolerance within that budget;
- ``correct``: per image, whether the deployed model (final defense) classifies it correctly;
- ``alignment``: per final-state estimator of the mechanism diagnostics (exact, unroll,
  neumann), the cosine between its input gradient and the deployed model's true gradient
  (gradients.deployed_model) on the first ``alignment_examples`` images.

``trend`` compares the first snapshot after unrolled pretraining with the last one, image by
image (stats.median_change): the change of log10 of the deployed residual and of each cosine.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deqrobust.solvers import SolverSpec, solvers_of

FORMAT = "deqrobust-trajectory/1"
DIGITS = 4  # significant digits kept per image


def read_manifest(path: str | Path) -> tuple[dict, list[Path]]:
    """A training's ``snapshots.json`` and the snapshot files it lists, each checked against its MD5."""
    from deqrobust.checkpoint import SNAPSHOTS_FORMAT
    from deqrobust.data import md5_of
    from deqrobust.errors import ConfigError

    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"snapshot list {path} cannot be read ({err}); it is written by `deqrobust train` when a training finishes"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != SNAPSHOTS_FORMAT:
        raise ConfigError(f"{path} is not a snapshot list ({SNAPSHOTS_FORMAT})")
    files = []
    for entry in manifest["snapshots"]:
        file = path.parent / manifest["folder"] / entry["file"]
        if not file.is_file() or md5_of(file) != entry["md5"]:
            raise ConfigError(
                f"snapshot {file} is missing or not the one {path} lists (MD5 {entry['md5']}); "
                f"retrain the model (delete {path} and rerun the workflow)"
            )
        files.append(file)
    return manifest, files


def _rounded(values: np.ndarray) -> list[float | None]:
    return [float(f"{v:.{DIGITS}g}") if np.isfinite(v) else None for v in values]


@torch.no_grad()
def forward_measures(
    deq: torch.nn.Module, own, x: torch.Tensor, y: torch.Tensor, solver: SolverSpec, budget: int, batch_size: int
) -> dict[str, np.ndarray]:
    """Per image: the deployed residual, the residual at step ``budget`` (tolerance 0), the first
    step meeting the deployed tolerance (0: never), and the deployed model's correctness."""
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.solvers import solve

    deployed = DEQLogits(deq, own, None, solver, own=own).eval()
    traced = replace(solver, budget=budget, tol=0.0)
    parts: dict[str, list[np.ndarray]] = {"forward": [], "traced": [], "steps": [], "correct": []}
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = deployed(xb)
        parts["forward"].append(deployed.stats["result"].final_rel.double().cpu().numpy())
        parts["correct"].append((logits.argmax(1) == yb).cpu().numpy())
        injection = deq.prepare(xb)
        rel = solve(traced, lambda z: deq.f(z, injection), deq.init_state(xb)).rel_trace.double().cpu().numpy()
        parts["traced"].append(rel[:, -1])
        met = np.nan_to_num(rel, nan=np.inf) <= solver.tol
        parts["steps"].append(np.where(met.any(axis=1), met.argmax(axis=1) + 1, 0))
    return {key: np.concatenate(value) for key, value in parts.items()}


def deployed_alignment(
    deq: torch.nn.Module,
    own,
    x: torch.Tensor,
    y: torch.Tensor,
    estimators: dict[str, dict],
    solver: SolverSpec,
    backward_solver: SolverSpec,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Per estimator (config name -> spec, attacked at the final state), per image: the cosine of its
    input gradient to the deployed model's true gradient."""
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.estimators import build_estimator
    from deqrobust.gradients import batched_gradient, cosine, deployed_model

    reference = deployed_model(DEQLogits(deq, own, None, solver, backward_solver, own=own).eval())
    truth = batched_gradient(reference, x, y, batch_size)
    found = {}
    for name, spec in estimators.items():
        target = DEQLogits(deq, build_estimator(spec), None, solver, backward_solver, own=own).eval()
        found[name] = cosine(batched_gradient(target, x, y, batch_size), truth).double().cpu().numpy()
    return found


def run(cfg: dict, manifest_path: str | Path, device: torch.device, progress: bool = True) -> dict:
    """Every snapshot of one trained DEQ analysed on the same test images: the record
    ``deqrobust trajectory`` writes."""
    from deqrobust import __version__, protocol
    from deqrobust.checkpoint import load_checkpoint
    from deqrobust.data import load_split
    from deqrobust.errors import ConfigError
    from deqrobust.evaluation import own_estimator
    from deqrobust.instances import identity, instance_config
    from deqrobust.slices import trajectory_slice

    manifest, files = read_manifest(manifest_path)
    if not files:
        raise ConfigError(f"{manifest_path} lists no snapshot (training.select.every_epochs selects none)")
    cfg = instance_config(cfg, manifest["model"])
    settings = cfg["analysis"]["trajectory"]
    x, y = load_split(cfg, "test")
    count = min(settings["num_examples"], len(y))
    aligned = min(settings["alignment_examples"], count)
    x, y = x[:count].to(device), y[:count].to(device)
    solvers = solvers_of(cfg)
    batch_size, budget = cfg["evaluation"]["batch_size"], cfg["analysis"]["budget"]
    estimators = trajectory_slice(cfg)["estimators"]
    began, snapshots, spec = time.time(), [], None
    for entry, file in zip(
        tqdm(manifest["snapshots"], desc=f"trajectory {manifest['model']}", unit="snapshot", disable=not progress),
        files,
    ):
        deq, meta = load_checkpoint(file, device)
        protocol.check(deq, f"the model of {file}")  # the analysis is of DEQs
        spec = meta["spec"]
        own = own_estimator(cfg, spec)
        measured = forward_measures(deq, own, x, y, solvers[0], budget, batch_size)
        cosines = deployed_alignment(deq, own, x[:aligned], y[:aligned], estimators, *solvers, batch_size)
        snapshots.append(
            {
                **entry,
                "pretraining": entry["iteration"] <= manifest["pretrain_iters"],
                "clean_accuracy": float(measured["correct"].mean()),
                "correct": "".join(str(int(c)) for c in measured["correct"]),
                "forward_residual": _rounded(measured["forward"]),
                "traced_residual": _rounded(measured["traced"]),
                "never_converged": float((measured["steps"] == 0).mean()),
                "alignment": {
                    name: {"estimator_type": estimators[name]["name"], "cosine": _rounded(values)}
                    for name, values in cosines.items()
                },
            }
        )
    return {
        "format": FORMAT,
        "model": {k: spec.get(k) for k in ("name", "arch", "size", "training", "grad")},
        **identity(cfg, spec["name"]),
        "profile": cfg["profile"],
        "num_examples": count,
        "alignment_examples": aligned,
        "solver": cfg["solver"],
        "backward_solver": cfg["backward_solver"],
        "traced_budget": budget,
        "iterations_per_epoch": manifest["iterations_per_epoch"],
        "pretrain_iters": manifest["pretrain_iters"],
        "snapshots": snapshots,
        "timing": {"seconds": round(time.time() - began, 2)},
        "versions": {"torch": torch.__version__, "deqrobust": __version__},
    }


def load(path: str | Path) -> dict:
    """Read a trajectory JSON, refusing files of another format."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a training trajectory ({FORMAT}); format found: {record.get('format')!r}")
    return record


# ---------------------------------------------------------------- queries
def _values(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def log_residual(values: list) -> np.ndarray:
    """log10 of per-image residuals; a diverged image (None) ranks above every finite one (+inf)."""
    arr = _values(values)
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(arr), np.log10(np.maximum(arr, 1e-300)), np.inf)


def frame(records: list[dict]):
    """One row per model instance and snapshot: epoch, residual quartiles (deployed and traced), the
    never-converged share, clean accuracy, and per estimator the median and quartiles of the cosine."""
    import pandas as pd

    rows = []
    for record in records:
        who = {
            "model": record["model"]["name"],
            "base_model": record["base_model"],
            "seed": record["seed"],
            "training": record["model"]["training"],
        }
        for snap in record["snapshots"]:
            row = {
                **who,
                "epoch": snap["epoch"],
                "iteration": snap["iteration"],
                "pretraining": snap["pretraining"],
                "clean_accuracy": snap["clean_accuracy"],
                "never_converged": snap["never_converged"],
            }
            for key in ("forward_residual", "traced_residual"):
                q25, q50, q75 = np.nanquantile(_values(snap[key]), [0.25, 0.5, 0.75])
                row.update({f"{key}_q25": q25, f"{key}_median": q50, f"{key}_q75": q75})
            for name, entry in snap["alignment"].items():
                q10, q25, q50, q75 = np.nanquantile(_values(entry["cosine"]), [0.1, 0.25, 0.5, 0.75])
                rows.append(
                    {
                        **row,
                        "estimator": name,
                        "cosine_q10": q10,
                        "cosine_q25": q25,
                        "cosine_median": q50,
                        "cosine_q75": q75,
                    }
                )
            if not snap["alignment"]:
                rows.append({**row, "estimator": None})
    return pd.DataFrame(rows)


def trend(record: dict) -> dict:
    """The change from the first snapshot after pretraining to the last, image by image
    (stats.median_change, two-sided): of log10 of the deployed residual, and of each cosine.
    None where the record has fewer than two such snapshots."""
    from deqrobust import stats

    after = [s for s in record["snapshots"] if not s["pretraining"]]
    if len(after) < 2:
        return {"first": None, "last": None, "residual": None, "cosine": {}}
    first, last = after[0], after[-1]
    residual = stats.median_change(log_residual(first["forward_residual"]), log_residual(last["forward_residual"]))
    cosine = {
        name: stats.median_change(
            _values(first["alignment"][name]["cosine"]), _values(last["alignment"][name]["cosine"])
        )
        for name in first["alignment"]
        if name in last["alignment"]
    }
    return {"first": first["epoch"], "last": last["epoch"], "residual": residual, "cosine": cosine}
