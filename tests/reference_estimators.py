"""Test oracle: the original code of the estimators whose product code skips work.

Both adjoint iterations start at u = 0. The product knows that J^T 0 = 0 and starts at
u_1 = a (``exact``'s backward solve is handed f(0) = a; the lockstep adjoint skips its
first Jacobian product); the original code below computes that product, and runs the
backward solve with the reference solver. The other estimators had one version only.
"""

from __future__ import annotations

import dataclasses

import torch
from reference_solvers import reference_solve

from deqrobust.estimators import Adjoint, Estimator, Exact, _RewriteGrad, _vjp_at, build_estimator


class ReferenceExact(Exact):
    def attach(self, z, n, ctx):
        def adjoint(a: torch.Tensor) -> torch.Tensor:
            vjp = _vjp_at(ctx.f_detached, z)
            return reference_solve(ctx.backward_solver, lambda u: vjp(u) + a, torch.zeros_like(a)).z

        return _RewriteGrad.apply(ctx.f(z), adjoint)


class ReferenceAdjoint(Adjoint):
    def attach(self, z, n, ctx):
        if self.variant != "lockstep":
            return super().attach(z, n, ctx)
        steps = ctx.result.rel_trace.shape[1] if n is None else n
        states = [ctx.z0] + ctx.result.iterates[: max(steps - 1, 0)]

        def lockstep(a: torch.Tensor) -> torch.Tensor:
            u = torch.zeros_like(a)
            with ctx.scope():
                for z_j in states:
                    u = _vjp_at(ctx.f_detached, z_j)(u) + a
            return u

        return _RewriteGrad.apply(ctx.f(z), lockstep)


REFERENCE = {"exact": ReferenceExact, "adjoint": ReferenceAdjoint}


def reference_estimator(spec: dict) -> Estimator:
    """The estimator of ``spec`` (validated by the product's build_estimator), original code."""
    est = build_estimator(spec)
    cls = REFERENCE.get(est.name)
    return est if cls is None else cls(**{f.name: getattr(est, f.name) for f in dataclasses.fields(est)})
