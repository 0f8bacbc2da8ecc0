"""Solvers against known fixed points; per-sample stopping and batch independence; the
authors' whole-batch rule (coupling: batch); solves that keep their graph."""

import pytest
import torch

from deqrobust.errors import ConfigError
from deqrobust.solvers import BACKWARD_DEFAULT, SOLVERS, SolverSpec, solve


def affine_problem(batch=5, dim=16, seed=0):
    """Per-sample contractive affine maps z -> A_b z + c_b with known fixed points."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a = 0.6 * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    fixed = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, c)
    return (lambda z: torch.einsum("bij,bj->bi", a, z) + c), c, fixed


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_finds_known_fixed_point_per_sample(name):
    f, c, fixed = affine_problem()
    tol = 1e-8
    res = solve({"name": name, "budget": 60, "tol": tol}, f, torch.zeros_like(c), keep_iterates=True)
    assert res.converged.all() and not res.diverged.any()
    rel_err = (res.z - fixed).norm(dim=1) / fixed.norm(dim=1)
    assert (rel_err < 1e-6).all()
    # Promised outputs: every iterate, per-sample traces consistent with the iterates.
    assert len(res.iterates) == 60 and res.rel_trace.shape == (5, 60) == res.abs_trace.shape
    torch.testing.assert_close(res.iterates[0], f(torch.zeros_like(c)))  # z_1 = f(z_0)
    for b in range(5):
        n = int(res.steps[b])
        assert res.rel_trace[b, n - 1] <= tol and (n == 1 or res.rel_trace[b, n - 2] > tol)
        z_n = res.iterates[n - 1][b]
        expected = (f(res.iterates[n - 1])[b] - z_n).norm()
        torch.testing.assert_close(res.abs_trace[b, n - 1], expected)
        # Frozen after meeting the tolerance.
        torch.testing.assert_close(res.iterates[-1][b], z_n)


def solved_alone(spec, f, c, b):
    """Sample b of the affine problem solved in a batch of one."""
    return solve(
        spec,
        lambda z: f(torch.zeros_like(c).index_copy(0, torch.tensor([b]), z))[b : b + 1],
        torch.zeros_like(c[b : b + 1]),
    )


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_results_do_not_depend_on_the_batch(name):
    f, c, _ = affine_problem(batch=6)
    spec = {"name": name, "budget": 12, "tol": 1e-4}
    full = solve(spec, f, torch.zeros_like(c))
    assert full.steps.unique().numel() > 1  # samples stop at different steps
    for b in range(6):
        one = solved_alone(spec, f, c, b)
        torch.testing.assert_close(one.z[0], full.z[b])
        assert one.steps[0] == full.steps[b] and one.best_step[0] == full.best_step[b]


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_coupling_is_the_authors_whole_batch_rule(name):
    """One relative residual ||f(Z) - Z|| / ||f(Z)|| over the batch, recomputed here from the
    iterates: every sample iterates until it meets tol, and all return the step where it was
    lowest; so a sample solved alone stops elsewhere and returns another iterate."""
    f, c, _ = affine_problem(batch=6)
    spec = {"name": name, "budget": 12, "tol": 1e-4, "coupling": "batch"}
    res = solve(spec, f, torch.zeros_like(c), keep_iterates=True)
    batch_rel = torch.stack([(f(z) - z).norm() / f(z).norm() for z in res.iterates])
    stop = int((batch_rel <= 1e-4).nonzero()[0]) + 1
    assert (res.steps == stop).all() and res.converged.all()
    best = int(batch_rel[:stop].argmin()) + 1
    assert (res.best_step == best).all()
    torch.testing.assert_close(res.z, res.iterates[best - 1], rtol=0, atol=0)
    moved = [(res.iterates[n] - res.iterates[n - 1]).norm(dim=1) for n in range(1, stop)]
    assert all((m > 0).all() for m in moved)  # nobody is frozen before the batch stops
    alone = [solved_alone(spec, f, c, b) for b in range(6)]
    assert any(int(one.steps[0]) != stop for one in alone)
    assert any(not torch.allclose(one.z[0], res.z[b], rtol=0, atol=1e-12) for b, one in enumerate(alone))


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("coupling", ["sample", "batch"])
def test_a_solve_that_keeps_its_graph_computes_the_same_numbers(name, coupling):
    """differentiable=True changes what is stored (Broyden's factors row by row, graphs), not
    what is computed; every returned iterate carries the graph to the map's parameters."""
    f, c, _ = affine_problem(batch=6)
    c = c.clone().requires_grad_()
    g = lambda z: f(z) - f(torch.zeros_like(z)) + c  # the same map, with a graph to c
    spec = {"name": name, "budget": 12, "tol": 1e-4, "coupling": coupling}
    plain = solve(spec, g, torch.zeros_like(c), keep_iterates=True)
    kept = solve(spec, g, torch.zeros_like(c), keep_iterates=True, differentiable=True)
    assert not plain.z.requires_grad and kept.z.requires_grad and all(z.requires_grad for z in kept.iterates)
    torch.testing.assert_close(kept.z, plain.z, rtol=1e-12, atol=1e-14)
    for field in ("steps", "best_step", "converged"):
        assert torch.equal(getattr(kept, field), getattr(plain, field)), field
    assert not kept.rel_trace.requires_grad
    if name == "broyden":
        for a, b in zip(kept.broyden_factors, plain.broyden_factors):  # late rows divide by small secants
            torch.testing.assert_close(a, b, rtol=1e-8, atol=0)


def test_broyden_beats_plain_iteration_on_a_slow_contraction():
    dim = 10
    a = 0.95 * torch.eye(dim, dtype=torch.float64)
    c = torch.ones(1, dim, dtype=torch.float64)
    f = lambda z: z @ a.T + c
    broyden = solve({"name": "broyden", "budget": 10, "tol": 1e-6}, f, torch.zeros_like(c))
    plain = solve({"name": "fixed_point", "budget": 10, "tol": 1e-6}, f, torch.zeros_like(c))
    assert broyden.converged.all() and not plain.converged.any()


def test_divergence_and_nan_are_reported_not_returned():
    c = torch.ones(3, 4, dtype=torch.float64)
    f = lambda z: 3.0 * z + c * torch.tensor([[1.0], [float("nan")], [1.0]], dtype=torch.float64)
    res = solve({"name": "fixed_point", "budget": 6, "tol": 1e-6}, f, torch.zeros_like(c))
    assert res.diverged[1] and not res.converged[1]
    assert torch.isfinite(res.z).all()
    assert not res.converged.any()  # 3z + 1 diverges: never meets the tolerance
    assert (res.rel_trace[[0, 2], -1] > 0.5).all()


def test_final_rel_is_the_residual_of_the_returned_iterate():
    f, c, _ = affine_problem(batch=6)
    for coupling in ("sample", "batch"):
        res = solve(
            {"name": "anderson", "budget": 10, "tol": 0.0, "coupling": coupling},
            f,
            torch.zeros_like(c),
            keep_iterates=True,
        )
        z = res.iterates
        own = torch.stack(
            [
                (f(z[int(n) - 1])[b] - z[int(n) - 1][b]).norm() / f(z[int(n) - 1])[b].norm()
                for b, n in enumerate(res.best_step)
            ]
        )
        torch.testing.assert_close(res.final_rel, own)


def test_unknown_solver_and_bad_budget_are_named():
    with pytest.raises(ConfigError, match="unknown solver 'newton'.*broyden"):
        solve({"name": "newton"}, lambda z: z, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="budget 0"):
        solve({"name": "broyden", "budget": 0}, lambda z: z, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="coupling 'sideways' is not valid; choose one of sample, batch"):
        solve({"name": "broyden", "coupling": "sideways"}, lambda z: z, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="unknown setting.*tolerance; valid settings: name, budget, tol, coupling"):
        solve({"tolerance": 1e-3}, lambda z: z, torch.zeros(1, 2))


def test_a_solver_spec_takes_the_schemas_defaults_once():
    """Missing keys come from the schema (forward: its solver definition; backward: the backward
    section's default on top), a parsed spec parses to itself, and DEQLogits uses the same defaults."""
    from deqrobust.deq_logits import DEQLogits
    from deqrobust.estimators import Exact
    from deqrobust.schema import schema

    definition = schema()["definitions"]["solver"]["properties"]
    forward = SolverSpec.parse(None)
    assert [getattr(forward, key) for key in definition] == [definition[key]["default"] for key in definition]
    assert BACKWARD_DEFAULT.budget == schema()["properties"]["backward_solver"]["default"]["budget"]
    assert SolverSpec.parse(forward) is forward and forward.with_budget(3).budget == 3 and forward.budget != 3
    model = DEQLogits(torch.nn.Identity(), Exact(), "final")
    assert model.solver == forward and model.backward_solver == BACKWARD_DEFAULT
    assert DEQLogits(torch.nn.Identity(), Exact(), 2, {"budget": 2, "coupling": "batch"}).solver.coupled
