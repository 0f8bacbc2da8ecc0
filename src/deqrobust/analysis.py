"""Fixed-point analysis of one DEQ: does the forward solver reach z*, and what does h(z_n) predict?

Claim 1 of the paper says an adversarially trained DEQ needs more solver steps to reach its
fixed point, or never reaches it. To test it we run the forward solver of the config with a
longer budget (``analysis.budget``) and tolerance 0, so every sample is traced for the whole
budget, on clean test images and on adversarial ones made by ``analysis.attack`` through the
``analysis.estimator`` gradient at the final state. Per step n we keep each sample's relative
residual ``||f(z_n) - z_n|| / ||f(z_n)||`` and whether ``h(z_n)`` classifies it correctly.

Definitions used by the figures and the report:
- steps to tolerance of a sample: first n with relative residual <= ``solver.tol`` of the
  config; ``None`` when no step of the budget reaches it (the sample "never converges").
- ``mean_capped``: mean steps with never-converging samples counted as the budget (a lower
  bound of the true mean); ``mean_converged``: mean over converging samples only.
- residual summaries (median, quartiles, mean) per step are over finite residuals; a
  non-finite one (a diverging sample) is counted in ``nonfinite`` instead.
Tracing with tolerance 0 gives the same iterates as the deployed solver up to the step where a
sample meets the tolerance, because the solvers stop and update each sample independently.

Mechanism diagnostics (``analysis.diagnostics``; which estimators and states: plan.diagnosed),
per sample, on clean and adversarial inputs:
- ``forward_residual``: relative residual of the iterate the deployed solver returns (its
  budget, tolerance and coupling, in the evaluation's batches), on every analysed image;
- ``backward_residual``: relative residual of the adjoint solve of ``exact`` after the
  backward solver's budget, ``alignment``: cosine between each estimator's input gradient
  and the true gradient of the same output, and of the deployed model (claim 2's precondition
  reads the latter: every attack is scored on the deployed model), on the first
  ``diagnostics.num_examples`` images;
- ``batch_dependence``: per solver coupling, cosine between an image's gradient solved in a
  batch of clean images (``diagnostics.batch_size``, default the evaluation's) and solved
  alone (gradients.batch_dependence), for the first ``diagnostics.num_examples`` images of
  the batch, per estimator at its last diagnosed state and for the true gradient of the
  deployed model at the final state.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from deqrobust.solvers import SolverSpec, solvers_of

FORMAT = "deqrobust-analysis/1"
INPUTS = ("clean", "adversarial")
# Significant digits kept for the raw per-sample residual matrix (about float16 precision).
RAW_DIGITS = 3

Adversary = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, list[str]]]


@torch.no_grad()
def trace_batch(deq: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, solver: SolverSpec) -> dict[str, torch.Tensor]:
    """Relative residual [B, N] and correctness of h(z_n) [B, N] per step, and of h(z*) [B]."""
    from deqrobust.solvers import solve

    injection = deq.prepare(x)
    res = solve(solver, lambda z: deq.f(z, injection), deq.init_state(x), keep_iterates=True)
    correct = torch.stack([deq.head(z).argmax(dim=1) == y for z in res.iterates], dim=1)
    return {"rel": res.rel_trace, "correct": correct, "correct_fixed_point": deq.head(res.z).argmax(dim=1) == y}


def steps_to_tolerance(rel: np.ndarray, tol: float) -> list[int | None]:
    """Per sample, the first step (1-based) whose relative residual is <= tol, else None."""
    met = np.nan_to_num(rel, nan=np.inf) <= tol
    first = met.argmax(axis=1) + 1
    return [int(s) if ok else None for s, ok in zip(first, met.any(axis=1))]


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


def summarise(rel: np.ndarray, correct: np.ndarray, correct_fixed: np.ndarray, tol: float) -> dict:
    """Per-step residual and accuracy summaries of one input kind (see the module docstring)."""
    n, budget = rel.shape
    finite = np.where(np.isfinite(rel), rel, np.nan)
    with warnings.catch_warnings():  # a step where every sample diverged gives NaN, said by "nonfinite"
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = {
            "median": np.nanmedian(finite, axis=0),
            "q25": np.nanquantile(finite, 0.25, axis=0),
            "q75": np.nanquantile(finite, 0.75, axis=0),
            "mean": np.nanmean(finite, axis=0),
        }
    steps = steps_to_tolerance(rel, tol)
    reached = [s for s in steps if s is not None]
    capped = [budget if s is None else s for s in steps]
    return {
        "n": n,
        "residual": {
            **{k: _finite_or_none(v) for k, v in stats.items()},
            "nonfinite": (~np.isfinite(rel)).sum(axis=0).tolist(),
        },
        "steps_to_tol": {
            "counts": [reached.count(s) for s in range(1, budget + 1)],
            "never": n - len(reached),
            "mean_converged": float(np.mean(reached)) if reached else None,
            "mean_capped": float(np.mean(capped)),
            "median_capped": float(np.median(capped)),
        },
        "share_never_converged": (n - len(reached)) / n,
        "accuracy": correct.mean(axis=0).tolist(),
        "correct": correct.sum(axis=0).tolist(),
        "accuracy_fixed_point": float(correct_fixed.mean()),
        "per_sample": {
            "steps_to_tol": steps,
            "rel_residual": [[float(f"{v:.{RAW_DIGITS}g}") if np.isfinite(v) else None for v in row] for row in rel],
        },
    }


@torch.no_grad()
def deployed_residual(deq: torch.nn.Module, x: torch.Tensor, solver: SolverSpec) -> torch.Tensor:
    """Per sample, the relative residual of the iterate the deployed solver returns [B]."""
    from deqrobust.solvers import solve

    injection = deq.prepare(x)
    return solve(solver, lambda z: deq.f(z, injection), deq.init_state(x)).final_rel


def analyse(
    deq: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    solver: SolverSpec,
    tol: float,
    batch_size: int,
    adversary: Adversary | None = None,
    progress: bool = True,
    deployed: SolverSpec | None = None,
) -> tuple[dict, torch.Tensor | None]:
    """Trace clean (and, given an adversary, adversarial) inputs batch by batch and summarise.

    ``solver`` is the forward solver spec to trace (its tol should be 0); ``tol`` is the
    deployed tolerance that defines convergence. ``adversary(x, y, batch_index)`` returns
    adversarial inputs and the attack's warnings. Given the ``deployed`` solver spec, the
    record part also holds ``forward_residual`` per input kind (deployed_residual, same batches).
    Returns the record part and the adversarial inputs (None without an adversary).
    """
    deq.eval()
    kinds = INPUTS if adversary is not None else INPUTS[:1]
    keys = ("rel", "correct", "correct_fixed_point", "deployed")
    parts: dict[str, dict[str, list]] = {k: {key: [] for key in keys} for k in kinds}
    attack_warnings: list[str] = []
    adversarial: list[torch.Tensor] = []
    starts = range(0, len(y), batch_size)
    for index, start in enumerate(tqdm(starts, desc="analyse", unit="batch", disable=not progress)):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        inputs = {"clean": xb}
        if adversary is not None:
            inputs["adversarial"], batch_warnings = adversary(xb, yb, index)
            adversarial.append(inputs["adversarial"])
            attack_warnings += [w for w in batch_warnings if w not in attack_warnings]
        for kind, xin in inputs.items():
            for key, value in trace_batch(deq, xin, yb, solver).items():
                parts[kind][key].append(value.cpu().numpy())
            if deployed is not None:
                parts[kind]["deployed"].append(deployed_residual(deq, xin, deployed).cpu().numpy())
    summaries = {kind: summarise(*(np.concatenate(parts[kind][key]) for key in keys[:3]), tol) for kind in kinds}
    record = {"inputs": summaries, "warnings": attack_warnings}
    if deployed is not None:
        record["forward_residual"] = {kind: _finite_or_none(np.concatenate(parts[kind]["deployed"])) for kind in kinds}
    return record, (torch.cat(adversarial) if adversarial else None)


# ---------------------------------------------------------------- mechanism diagnostics
def _batched(
    measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> np.ndarray:
    """``measure`` over batches of ``batch_size`` (the evaluation's: batch coupling depends on it)."""
    return np.concatenate(
        [
            measure(x[i : i + batch_size], y[i : i + batch_size]).detach().cpu().double().numpy()
            for i in range(0, len(y), batch_size)
        ]
    )


def _per_sample(values: np.ndarray) -> dict:
    """Per-sample values and their median (non-finite values are None and left out of the median)."""
    finite = values[np.isfinite(values)]
    return {"cosine": _finite_or_none(values), "median": float(np.median(finite)) if finite.size else None}


def backward_residual(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the relative residual of ``model``'s adjoint solve (an ``exact`` DEQLogits) after
    its budget, in the backward pass of the input gradient of its cross-entropy."""
    from deqrobust.gradients import input_gradient

    input_gradient(model, x, y)
    return model.stats["backward"].final_rel


def diagnose(
    deq: torch.nn.Module,
    own,
    inputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    diagnosed: dict,
    solver: SolverSpec,
    backward_solver: SolverSpec,
    batch_size: int,
    progress: bool = True,
) -> dict:
    """``alignment`` entries and ``backward_residual`` per input kind (see the module docstring).

    ``diagnosed`` is plan.diagnosed(cfg); ``own`` the model's own estimator; gradients are taken
    under the deployed ``solver`` and ``backward_solver`` in batches of ``batch_size``. Each
    alignment entry holds the cosine to the true gradient of the estimator's own output
    (``cosine``) and to the deployed model's true gradient (``deployed``: the final defense's
    output, which every attack is scored on; gradients.deployed_model)."""
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.estimators import Exact, build_estimator
    from deqrobust.gradients import batched_gradient, cosine, deployed_model, true_gradient_model

    def model(estimator, state):
        return DEQLogits(deq, estimator, state, solver, backward_solver, own=own).eval()

    def gradients(target, x, y) -> torch.Tensor:
        return batched_gradient(target, x, y, batch_size)

    pairs = [
        (name, entry["spec"], state) for name, entry in diagnosed["estimators"].items() for state in entry["states"]
    ]
    entries, backward = [], {}
    for kind, (x, y) in tqdm(inputs.items(), desc="diagnose", unit="inputs", disable=not progress):
        deployed = gradients(deployed_model(model(own, None)), x, y)
        for name, spec, state in pairs:
            target = model(build_estimator(spec), state)
            mine = gradients(target, x, y)
            own_truth = cosine(mine, gradients(true_gradient_model(target), x, y)).double().cpu().numpy()
            entries.append(
                {
                    "inputs": kind,
                    "estimator": name,
                    "estimator_type": spec["name"],
                    "state": state,
                    **_per_sample(own_truth),
                    "deployed": _per_sample(cosine(mine, deployed).double().cpu().numpy()),
                }
            )
        exact = model(Exact(), None)
        backward[kind] = _finite_or_none(_batched(lambda xb, yb: backward_residual(exact, xb, yb), x, y, batch_size))
    return {"alignment": entries, "backward_residual": backward}


def batch_dependences(
    deq: torch.nn.Module,
    own,
    x: torch.Tensor,
    y: torch.Tensor,
    diagnosed: dict,
    solver: SolverSpec,
    backward_solver: SolverSpec,
    images: int | None = None,
) -> dict:
    """Per solver coupling and estimator (at its last diagnosed state; the true gradient of the
    deployed model at the final state), gradients.batch_dependence of the first ``images``
    images of the batch ``x``."""
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.estimators import SolverAutograd, build_estimator
    from deqrobust.gradients import batch_dependence
    from deqrobust.vocab import COUPLINGS, FINAL

    targets = {
        name: (build_estimator(entry["spec"]), entry["states"][-1])
        for name, entry in diagnosed["estimators"].items()
        if entry["states"]
    }
    targets[diagnosed["true_gradient"]] = (SolverAutograd(), FINAL)
    out = {}
    for coupling in COUPLINGS:
        coupled = replace(solver, coupling=coupling), replace(backward_solver, coupling=coupling)
        out[coupling] = {}
        for name, (estimator, state) in targets.items():
            model = DEQLogits(deq, estimator, state, *coupled, own=own).eval()
            cosines = batch_dependence(model, x, y, images).detach().cpu().double().numpy()
            out[coupling][name] = {"state": state, **_per_sample(cosines)}
    return out


def make_adversary(cfg: dict, deq: torch.nn.Module, own) -> tuple[Adversary, dict]:
    """The attack of ``analysis.attack`` through estimator ``analysis.estimator`` at the final state
    (``own``: the model's own estimator, which ``solver_autograd`` differentiates there)."""
    from deqrobust import seeds
    from deqrobust.attacks import build_attack
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.estimators import build_estimator
    from deqrobust.slices import analysis_slice

    settings, step = cfg["analysis"], analysis_slice(cfg)  # the slice checks the names analysis refers to
    attack_spec, estimator_spec = step["attack_spec"], step["estimator_spec"]
    model = DEQLogits(
        deq,
        build_estimator(estimator_spec),
        None,
        *solvers_of(cfg),
        own=own,
    ).eval()
    attack = build_attack(settings["attack"], attack_spec)

    def adversary(x: torch.Tensor, y: torch.Tensor, index: int) -> tuple[torch.Tensor, list[str]]:
        out = attack.run(model, x, y, seed=seeds.derive(cfg["seed"], seeds.ANALYSIS_ATTACK, index))
        return out.x_adv.detach(), list(out.warnings)

    return adversary, {"attack_spec": attack_spec, "estimator_spec": estimator_spec}


def run(cfg: dict, checkpoint: str, device: torch.device, progress: bool = True) -> dict:
    """The whole analysis of one checkpoint as the JSON-ready record ``deqrobust analyze`` writes."""
    from deqrobust import __version__, protocol
    from deqrobust.checkpoint import load_checkpoint
    from deqrobust.data import load_split, md5_of
    from deqrobust.errors import ConfigError
    from deqrobust.evaluation import own_estimator
    from deqrobust.instances import identity, instance_config
    from deqrobust.plan import diagnosed

    deq, meta = load_checkpoint(checkpoint, device)
    protocol.check(deq, f"the model of {checkpoint}")  # the analysis is of DEQs
    spec = meta["spec"]
    cfg = instance_config(cfg, spec["name"])  # a seed instance's attacks use its seed
    settings, batch_size = cfg["analysis"], cfg["evaluation"]["batch_size"]
    x, y = load_split(cfg, "test")
    count = len(y) if settings["num_examples"] is None else min(settings["num_examples"], len(y))
    if count == 0:
        raise ConfigError("analysis.num_examples selects no test image")
    x, y = x[:count].to(device), y[:count].to(device)
    own = own_estimator(cfg, spec)
    adversary, specs = make_adversary(cfg, deq, own)
    solvers = solvers_of(cfg)
    deployed = solvers[0]
    traced = replace(deployed, budget=settings["budget"], tol=0.0)
    began = time.time()
    result, x_adv = analyse(deq, x, y, traced, deployed.tol, batch_size, adversary, progress, deployed=deployed)
    traced_at = time.time()
    plan, chosen = diagnosed(cfg), settings["diagnostics"]
    m = min(chosen["num_examples"], count)
    diagnostics = diagnose(
        deq, own, {"clean": (x[:m], y[:m]), "adversarial": (x_adv[:m], y[:m])}, plan, *solvers, batch_size, progress
    )
    aligned_at = time.time()
    together = min(chosen["batch_size"] or batch_size, count)
    dependence = batch_dependences(deq, own, x[:together], y[:together], plan, *solvers, images=m)
    done = time.time()
    return {
        "format": FORMAT,
        "model": {k: spec.get(k) for k in ("name", "arch", "size", "training", "grad")},
        "profile": cfg["profile"],
        "checkpoint": str(checkpoint),
        "checkpoint_md5": md5_of(Path(checkpoint)),  # the run stamp the report checks
        "epoch": meta.get("epoch"),
        "num_examples": count,
        "indices": list(range(count)),
        "solver": asdict(traced),
        "tol": deployed.tol,
        "deployed_budget": deployed.budget,
        "attack": settings["attack"],
        "estimator": settings["estimator"],
        **specs,
        **identity(cfg, spec["name"]),  # base_model, seed
        **result,
        **diagnostics,
        "batch_dependence": dependence,
        "diagnostics": {
            "num_examples": m,
            "batch_size": together,
            "coupling": deployed.coupling,
            "backward_solver": asdict(solvers[1]),
            "true_gradient": plan["true_gradient"],
            "estimators": {name: entry["spec"] for name, entry in plan["estimators"].items()},
        },
        "timing": {
            "seconds": round(done - began, 2),
            "traces": round(traced_at - began, 2),
            "alignment": round(aligned_at - traced_at, 2),
            "alignment_per_example": round((aligned_at - traced_at) / m, 3),
            "batch_dependence": round(done - aligned_at, 2),
        },
        "versions": {"torch": torch.__version__, "deqrobust": __version__},
    }


# ---------------------------------------------------------------- queries for the figures
ALIGNMENT_COLUMNS = [
    "model",
    "training",
    "grad",
    "inputs",
    "estimator",
    "estimator_type",
    "state",
    "step",
    "n",
    "median",
    "q25",
    "q75",
]
RESIDUAL_COLUMNS = ["model", "training", "grad", "inputs", "solve", "residual"]


def _who(record: dict) -> dict:
    model = record["model"]
    return {"model": model["name"], "training": model["training"], "grad": model.get("grad")}


def alignment_frame(records: list[dict]) -> pd.DataFrame:
    """Per model, input kind, estimator and state: median and quartiles of the cosine to the true
    gradient over the finite per-sample values; ``step`` is n, or NaN at the final state."""
    rows = []
    for record in records:
        who = _who(record)
        for e in record.get("alignment", []):
            values = np.array([np.nan if v is None else v for v in e["cosine"]], dtype=float)
            values = values[np.isfinite(values)]
            q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75]) if values.size else (np.nan,) * 3
            rows.append(
                {
                    **who,
                    "inputs": e["inputs"],
                    "estimator": e["estimator"],
                    "estimator_type": e["estimator_type"],
                    "state": str(e["state"]),
                    "step": float(e["state"]) if isinstance(e["state"], int) else np.nan,
                    "n": int(values.size),
                    "median": median,
                    "q25": q25,
                    "q75": q75,
                }
            )
    return pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)


def diagnostic_residual_frame(records: list[dict]) -> pd.DataFrame:
    """Per model, input kind and solve ('forward' at the deployed budget, 'backward' after its
    budget), one row per sample; a non-finite residual (a diverged solve) is NaN."""
    rows = []
    for record in records:
        who = _who(record)
        for solve, key in (("forward", "forward_residual"), ("backward", "backward_residual")):
            for kind, values in record.get(key, {}).items():
                rows += [
                    {**who, "inputs": kind, "solve": solve, "residual": np.nan if v is None else float(v)}
                    for v in values
                ]
    return pd.DataFrame(rows, columns=RESIDUAL_COLUMNS).astype({"residual": float})


def batch_dependence_frame(records: list[dict]) -> pd.DataFrame:
    """Per model, solver coupling and estimator: the batch size, the state, and the median and
    minimum cosine between an image's gradient in the batch and alone."""
    rows = []
    for record in records:
        size = record.get("diagnostics", {}).get("batch_size")
        for coupling, entries in record.get("batch_dependence", {}).items():
            for name, e in entries.items():
                values = [v for v in e["cosine"] if v is not None]
                rows.append(
                    {
                        **_who(record),
                        "coupling": coupling,
                        "estimator": name,
                        "state": str(e["state"]),
                        "batch_size": size,
                        "median": e["median"],
                        "min": min(values) if values else None,
                    }
                )
    return pd.DataFrame(
        rows, columns=["model", "training", "grad", "coupling", "estimator", "state", "batch_size", "median", "min"]
    )


def load(path) -> dict:
    """Read an analysis JSON, refusing files of another format."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fixed-point analysis ({FORMAT}); format found: {record.get('format')!r}")
    return record
