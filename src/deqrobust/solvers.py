"""Fixed-point solvers with per-sample stopping, residual traces and iterates.

Every solver is ``solve(spec, f, z0, keep_iterates) -> SolverResult`` on flat states of
shape (batch, dim); ``spec`` is a ``SolverSpec`` (its settings parsed once, the schema's
defaults filled). The step rule of each solver is a small class; the loop, bookkeeping
and divergence handling are shared. Two settings change what the loop computes:

- ``coupling`` (spec key): ``sample`` (default) decides per sample: each sample's relative
  residual, stop and lowest-residual iterate are its own, a sample that meets the tolerance
  is frozen (its later iterates repeat), and a result never depends on which other images
  share the batch. ``batch`` is the authors' rule: one relative residual over the whole
  batch (Frobenius norms), every sample iterates until that residual meets the tolerance,
  and the returned iterate is the step with the lowest batch residual.
- ``differentiable`` (argument): the solve keeps its autograd graph (through every step
  rule, the freezing and the lowest-residual selection), so backpropagating through the
  returned state gives the gradient of what the solver actually computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from deqrobust.errors import ConfigError
from deqrobust.schema import schema
from deqrobust.vocab import BATCH, check_coupling

Map = Callable[[torch.Tensor], torch.Tensor]
TINY = 1e-12
# The original, slower code of the loop and of Broyden's products is the test oracle
# tests/reference_solvers.py; docs/performance.md says what each change bought.


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor, all_true: bool | None = None) -> torch.Tensor:
    """torch.where(mask[:, None], a, b) row-wise; free when the mask is uniform (the common case)."""
    if all_true is None:
        all_true = bool(mask.all())
    if all_true:
        return a
    if not bool(mask.any()):
        return b
    return torch.where(mask[:, None] if a.dim() == 2 else mask, a, b)


@dataclass
class SolverResult:
    z: torch.Tensor  # per-sample lowest-residual iterate (z*)
    rel_trace: torch.Tensor  # [B, N] ||f(z_n) - z_n|| / ||f(z_n)||
    abs_trace: torch.Tensor  # [B, N] ||f(z_n) - z_n||
    steps: torch.Tensor  # [B] first step meeting the tolerance (N if never)
    converged: torch.Tensor  # [B] bool
    diverged: torch.Tensor  # [B] bool, a non-finite residual was met
    iterates: list[torch.Tensor] | None = None  # z_1..z_N when asked
    broyden_factors: tuple[torch.Tensor, torch.Tensor] | None = None  # (U [B,D,m], VT [B,m,D])
    best_step: torch.Tensor | None = None  # [B] step n (1..N) of the returned iterate z = z_n

    @property
    def final_rel(self) -> torch.Tensor:
        """Relative residual of the returned estimate, per sample (under batch coupling the
        batch's lowest step, not each sample's)."""
        return self.rel_trace.gather(1, (self.best_step - 1)[:, None]).squeeze(1)


class FixedPointIteration:
    """z_{n+1} = f(z_n)."""

    def __init__(self, z0: torch.Tensor, budget: int):
        del z0, budget

    def propose(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return z + g

    def observe(self, z, g, z_next, g_next, active) -> None:
        del z, g, z_next, g_next, active


class Broyden:
    """Broyden's good method on g(z) = f(z) - z, one low-rank inverse Jacobian per sample.

    The inverse Jacobian estimate is B = -I + U V^T (so the first step is z_1 = f(z_0)),
    stored per sample; the quasi-Newton adjoint estimator reuses it.
    """

    def __init__(self, z0: torch.Tensor, budget: int):
        b, d = z0.shape
        # U is stored transposed, as [B, m, D], and both low-rank products are row-vector
        # times matrix batched products: einsums over [B, D, m] run as slow batched GEMVs.
        # Uninitialised: only the filled rows are ever read.
        self.keep_graph = torch.is_grad_enabled()
        if not self.keep_graph:
            self.U = z0.new_empty(b, budget, d)
            self.VT = torch.empty_like(self.U)
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rank, self.capacity = 0, budget

    def _blocks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The low-rank part as (U^T, V^T) blocks of shape [B, m, D]: the filled rows of the
        buffers, or, in a solve that keeps its graph, one block per update (autograd then
        saves each row once, instead of a growing copy of the factors at every step)."""
        if self.keep_graph:
            return self.updates
        return [(self.U[:, : self.rank], self.VT[:, : self.rank])] if self.rank else []

    @staticmethod
    def _minus_plus_low_rank(x: torch.Tensor, blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """-x + sum over blocks of (x A^T) C, for blocks (A, C) of shape [B, m, D]."""
        out = -x
        for a, c in blocks:
            coef = torch.bmm(x.unsqueeze(1), a.transpose(1, 2))  # [B, 1, m]: row times matrix, not bmm(A, x)
            out = torch.baddbmm(out.unsqueeze(1), coef, c).squeeze(1)
        return out

    def _matvec(self, x: torch.Tensor) -> torch.Tensor:  # B x
        return self._minus_plus_low_rank(x, [(VT, UT) for UT, VT in self._blocks()])

    def _rmatvec(self, x: torch.Tensor) -> torch.Tensor:  # x^T B
        return self._minus_plus_low_rank(x, self._blocks())

    def propose(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return z - self._matvec(g)

    def observe(self, z, g, z_next, g_next, active) -> None:
        if self.rank >= self.capacity:
            return
        dz, dg = z_next - z, g_next - g
        vT = self._rmatvec(dz)
        denom = (vT * dg).sum(dim=1, keepdim=True)
        ok = active[:, None] & (denom.abs() > TINY) & torch.isfinite(denom)
        u = torch.where(ok, (dz - self._matvec(dg)) / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        vT = torch.where(ok, vT, 0.0)
        if self.keep_graph:  # an in-place write would change rows that autograd saved
            self.updates.append((u.unsqueeze(1), vT.unsqueeze(1)))
        else:
            self.U[:, self.rank], self.VT[:, self.rank] = u, vT
        self.rank += 1

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U [B, D, m], VT [B, m, D]); U is a transposed view."""
        if self.keep_graph:
            UT, VT = (torch.cat(rows, dim=1) for rows in zip(*self.updates))
        else:
            UT, VT = self.U[:, : self.rank], self.VT[:, : self.rank]
        return UT.transpose(1, 2), VT


class Anderson:
    """Anderson acceleration (memory m, mixing beta) with a per-sample least-squares fit."""

    def __init__(self, z0: torch.Tensor, budget: int, memory: int = 5, beta: float = 1.0, reg: float = 1e-4):
        del budget
        self.memory, self.beta, self.reg = memory, beta, reg
        self.X: list[torch.Tensor] = []
        self.F: list[torch.Tensor] = []

    def propose(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        self.X = (self.X + [z])[-self.memory :]
        self.F = (self.F + [z + g])[-self.memory :]
        if len(self.X) == 1:
            return z + g
        X, F = torch.stack(self.X, 1), torch.stack(self.F, 1)  # [B, m, D]
        G = F - X
        m = G.shape[1]
        gram = torch.bmm(G, G.transpose(1, 2))
        gram = gram + self.reg * torch.eye(m, dtype=z.dtype, device=z.device)
        ones = torch.ones(z.shape[0], m, 1, dtype=z.dtype, device=z.device)
        w = torch.linalg.solve(gram, ones)  # minimise ||sum a G|| s.t. sum a = 1
        alpha = (w / w.sum(dim=1, keepdim=True)).squeeze(-1)
        mixed_f = torch.einsum("bm,bmd->bd", alpha, F)
        mixed_x = torch.einsum("bm,bmd->bd", alpha, X)
        return self.beta * mixed_f + (1 - self.beta) * mixed_x

    def observe(self, z, g, z_next, g_next, active) -> None:
        del z, g, z_next, g_next, active


SOLVERS = {"broyden": Broyden, "anderson": Anderson, "fixed_point": FixedPointIteration}


@dataclass(frozen=True)
class SolverSpec:
    """A fixed-point solver's settings, parsed once where they enter (the config, a caller's
    mapping); the schema's ``definitions.solver`` holds their meaning and defaults."""

    name: str
    budget: int
    tol: float
    coupling: str

    @classmethod
    def parse(cls, value: SolverSpec | Mapping | None, key: str = "solver") -> SolverSpec:
        """``value`` as a SolverSpec (a SolverSpec is returned as it is): missing keys take the
        schema's defaults; an unknown key or solver, a budget below 1 or an unknown coupling is a
        ConfigError naming what is valid."""
        if isinstance(value, SolverSpec):
            return value
        given = dict(value or {})
        valid = [f.name for f in fields(cls)]
        if unknown := sorted(set(given) - set(valid)):
            raise ConfigError(f"{key}: unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(valid)}")
        merged = {**SOLVER_DEFAULTS, **given}
        if merged["name"] not in SOLVERS:
            raise ConfigError(f"unknown solver {merged['name']!r}; valid solvers: {', '.join(SOLVERS)}")
        budget = int(merged["budget"])
        if budget < 1:
            raise ConfigError(f"solver budget {budget} must be at least 1")
        return cls(merged["name"], budget, float(merged["tol"]), check_coupling(merged["coupling"], f"{key} coupling"))

    @property
    def coupled(self) -> bool:
        """The authors' batch-coupled decisions (coupling ``batch``)."""
        return self.coupling == BATCH

    def with_budget(self, budget: int) -> SolverSpec:
        return replace(self, budget=budget)


SOLVER_DEFAULTS = {key: entry["default"] for key, entry in schema()["definitions"]["solver"]["properties"].items()}
BACKWARD_DEFAULT = SolverSpec.parse(schema()["properties"]["backward_solver"]["default"], "backward_solver")


def solvers_of(cfg: Mapping) -> tuple[SolverSpec, SolverSpec]:
    """A config's forward (``solver``) and backward (``backward_solver``) solver."""
    return SolverSpec.parse(cfg["solver"]), SolverSpec.parse(cfg["backward_solver"], "backward_solver")


def solve(
    spec: SolverSpec | Mapping,
    f: Map,
    z0: torch.Tensor,
    keep_iterates: bool = False,
    f_z0: torch.Tensor | None = None,
    differentiable: bool = False,
) -> SolverResult:
    """Run the solver of ``spec`` (a SolverSpec, or a mapping parsed into one) from ``z0`` on ``f``.

    When every sample has stopped early the loop ends; traces and iterates are padded
    with the frozen values so their shapes never depend on the batch. ``f_z0`` is f(z0)
    when the caller already knows it (saves one application of f). ``differentiable``
    keeps the graph from ``f`` (and ``z0``) to the returned state and iterates; otherwise
    the solve runs without one. Traces and decisions never carry a graph.
    """
    with torch.set_grad_enabled(differentiable):
        return _solve(SolverSpec.parse(spec), f, z0, keep_iterates, f_z0)


def _solve(spec: SolverSpec, f: Map, z0: torch.Tensor, keep_iterates: bool, f_z0: torch.Tensor | None) -> SolverResult:
    budget, tol, coupled = spec.budget, spec.tol, spec.coupled
    rule = SOLVERS[spec.name](z0, budget)
    batch = z0.shape[0]
    z = z0
    g = (f(z0) if f_z0 is None else f_z0) - z0
    best_z = z0.clone()
    best_rel = torch.full((batch,), float("inf"), device=z0.device, dtype=z0.dtype)  # of the stop rule's residual
    best_step = torch.zeros(batch, dtype=torch.long, device=z0.device)
    active = torch.ones(batch, dtype=torch.bool, device=z0.device)
    converged = torch.zeros_like(active)
    diverged = torch.zeros_like(active)
    steps = torch.full((batch,), budget, dtype=torch.long, device=z0.device)
    rel_trace = z0.new_full((batch, budget), float("inf"))
    abs_trace = z0.new_full((batch, budget), float("inf"))
    iterates: list[torch.Tensor] = []
    for n in range(budget):
        all_active = bool(active.all())
        z_next = _select(active, rule.propose(z, g), z, all_active)
        g_next = _select(active, f(z_next) - z_next, g, all_active)
        abs_res = g_next.detach().norm(dim=1)
        rel_res = abs_res / ((g_next + z_next).detach().norm(dim=1) + TINY)
        bad = active & ~torch.isfinite(rel_res)  # a non-finite entry of z_next always makes rel_res non-finite
        diverged |= bad
        # A diverging sample stops at its last finite state; its residual this step is inf.
        if bool(bad.any()):
            z_next = torch.where(bad[:, None], z, z_next)
            g_next = torch.where(bad[:, None], g, g_next)
            rel_res = torch.where(bad, float("inf"), rel_res)
            abs_res = torch.where(bad, float("inf"), abs_res)
        rule.observe(z, g, z_next, g_next, active & ~bad)
        # The residual the stop rule and the lowest-residual choice read: each sample's own, or
        # the whole batch's (a diverged sample counts with its last finite state).
        score = _batch_residual(g_next, z_next).expand(batch) if coupled else rel_res
        improved = score < best_rel
        best_z = _select(improved, z_next, best_z)
        best_rel = torch.where(improved, score, best_rel)
        best_step = torch.where(improved, n + 1, best_step)
        rel_trace[:, n], abs_trace[:, n] = rel_res, abs_res
        met = active & ~bad & (score <= tol)
        converged |= met
        steps = torch.where(met, n + 1, steps)
        active = active & ~(met | bad)  # not in place: torch.where saved the old mask for backward
        z, g = z_next, g_next
        iterates.append(z)
        if not active.any():
            break
    done = len(iterates)
    if done < budget:
        rel_trace[:, done:] = rel_trace[:, done - 1 : done]
        abs_trace[:, done:] = abs_trace[:, done - 1 : done]
        iterates += [z] * (budget - done)
    factors = rule.factors() if isinstance(rule, Broyden) else None
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


def _batch_residual(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The authors' relative residual: ||f(Z) - Z|| / ||f(Z)|| over the whole batch Z."""
    g = g.detach()
    return g.norm() / ((g + z.detach()).norm() + TINY)
