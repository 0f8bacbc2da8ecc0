"""A DEQ under a gradient estimator, as an ordinary module: the wiring of the estimators.

``DEQLogits`` decides which state is attacked (the final state z*, a solver step n, or
the ensemble of the steps), how far the forward solver runs (only as far as that state
needs), which solver iterates are kept for the estimator, whether the solve keeps its graph
(``solver_autograd`` and ``true_gradient(E)``: the true gradient), and whether training adds
the Jacobian regulariser. The estimators themselves are in deqrobust.estimators.

One forward of DEQLogits (and each lockstep backward) runs inside the model's
``cached_weights()`` scope if it has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import ContextManager

import torch
from torch import nn

from deqrobust.estimators import Context, Estimator
from deqrobust.jacobian import jacobian_penalty
from deqrobust.solvers import BACKWARD_DEFAULT, SolverResult, SolverSpec, solve
from deqrobust.vocab import State


def weight_scope(deq: nn.Module) -> ContextManager:
    """The model's cached-weights scope (see deqrobust.models.mdeq), or nothing."""
    scope = getattr(deq, "cached_weights", None)
    return scope() if scope is not None else nullcontext()


class DEQLogits(nn.Module):
    """Logits of state n of a DEQ under a gradient estimator, as an ordinary module.

    ``state`` is the final state z* (the default), a solver step n (0 is the zero state: with
    ``intermediate`` and lam=1 that is the paper's unrolled pretraining), or the ensemble: the
    head of the mean of the estimator's states 1..N (states weighted equally). The solver runs
    only as far as the attacked state needs. ``own`` is the model's training estimator
    (``estimators.model_estimator``), which defines its own output; ``solver_autograd`` needs it
    at the final state. ``stats`` holds the last forward's
    SolverResult, if ``jac_probes`` > 0 in training the Jacobian loss, and after a backward
    pass of ``exact`` its adjoint solve (``"backward"``).
    """

    def __init__(
        self,
        deq: nn.Module,
        estimator: Estimator,
        state: State | int | str | None = State(),
        solver: SolverSpec | Mapping | None = None,
        backward_solver: SolverSpec | Mapping | None = None,
        jac_probes: int = 0,
        own: Estimator | None = None,
    ):
        super().__init__()
        self.deq = deq
        self.estimator = estimator
        self.own = own
        self.solver = SolverSpec.parse(solver)
        self.backward_solver = (
            BACKWARD_DEFAULT if backward_solver is None else SolverSpec.parse(backward_solver, "backward_solver")
        )
        self.state = State.parse(state, self.solver.budget)
        self.jac_probes = jac_probes
        self.stats: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with weight_scope(self.deq):
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        deq = self.deq
        injection = deq.prepare(x)
        detached = injection.detach()
        z0 = deq.init_state(x)
        steps = self.state.step if self.state.step is not None else self.solver.budget
        keep = not self.state.is_final or self.estimator.needs_iterates
        # The true gradient's solve keeps its graph (unless nothing is differentiated).
        graph = self.estimator.differentiable_solve and torch.is_grad_enabled()
        if steps > 0:
            result = solve(
                self.solver.with_budget(steps),
                lambda z: deq.f(z, injection if graph else detached),
                z0,
                keep_iterates=keep,
                differentiable=graph,
            )
        else:
            result = _empty_result(z0)
        self.stats = {"result": result, "jac_loss": None}
        ctx = Context(
            lambda z: deq.f(z, injection),
            lambda z: deq.f(z, detached),
            result,
            z0,
            self.backward_solver,
            lambda: weight_scope(deq),
            self.own,
            self.stats,
        )
        if self.state.is_final:
            z = self.estimator.attach(result.z, None, ctx)
        elif self.state.ensemble:
            states = [self.estimator.attach(z_n, n + 1, ctx) for n, z_n in enumerate(result.iterates)]
            z = torch.stack(states).mean(dim=0)
        else:
            z = self.estimator.attach(result.iterates[steps - 1] if steps > 0 else z0, steps, ctx)
        if self.jac_probes and self.training and torch.is_grad_enabled():
            self.stats["jac_loss"] = jacobian_penalty(lambda s: deq.f(s, injection), result.z, self.jac_probes)
        return deq.head(z)


def _empty_result(z0: torch.Tensor) -> SolverResult:
    empty = z0.new_zeros(z0.shape[0], 0)
    none = torch.zeros(z0.shape[0], dtype=torch.bool, device=z0.device)
    zero = torch.zeros_like(none, dtype=torch.long)
    return SolverResult(z0, empty, empty, zero, none, none, [], None, zero)
