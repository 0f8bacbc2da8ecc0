"""Scores of every defense and state of a DEQ for one batch, from one forward solve.

An evaluation cell scores the clean and the adversarial batch under every defense at
once: ``final`` (the model's own output, under the estimator it was trained with),
``ensemble`` (the head of the mean of z_1..z_N) and ``state_n`` (the head of z_n, the
early-exit candidates). These are the deployed maps whose true gradient the estimator
``solver_autograd`` computes (deqrobust.estimators.SolverAutograd).
"""

from __future__ import annotations

import torch
from torch import nn

from deqrobust.deq_logits import weight_scope
from deqrobust.estimators import Context, Estimator
from deqrobust.solvers import SolverSpec, solve
from deqrobust.vocab import ENSEMBLE, FINAL, step_score


@torch.no_grad()
def all_state_logits(deq: nn.Module, x: torch.Tensor, solver: SolverSpec, own: Estimator) -> dict[str, torch.Tensor]:
    """Logits of every defense and state for one batch, by name (FINAL, ENSEMBLE, state_n);
    ``own`` is the estimator the model was trained with."""
    with weight_scope(deq):
        return _all_state_logits(deq, x, solver, own)


def _all_state_logits(deq: nn.Module, x: torch.Tensor, solver: SolverSpec, own: Estimator) -> dict[str, torch.Tensor]:
    injection = deq.prepare(x)
    z0 = deq.init_state(x)
    result = solve(solver, lambda z: deq.f(z, injection), z0, keep_iterates=True)
    ctx = Context(lambda z: deq.f(z, injection), lambda z: deq.f(z, injection), result, z0, {})
    scores = {FINAL: deq.head(own.forward_map(result.z, ctx)), ENSEMBLE: deq.head(torch.stack(result.iterates).mean(0))}
    for n, z_n in enumerate(result.iterates, start=1):
        scores[step_score(n)] = deq.head(z_n)
    return scores
