"""Test oracle: the original, straightforward code of deqrobust.solvers.

The product loop skips per-sample selections when every sample takes the same branch,
drops a redundant finiteness scan and stores Broyden's U transposed so that its low-rank
products are row-times-matrix batched products. This module keeps the first version of
both (every selection done, einsum products over [B, D, m], zero-initialised factors);
tests/test_speed_equivalence.py checks that the product computes the same numbers.
Anderson and plain iteration had no faster version: they are the product's classes.
"""

from __future__ import annotations

import torch

from deqrobust.solvers import TINY, Anderson, FixedPointIteration, Map, SolverResult, SolverSpec


class ReferenceBroyden:
    """Broyden's good method, B = -I + U V^T with U stored as [B, D, m]."""

    def __init__(self, z0: torch.Tensor, budget: int):
        b, d = z0.shape
        self.U = z0.new_zeros(b, d, budget)
        self.VT = z0.new_zeros(b, budget, d)
        self.rank = 0

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:  # B x
        U, VT = self.U[..., : self.rank], self.VT[:, : self.rank]
        return -x + torch.einsum("bdm,bm->bd", U, torch.einsum("bmd,bd->bm", VT, x))

    def _rmatvec(self, x: torch.Tensor) -> torch.Tensor:  # x^T B
        U, VT = self.U[..., : self.rank], self.VT[:, : self.rank]
        return -x + torch.einsum("bm,bmd->bd", torch.einsum("bd,bdm->bm", x, U), VT)

    def propose(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return z - self._matvec(g)

    def observe(self, z, g, z_next, g_next, active) -> None:
        if self.rank >= self.U.shape[-1]:
            return
        dz, dg = z_next - z, g_next - g
        vT = self._rmatvec(dz)
        denom = (vT * dg).sum(dim=1, keepdim=True)
        ok = active[:, None] & (denom.abs() > TINY) & torch.isfinite(denom)
        self.U[..., self.rank] = torch.where(
            ok, (dz - self._matvec(dg)) / torch.where(ok, denom, torch.ones_like(denom)), 0.0
        )
        self.VT[:, self.rank] = torch.where(ok, vT, 0.0)
        self.rank += 1

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.U[..., : self.rank], self.VT[:, : self.rank]


REFERENCE_SOLVERS = {"broyden": ReferenceBroyden, "anderson": Anderson, "fixed_point": FixedPointIteration}


@torch.no_grad()
def reference_solve(
    spec: SolverSpec | dict,
    f: Map,
    z0: torch.Tensor,
    keep_iterates: bool = False,
    f_z0: torch.Tensor | None = None,
    differentiable: bool = False,
) -> SolverResult:
    """deqrobust.solvers.solve as first written: every per-sample selection is a torch.where
    (per-sample coupling, no graph: the settings the original code had)."""
    parsed = SolverSpec.parse(spec)
    assert not differentiable and parsed.coupling == "sample", "the oracle predates these settings"
    name, budget, tol = parsed.name, parsed.budget, parsed.tol
    rule = REFERENCE_SOLVERS[name](z0, budget)
    batch = z0.shape[0]
    z = z0
    g = (f(z0) if f_z0 is None else f_z0) - z0
    best_z = z0.clone()
    best_rel = torch.full((batch,), float("inf"), device=z0.device, dtype=z0.dtype)
    best_step = torch.zeros(batch, dtype=torch.long, device=z0.device)
    active = torch.ones(batch, dtype=torch.bool, device=z0.device)
    converged = torch.zeros_like(active)
    diverged = torch.zeros_like(active)
    steps = torch.full((batch,), budget, dtype=torch.long, device=z0.device)
    rel_trace = z0.new_full((batch, budget), float("inf"))
    abs_trace = z0.new_full((batch, budget), float("inf"))
    iterates: list[torch.Tensor] = []
    for n in range(budget):
        z_next = torch.where(active[:, None], rule.propose(z, g), z)
        g_next = torch.where(active[:, None], f(z_next) - z_next, g)
        abs_res = g_next.norm(dim=1)
        rel_res = abs_res / ((g_next + z_next).norm(dim=1) + TINY)
        bad = active & ~(torch.isfinite(rel_res) & torch.isfinite(z_next).all(dim=1))
        diverged |= bad
        z_next = torch.where(bad[:, None], z, z_next)
        g_next = torch.where(bad[:, None], g, g_next)
        rel_res = torch.where(bad, float("inf"), rel_res)
        abs_res = torch.where(bad, float("inf"), abs_res)
        rule.observe(z, g, z_next, g_next, active & ~bad)
        improved = rel_res < best_rel
        best_z = torch.where(improved[:, None], z_next, best_z)
        best_rel = torch.where(improved, rel_res, best_rel)
        best_step = torch.where(improved, n + 1, best_step)
        rel_trace[:, n], abs_trace[:, n] = rel_res, abs_res
        met = active & ~bad & (rel_res <= tol)
        converged |= met
        steps = torch.where(met, n + 1, steps)
        active &= ~(met | bad)
        z, g = z_next, g_next
        iterates.append(z)
        if not active.any():
            break
    done = len(iterates)
    if done < budget:
        rel_trace[:, done:] = rel_trace[:, done - 1 : done]
        abs_trace[:, done:] = abs_trace[:, done - 1 : done]
        iterates += [z] * (budget - done)
    factors = rule.factors() if isinstance(rule, ReferenceBroyden) else None
    return SolverResult(
        best_z,
        rel_trace,
        abs_trace,
        steps,
        converged,
        diverged,
        iterates if keep_iterates else None,
        factors,
        best_step,
    )
