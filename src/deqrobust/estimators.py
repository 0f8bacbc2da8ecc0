"""Gradient estimators of a DEQ, living in the backward pass.

An estimator turns a (detached) solver state z_n into a state with an autograd graph to
the input and the parameters. Any attack that calls ``model(x)`` and backpropagates uses
the estimator unchanged, because the estimate is produced by autograd itself: either
through an explicit unroll, or by a custom function that rewrites the incoming gradient
(implicit adjoint, Neumann series, simultaneous adjoint).

Estimators (config ``{name: ..., params}``; names are registry keys, never parsed):
- ``exact``: h(f(z)); the gradient at f(z) is replaced by the adjoint solution of
  u = J_f(z)^T u + a (backward solver), i.e. implicit differentiation.
- ``unroll`` / ``intermediate``: h(U^k(f(z))), U(z) = (1 - lam) z + lam f(z); plain
  backprop through the k + 1 weight-tied layers (phantom gradient). ``unroll`` is the
  paper's name at the final state, ``intermediate`` at a state n; both are this map.
- ``neumann``: h(f(z)); gradient a -> lam * sum_{j<k} (lam J^T + (1 - lam) I)^j a.
- ``adjoint``: the simultaneous adjoint (paper Sec. 4.1, reconstructed: the released
  code lacks it). ``variant: lockstep`` (default) advances u_{j+1} = J_f(z_j)^T u_j + a
  along the forward iterates z_0..z_{n-1}; ``variant: quasi_newton`` reuses the forward
  Broyden inverse-Jacobian estimate, u = -B_n^T a. See docs/estimators.md for why
  lockstep is the default.
- ``solver_autograd``: the true gradient of the deployed model. The forward solve keeps its
  graph (solvers.solve(differentiable=True)) and plain autograd runs back through every
  solver step, freezing and lowest-residual choice included, then through the deployed
  map: h(z_n) at state n and in the ensemble, the model's own output own(z*) at the final
  state. ``true_gradient(E)`` is the same mechanism with E's forward map: the true gradient
  of E's output, against which E's gradient is measured.

Each estimator's forward value is ``forward_map(z, ctx)`` (plain autograd from z); ``attach``
is that map with the estimator's gradient.

Which state an estimator is attached to, and how far the solver runs, is the job of
deqrobust.deq_logits; scoring every state at once is deqrobust.scoring.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ClassVar, ContextManager

import torch

from deqrobust.errors import ConfigError
from deqrobust.solvers import SolverResult, SolverSpec, solve
from deqrobust.specs import ESTIMATORS as ESTIMATOR_PARAMS
from deqrobust.specs import estimator_params

# The adjoint iterations start at u = 0, where J^T u = 0, so they skip that product: the
# backward solve of ``exact`` is given f(0) = a and the lockstep adjoint starts at u_1 = a
# (the original code, which computes it, is the test oracle tests/reference_estimators.py).


class _RewriteGrad(torch.autograd.Function):
    """Identity forward; backward applies ``rewrite`` to the incoming gradient."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, rewrite: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.rewrite = rewrite
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.rewrite(grad), None


def _vjp_at(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """u -> u^T J_f(z); the graph of f at z is built once and reused for every product.

    Called only inside backward passes, so a forward without backward pays nothing.
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_()
        fz = f(z)
    return lambda u: torch.autograd.grad(fz, z, u, retain_graph=True)[0]


@dataclass
class Context:
    """What an estimator may use: the DEQ maps at this input and the forward solve."""

    f: Callable[[torch.Tensor], torch.Tensor]  # f(., x) with graph to x and parameters
    f_detached: Callable[[torch.Tensor], torch.Tensor]  # f(., x) without graph to x (for Jacobian products)
    result: SolverResult
    z0: torch.Tensor
    backward_solver: SolverSpec
    scope: Callable[[], ContextManager] = nullcontext  # the model's weight scope, for backward passes
    own: "Estimator | None" = None  # the model's training estimator (its own output)
    stats: dict = field(default_factory=dict)  # the model's stats; exact's backward adds "backward"


@dataclass(frozen=True)
class Estimator:
    name: ClassVar[str]
    needs_iterates: ClassVar[bool] = False
    differentiable_solve: ClassVar[bool] = False  # the forward solve keeps its graph for this estimator

    def forward_map(self, z: torch.Tensor, ctx: Context) -> torch.Tensor:
        """The estimator's output state from ``z``, as plain autograd (its forward value)."""
        return ctx.f(z)

    def attach(self, z: torch.Tensor, n: int | None, ctx: Context) -> torch.Tensor:
        """State with the estimator's gradient, from detached state ``z`` (= z_n or z*)."""
        raise NotImplementedError

    def spec(self) -> dict:
        return {"name": self.name, **{k: getattr(self, k) for k in self.__dataclass_fields__}}


@dataclass(frozen=True)
class Exact(Estimator):
    name: ClassVar[str] = "exact"

    def attach(self, z, n, ctx):
        def adjoint(a: torch.Tensor) -> torch.Tensor:
            vjp = _vjp_at(ctx.f_detached, z)
            result = solve(ctx.backward_solver, lambda u: vjp(u) + a, torch.zeros_like(a), f_z0=a)  # f(0) = a
            ctx.stats["backward"] = result  # the adjoint solve's residuals (mechanism diagnostics)
            return result.z

        return _RewriteGrad.apply(self.forward_map(z, ctx), adjoint)


@dataclass(frozen=True)
class Unroll(Estimator):
    name: ClassVar[str] = "unroll"
    lam: float = 0.5
    k: int = 9

    def forward_map(self, z, ctx):
        z = ctx.f(z)
        for _ in range(self.k):
            z = (1 - self.lam) * z + self.lam * ctx.f(z)
        return z

    def attach(self, z, n, ctx):
        return self.forward_map(z, ctx)


@dataclass(frozen=True)
class Intermediate(Unroll):
    name: ClassVar[str] = "intermediate"


@dataclass(frozen=True)
class Neumann(Estimator):
    name: ClassVar[str] = "neumann"
    lam: float = 1.0
    k: int = 8

    def attach(self, z, n, ctx):
        def series(a: torch.Tensor) -> torch.Tensor:
            vjp = _vjp_at(ctx.f_detached, z)
            term, total = a, a.clone()
            for _ in range(self.k - 1):
                term = self.lam * vjp(term) + (1 - self.lam) * term
                total = total + term
            return self.lam * total

        return _RewriteGrad.apply(self.forward_map(z, ctx), series)


@dataclass(frozen=True)
class Adjoint(Estimator):
    name: ClassVar[str] = "adjoint"
    variant: str = "lockstep"
    VARIANTS: ClassVar[tuple[str, ...]] = ESTIMATOR_PARAMS["adjoint"]["variant"].choices
    needs_iterates: ClassVar[bool] = True

    def __post_init__(self):
        if self.variant not in self.VARIANTS:
            raise ConfigError(f"unknown adjoint variant {self.variant!r}; valid variants: {', '.join(self.VARIANTS)}")

    def attach(self, z, n, ctx):
        steps = ctx.result.rel_trace.shape[1] if n is None else n
        if self.variant == "lockstep":
            states = [ctx.z0] + ctx.result.iterates[: max(steps - 1, 0)]

            def lockstep(a: torch.Tensor) -> torch.Tensor:
                u = a  # u_1 = J^T 0 + a
                with ctx.scope():
                    for z_j in states[1:]:  # one Jacobian product per forward step, one graph alive at a time
                        u = _vjp_at(ctx.f_detached, z_j)(u) + a
                return u

            return _RewriteGrad.apply(self.forward_map(z, ctx), lockstep)
        if ctx.result.broyden_factors is None:
            raise ConfigError("adjoint variant 'quasi_newton' needs the broyden forward solver (solver.name: broyden)")
        U, VT = ctx.result.broyden_factors
        U, VT = U[..., :steps], VT[:, :steps]

        def quasi_newton(a: torch.Tensor) -> torch.Tensor:  # -B^T a with B = -I + U V^T
            coef = torch.bmm(a.unsqueeze(1), U)  # [B, 1, m]
            return torch.baddbmm(a.unsqueeze(1), coef, VT, alpha=-1).squeeze(1)

        return _RewriteGrad.apply(self.forward_map(z, ctx), quasi_newton)


@dataclass(frozen=True)
class SolverAutograd(Estimator):
    """Plain autograd through the solver's own iterations, then through a forward map.

    ``of=None`` (the registry's ``solver_autograd``) is the deployed model: h(z_n) at state n
    and in the ensemble, the model's own output at the final state (``ctx.own``, the
    estimator it was trained with: h(f(z*)) or h(U^k f(z*))). ``of=E`` is the true gradient
    of E's output (``true_gradient``): E's forward map on the differentiable state.
    """

    name: ClassVar[str] = "solver_autograd"
    differentiable_solve: ClassVar[bool] = True
    of: Estimator | None = None

    def attach(self, z, n, ctx):
        if self.of is not None:
            return self.of.forward_map(z, ctx)
        if n is not None:
            return z  # early exit and ensemble: h(z_n)
        if ctx.own is None:
            raise ConfigError(
                "estimator 'solver_autograd' at the final state needs the model's own estimator "
                "(DEQLogits(..., own=model_estimator(spec, training)))"
            )
        return ctx.own.forward_map(z, ctx)

    def spec(self) -> dict:
        return {"name": self.name} if self.of is None else {"name": self.name, "of": self.of.spec()}


def true_gradient(of: Estimator) -> SolverAutograd:
    """The estimator whose gradient is the true gradient of ``of``'s output: the same forward
    map (hence the same logits) on a solve that keeps its graph, differentiated by autograd."""
    inner = of.of if isinstance(of, SolverAutograd) else of
    return SolverAutograd(of=inner)


ESTIMATORS: dict[str, type[Estimator]] = {
    e.name: e for e in (Exact, Unroll, Intermediate, Neumann, Adjoint, SolverAutograd)
}


def build_estimator(spec: dict) -> Estimator:
    """Estimator from its config ``{name: ..., <params>}``, checked against deqrobust.specs
    (the description the config checks use); bad names, keys and values are named."""
    name, params = estimator_params(spec)
    return ESTIMATORS[name](**params)


def model_estimator(spec: dict, training_cfg: dict) -> Estimator:
    """The estimator a DEQ was trained with; it also defines the model's own output."""
    if spec.get("grad", "exact") == "unroll":
        return Unroll(**training_cfg.get("unroll", {}))
    return Exact()
