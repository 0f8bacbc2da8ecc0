"""The fast product code computes what the original code computes (docs/performance.md).

The original code of each optimised piece is a test oracle: tests/reference_solvers.py
(the solver loop and Broyden's products), tests/reference_mdeq.py (the MDEQ's forward:
no weight cache, nothing in place, NCHW state) and tests/reference_estimators.py (the
adjoint iterations with their zero first product). Outputs, input gradients and parameter
gradients are compared in float64, where only the summation order may differ, for every
estimator and state, in train mode with dropout and the Jacobian penalty, and for the
solvers' own outputs with frozen and diverging samples.
"""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from reference_estimators import reference_estimator
from reference_mdeq import ReferenceMDEQ
from reference_solvers import reference_solve

from deqrobust import deq_logits, scoring
from deqrobust.deq_logits import DEQLogits
from deqrobust.estimators import build_estimator
from deqrobust.models.mdeq import MDEQ, MDEQSize
from deqrobust.scoring import all_state_logits
from deqrobust.solvers import SOLVERS, solve

# A small custom size with dropout, to check that masks are shared the same way.
DROPPY = MDEQSize((8, 16), (4, 8), 32, 0.2, downsample=1)
# Modules whose forward solves the original code runs with the reference solver.
SOLVE_USERS = (deq_logits, scoring)

CASES = [
    ({"name": "exact"}, None),
    ({"name": "unroll", "lam": 0.5, "k": 2}, None),
    ({"name": "neumann", "lam": 0.8, "k": 3}, None),
    ({"name": "intermediate", "lam": 0.5, "k": 2}, 2),
    ({"name": "intermediate", "lam": 1.0, "k": 2}, 0),
    ({"name": "adjoint"}, 3),
    ({"name": "adjoint"}, None),
    ({"name": "adjoint", "variant": "quasi_newton"}, 2),
    ({"name": "intermediate", "lam": 1.0, "k": 1}, "ensemble"),
]
SOLVER = {"name": "broyden", "budget": 4, "tol": 1e-3}
BACKWARD = {"name": "broyden", "budget": 3, "tol": 1e-3}


@contextlib.contextmanager
def original_solver():
    """The reference solver in every forward solve (the oracle's composition, tests only)."""
    with pytest.MonkeyPatch.context() as mp:
        for module in SOLVE_USERS:
            mp.setattr(module, "solve", reference_solve)
        yield


def run(deq, spec, state, x, y, original=False, train=False, jac_probes=0):
    """Logits, input gradient, parameter gradients and solver trace of one forward + backward,
    by the product code or (``original``) by the reference code on the same parameters."""
    deq.zero_grad(set_to_none=True)
    deq.train(train)
    torch.manual_seed(7)  # dropout masks and Hutchinson probes
    with original_solver() if original else contextlib.nullcontext():
        model = DEQLogits(
            ReferenceMDEQ(deq) if original else deq,
            (reference_estimator if original else build_estimator)(spec),
            state,
            SOLVER,
            BACKWARD,
            jac_probes=jac_probes,
        )
        model.train(train)
        xx = x.clone().requires_grad_()
        logits = model(xx)
        loss = F.cross_entropy(logits, y)
        if model.stats["jac_loss"] is not None:
            loss = loss + 0.4 * model.stats["jac_loss"]
        loss.backward()
    grads = {n: p.grad.clone() for n, p in deq.named_parameters() if p.grad is not None}
    return logits.detach(), xx.grad.clone(), grads, model.stats["result"].rel_trace.clone()


def assert_same(ref, out, rtol=1e-7, atol=1e-10):
    torch.testing.assert_close(out[0], ref[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(out[1], ref[1], rtol=rtol, atol=atol)
    assert out[2].keys() == ref[2].keys()
    for name in ref[2]:
        scale = ref[2][name].abs().max().item()
        torch.testing.assert_close(out[2][name], ref[2][name], rtol=rtol, atol=atol + 1e-9 * scale, msg=name)
    torch.testing.assert_close(out[3], ref[3], rtol=1e-6, atol=1e-12)


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    deq = MDEQ("mini").double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    return deq, x, torch.tensor([1, 4, 7])


@pytest.mark.parametrize("spec,state", CASES, ids=lambda v: str(v))
def test_estimators_give_the_logits_and_gradients_of_the_original_code(mini, spec, state):
    deq, x, y = mini
    ref = run(deq, spec, state, x, y, original=True)
    assert ref[1].abs().sum() > 0 and all(torch.isfinite(g).all() for g in ref[2].values())
    assert_same(ref, run(deq, spec, state, x, y))


@pytest.mark.parametrize("jac_probes", [0, 1])
def test_training_forward_with_dropout_and_jacobian_penalty_is_unchanged(jac_probes):
    """Train mode: shared dropout masks, batch norm, Jacobian penalty (double backward)."""
    torch.manual_seed(0)
    deq = MDEQ(DROPPY).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    ref = run(deq, {"name": "exact"}, None, x, y, original=True, train=True, jac_probes=jac_probes)
    out = run(deq, {"name": "exact"}, None, x, y, train=True, jac_probes=jac_probes)
    assert_same(ref, out)
    assert any(g.abs().sum() > 0 for n, g in out[2].items() if "original" in n)  # weight-norm g and v get gradients


def test_weights_cached_without_grad_never_reach_a_differentiated_f():
    """One scope holds a no-grad solve and a differentiated f: the weight-norm parameters
    must still receive their gradients (a no-grad cached weight would cut them off)."""
    torch.manual_seed(0)
    deq = MDEQ("mini").double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with deq.cached_weights():
        inj = deq.prepare(x)
        with torch.no_grad():
            z = deq.f(deq.init_state(x), inj)
        deq.head(deq.f(z, inj)).sum().backward()
    grads = [p.grad for n, p in deq.named_parameters() if "parametrizations" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.fixture(scope="module")
def tiny():
    """tiny keeps its state channels-last (mini does not): the permuted layout is checked here."""
    torch.manual_seed(0)
    deq = MDEQ("tiny").double().eval()
    assert deq.channels_last()
    return deq, torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([3, 5])


def test_channels_last_state_is_a_permutation_of_the_reference_state(tiny):
    deq, x, _ = tiny
    ref = ReferenceMDEQ(deq)
    with torch.no_grad():
        inj = ref.prepare(x)
        branches = ref.split(ref.f(ref.f(ref.init_state(x), inj), inj))
        inj = deq.prepare(x)
        z = deq.f(deq.f(deq.init_state(x), inj), inj)
        split = deq.split(z)
        torch.testing.assert_close(deq.join(split), z, rtol=0, atol=0)  # split/join round trip
        assert all(s.stride(1) == 1 and s.stride(3) == s.shape[1] for s in split)  # NHWC: channels innermost
    for a, b in zip(split, branches):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("spec,state", [CASES[0], CASES[3], CASES[5]], ids=lambda v: str(v))
def test_channels_last_model_gives_the_logits_and_gradients_of_the_original_code(tiny, spec, state):
    deq, x, y = tiny
    assert_same(run(deq, spec, state, x, y, original=True), run(deq, spec, state, x, y))


def test_all_state_logits_are_unchanged(mini):
    deq, x, _ = mini
    deq.eval()
    with original_solver():
        ref = all_state_logits(ReferenceMDEQ(deq), x, SOLVER, reference_estimator({"name": "exact"}))
    out = all_state_logits(deq, x, SOLVER, build_estimator({"name": "exact"}))
    assert out.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=1e-7, atol=1e-10)


def affine_problem(batch=6, dim=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a = (
        torch.linspace(0.2, 0.95, batch, dtype=torch.float64)[:, None, None]
        * a
        / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    )
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return lambda z: torch.einsum("bij,bj->bi", a, z) + c, c


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("poison", [False, True])
def test_solver_outputs_are_unchanged_with_frozen_and_diverging_samples(name, poison):
    """Samples converge at different steps (some frozen, some active) and one may diverge."""
    f, c = affine_problem()
    if poison:
        g = f
        f = lambda z: g(z) * torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0], dtype=torch.float64)[:, None]
    spec = {"name": name, "budget": 25, "tol": 1e-6}
    ref = reference_solve(spec, f, torch.zeros_like(c), keep_iterates=True)
    new = solve(spec, f, torch.zeros_like(c), keep_iterates=True)
    assert ref.steps.unique().numel() > 1  # samples stop at different steps: frozen beside active
    for field in ("z", "rel_trace", "abs_trace"):
        torch.testing.assert_close(getattr(new, field), getattr(ref, field), rtol=1e-9, atol=1e-12, equal_nan=True)
    for field in ("steps", "converged", "diverged", "best_step"):
        assert torch.equal(getattr(new, field), getattr(ref, field)), field
    for a, b in zip(new.iterates, ref.iterates):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if name == "broyden":
        for a, b in zip(new.broyden_factors, ref.broyden_factors):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not poison or (bool(ref.diverged[2]) and math.isfinite(float(ref.z[2].sum())))
