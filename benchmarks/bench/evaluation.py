"""Section ``evaluation``: images/s of a PGD attack through each estimator at a few states."""

from __future__ import annotations

import torch

from deqrobust.attacks.pgd import pgd

from .common import EPS, STEP, logits_module, make_batch, make_model
from .settings import Settings
from .timing import interleaved


def estimator_cases(s: Settings) -> list[tuple[str, dict, object]]:
    k = s.unroll_k
    rows = [
        ("exact", {"name": "exact"}, None),
        ("unroll", {"name": "unroll", "lam": 0.5, "k": k}, None),
        ("neumann", {"name": "neumann", "lam": 1.0, "k": s.budget}, None),
    ]
    for state in (1, s.budget // 2, None):
        rows.append(("adjoint", {"name": "adjoint", "variant": "lockstep"}, state))
    for state in (1, s.budget // 2):
        rows.append(("intermediate", {"name": "intermediate", "lam": 0.5, "k": k}, state))
    rows.append(("intermediate", {"name": "intermediate", "lam": 0.5, "k": 1}, "ensemble"))
    return rows


def evaluation(s: Settings) -> dict:
    out = {}
    for size in s.sizes:
        deq = make_model(size)
        x, y = make_batch(s.batch)
        cases, meta = {}, {}
        for name, spec, state in estimator_cases(s):
            label = f"{name}@{'final' if state is None else state}" + (f"(k={spec['k']})" if "k" in spec else "")
            model = logits_module(deq, spec, state, s)
            gen = torch.Generator().manual_seed(0)
            cases[label] = lambda model=model, gen=gen: pgd(model, x, y, EPS, STEP, s.pgd_steps, generator=gen)
            meta[label] = {"estimator": spec, "state": "final" if state is None else state}
        times = interleaved(cases, s.repeats)
        out[size] = {k: {**meta[k], **t, "images_per_s": s.batch / t["median_s"]} for k, t in times.items()}
    return {"batch": s.batch, "attack": f"PGD-{s.pgd_steps}", "solver": s.solver(), "sizes": out}
