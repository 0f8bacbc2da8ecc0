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
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

FORMAT = "deqrobust-analysis/1"
INPUTS = ("clean", "adversarial")
# Significant digits kept for the raw per-sample residual matrix (about float16 precision).
RAW_DIGITS = 3

Adversary = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, list[str]]]


@torch.no_grad()
def trace_batch(deq: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, solver: dict) -> dict[str, torch.Tensor]:
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
        stats = {"median": np.nanmedian(finite, axis=0), "q25": np.nanquantile(finite, 0.25, axis=0),
                 "q75": np.nanquantile(finite, 0.75, axis=0), "mean": np.nanmean(finite, axis=0)}
    steps = steps_to_tolerance(rel, tol)
    reached = [s for s in steps if s is not None]
    capped = [budget if s is None else s for s in steps]
    return {
        "n": n,
        "residual": {**{k: _finite_or_none(v) for k, v in stats.items()},
                     "nonfinite": (~np.isfinite(rel)).sum(axis=0).tolist()},
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


def analyse(deq: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, solver: dict, tol: float,
            batch_size: int, adversary: Adversary | None = None, progress: bool = True) -> dict:
    """Trace clean (and, given an adversary, adversarial) inputs batch by batch and summarise.

    ``solver`` is the forward solver spec to trace (its tol should be 0); ``tol`` is the
    deployed tolerance that defines convergence. ``adversary(x, y, batch_index)`` returns
    adversarial inputs and the attack's warnings.
    """
    deq.eval()
    kinds = INPUTS if adversary is not None else INPUTS[:1]
    parts: dict[str, dict[str, list]] = {k: {"rel": [], "correct": [], "correct_fixed_point": []} for k in kinds}
    attack_warnings: list[str] = []
    starts = range(0, len(y), batch_size)
    for index, start in enumerate(tqdm(starts, desc="analyse", unit="batch", disable=not progress)):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        inputs = {"clean": xb}
        if adversary is not None:
            inputs["adversarial"], batch_warnings = adversary(xb, yb, index)
            attack_warnings += [w for w in batch_warnings if w not in attack_warnings]
        for kind, xin in inputs.items():
            for key, value in trace_batch(deq, xin, yb, solver).items():
                parts[kind][key].append(value.cpu().numpy())
    summaries = {kind: summarise(*(np.concatenate(parts[kind][key]) for key in ("rel", "correct", "correct_fixed_point")),
                                 tol) for kind in kinds}
    return {"inputs": summaries, "warnings": attack_warnings}


def make_adversary(cfg: dict, deq: torch.nn.Module) -> tuple[Adversary, dict]:
    """The attack of ``analysis.attack`` through estimator ``analysis.estimator`` at the final state."""
    from deqrobust import seeds
    from deqrobust.attacks import build_attack
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.estimators import build_estimator
    from deqrobust.plan import analysis_slice

    settings, step = cfg["analysis"], analysis_slice(cfg)   # the slice checks the names analysis refers to
    attack_spec, estimator_spec = step["attack_spec"], step["estimator_spec"]
    model = DEQLogits(deq, build_estimator(estimator_spec), state=None,
                      solver=cfg["solver"], backward_solver=cfg["backward_solver"]).eval()
    attack = build_attack(settings["attack"], attack_spec)

    def adversary(x: torch.Tensor, y: torch.Tensor, index: int) -> tuple[torch.Tensor, list[str]]:
        out = attack.run(model, x, y, seed=seeds.derive(cfg["seed"], seeds.ANALYSIS_ATTACK, index))
        return out.x_adv.detach(), list(out.warnings)

    return adversary, {"attack_spec": attack_spec, "estimator_spec": estimator_spec}


def run(cfg: dict, checkpoint: str, device: torch.device, progress: bool = True) -> dict:
    """The whole analysis of one checkpoint as the JSON-ready record ``deqrobust analyze`` writes."""
    from deqrobust import __version__
    from deqrobust.checkpoint import load_checkpoint
    from deqrobust.config import ConfigError
    from deqrobust.data import load_split

    deq, meta = load_checkpoint(checkpoint, device, expect_arch="mdeq")
    settings = cfg["analysis"]
    x, y = load_split(cfg, "test")
    count = len(y) if settings["num_examples"] is None else min(settings["num_examples"], len(y))
    if count == 0:
        raise ConfigError("analysis.num_examples selects no test image")
    x, y = x[:count].to(device), y[:count].to(device)
    adversary, specs = make_adversary(cfg, deq)
    traced = {**cfg["solver"], "budget": settings["budget"], "tol": 0.0}
    began = time.time()
    result = analyse(deq, x, y, traced, cfg["solver"]["tol"], cfg["evaluation"]["batch_size"], adversary, progress)
    spec = meta["spec"]
    return {
        "format": FORMAT,
        "model": {k: spec.get(k) for k in ("name", "arch", "size", "training", "grad")},
        "profile": cfg["profile"],
        "checkpoint": str(checkpoint),
        "epoch": meta.get("epoch"),
        "num_examples": count,
        "indices": list(range(count)),
        "solver": traced,
        "tol": cfg["solver"]["tol"],
        "deployed_budget": cfg["solver"]["budget"],
        "attack": settings["attack"],
        "estimator": settings["estimator"],
        **specs,
        "seed": cfg["seed"],
        **result,
        "timing": {"seconds": round(time.time() - began, 2)},
        "versions": {"torch": torch.__version__, "deqrobust": __version__},
    }


def load(path) -> dict:
    """Read an analysis JSON, refusing files of another format."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fixed-point analysis ({FORMAT}); format found: {record.get('format')!r}")
    return record
