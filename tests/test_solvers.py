"""Solvers against known fixed points; per-sample stopping and batch independence."""
import pytest
import torch

from deqrobust.config import ConfigError
from deqrobust.solvers import SOLVERS, solve


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
    torch.testing.assert_close(res.iterates[0], f(torch.zeros_like(c)))        # z_1 = f(z_0)
    for b in range(5):
        n = int(res.steps[b])
        assert res.rel_trace[b, n - 1] <= tol and (n == 1 or res.rel_trace[b, n - 2] > tol)
        z_n = res.iterates[n - 1][b]
        expected = (f(res.iterates[n - 1])[b] - z_n).norm()
        torch.testing.assert_close(res.abs_trace[b, n - 1], expected)
        # Frozen after meeting the tolerance.
        torch.testing.assert_close(res.iterates[-1][b], z_n)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_results_do_not_depend_on_the_batch(name):
    f, c, _ = affine_problem(batch=6)
    full = solve({"name": name, "budget": 12, "tol": 1e-4}, f, torch.zeros_like(c))
    for b in range(6):
        one = solve({"name": name, "budget": 12, "tol": 1e-4},
                    lambda z, b=b: f(torch.zeros_like(c).index_copy(0, torch.tensor([b]), z))[b:b + 1],
                    torch.zeros_like(c[b:b + 1]))
        torch.testing.assert_close(one.z[0], full.z[b])
        assert one.steps[0] == full.steps[b]


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
    assert not res.converged.any()               # 3z + 1 diverges: never meets the tolerance
    assert (res.rel_trace[[0, 2], -1] > 0.5).all()


def test_unknown_solver_and_bad_budget_are_named():
    with pytest.raises(ConfigError, match="unknown solver 'newton'.*broyden"):
        solve({"name": "newton"}, lambda z: z, torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="budget 0"):
        solve({"name": "broyden", "budget": 0}, lambda z: z, torch.zeros(1, 2))
