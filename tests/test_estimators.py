"""Gradient estimators against finite differences, explicit unrolls and each other."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from toy_deq import ToyDEQ

from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import build_estimator
from deqrobust.models.mdeq import MDEQ

SOLVER = {"name": "broyden", "budget": 40, "tol": 1e-10}
BACKWARD = {"name": "broyden", "budget": 40, "tol": 1e-10}


def input_grad(model, x, y):
    x = x.clone().requires_grad_()
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def cosine(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture
def toy():
    torch.manual_seed(0)
    deq = ToyDEQ()
    x = torch.randn(3, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    return deq, x, y


def logits_of(deq, spec, state=None):
    return DEQLogits(deq, build_estimator(spec), state, SOLVER, BACKWARD)


def test_exact_gradient_matches_central_finite_differences(toy):
    deq, x, y = toy
    model = logits_of(deq, {"name": "exact"})
    grad = input_grad(model, x, y)
    eps = 1e-6
    numeric = torch.zeros_like(x)
    for idx in itertools.product(*(range(n) for n in x.shape)):
        step = torch.zeros_like(x)
        step[idx] = eps
        with torch.no_grad():
            up = F.cross_entropy(model(x + step), y)
            down = F.cross_entropy(model(x - step), y)
        numeric[idx] = (up - down) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)


def test_exact_gradient_matches_autograd_through_a_long_unroll(toy):
    deq, x, y = toy
    exact = input_grad(logits_of(deq, {"name": "exact"}), x, y)
    xx = x.clone().requires_grad_()
    inj = deq.prepare(xx)
    z = deq.init_state(xx)
    for _ in range(80):
        z = deq.f(z, inj)
    (unrolled,) = torch.autograd.grad(F.cross_entropy(deq.head(z), y), xx)
    torch.testing.assert_close(exact, unrolled, rtol=1e-6, atol=1e-10)


def test_exact_parameter_gradients_match_long_unroll(toy):
    deq, x, y = toy
    F.cross_entropy(logits_of(deq, {"name": "exact"})(x), y).backward()
    exact = [p.grad.clone() for p in deq.parameters()]
    deq.zero_grad()
    inj, z = deq.prepare(x), deq.init_state(x)
    for _ in range(80):
        z = deq.f(z, inj)
    F.cross_entropy(deq.head(z), y).backward()
    for a, b in zip(exact, (p.grad for p in deq.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("lam,k", [(0.5, 3), (1.0, 4)])
def test_unroll_equals_autograd_through_the_same_unroll(toy, lam, k):
    deq, x, y = toy
    est = input_grad(logits_of(deq, {"name": "unroll", "lam": lam, "k": k}), x, y)
    xx = x.clone().requires_grad_()
    inj = deq.prepare(xx)
    with torch.no_grad():
        from deqrobust.solvers import solve

        z_star = solve(SOLVER, lambda z: deq.f(z, inj), deq.init_state(x)).z
    z = deq.f(z_star, inj)
    for _ in range(k):
        z = (1 - lam) * z + lam * deq.f(z, inj)
    (ref,) = torch.autograd.grad(F.cross_entropy(deq.head(z), y), xx)
    torch.testing.assert_close(est, ref)


@pytest.mark.parametrize("state", [1, 3, 5])
def test_intermediate_at_state_n_equals_autograd_through_its_explicit_unroll(toy, state):
    deq, x, y = toy
    solver = {"name": "fixed_point", "budget": 8, "tol": 0.0}
    model = DEQLogits(deq, build_estimator({"name": "intermediate", "lam": 0.5, "k": 2}), state, solver)
    est = input_grad(model, x, y)
    xx = x.clone().requires_grad_()
    inj = deq.prepare(xx)
    z_n = deq.init_state(x)
    with torch.no_grad():  # z_n is held constant (detached)
        for _ in range(state):
            z_n = deq.f(z_n, inj)
    z = deq.f(z_n, inj)
    for _ in range(2):
        z = 0.5 * z + 0.5 * deq.f(z, inj)
    (ref,) = torch.autograd.grad(F.cross_entropy(deq.head(z), y), xx)
    torch.testing.assert_close(est, ref)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "adjoint", "variant": "lockstep"},
        {"name": "neumann", "lam": 1.0, "k": 60},
        {"name": "neumann", "lam": 0.7, "k": 80},
        {"name": "unroll", "lam": 0.5, "k": 60},
    ],
)
def test_estimators_agree_with_exact_where_the_solver_has_converged(toy, spec):
    deq, x, y = toy
    exact = input_grad(logits_of(deq, {"name": "exact"}), x, y)
    other = input_grad(logits_of(deq, spec, state=None if spec["name"] != "adjoint" else 40), x, y)
    assert cosine(exact, other) > 0.99


def test_quasi_newton_adjoint_is_exact_for_a_scalar_state():
    """Broyden's secant update makes B exact in one dimension, so -B^T a is the adjoint."""
    deq = ToyDEQ(dim=1, inputs=3, classes=2)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 0, 1])
    exact = input_grad(logits_of(deq, {"name": "exact"}), x, y)
    qn = input_grad(logits_of(deq, {"name": "adjoint", "variant": "quasi_newton"}, state=6), x, y)
    assert cosine(exact, qn) > 0.99


def test_ensemble_weights_states_equally(toy):
    """h(mean of the N estimator states): each state's path gets weight 1/N."""
    deq = ToyDEQ(contraction=0.9)  # slow enough for the states to differ
    x, y = toy[1], toy[2]
    budget = 4
    solver = {"name": "fixed_point", "budget": budget, "tol": 0.0}
    spec = {"name": "intermediate", "lam": 1.0, "k": 1}
    ens = input_grad(DEQLogits(deq, build_estimator(spec), "ensemble", solver), x, y)
    # Reference: the same cotangent at the mean state sent back through every state's path.
    xx = x.clone().requires_grad_()
    states = []
    for n in range(1, budget + 1):
        inj = deq.prepare(xx)
        z_n = deq.init_state(x)
        with torch.no_grad():
            for _ in range(n):
                z_n = deq.f(z_n, inj)
        states.append(deq.f(deq.f(z_n, inj), inj))
    mean = torch.stack(states).mean(0)
    (cot,) = torch.autograd.grad(F.cross_entropy(deq.head(mean), y), mean, retain_graph=True)
    per_state = [torch.autograd.grad(s, xx, cot, retain_graph=True)[0] for s in states]
    torch.testing.assert_close(ens, sum(per_state) / budget)
    # The authors' weighting (8, 7, ..., 1 -> here 4, 3, 2, 1) gives a different direction.
    authors = sum((budget - i) * g for i, g in enumerate(per_state))
    assert not torch.allclose(ens / ens.norm(), authors / authors.norm(), atol=1e-3)


def test_every_estimator_gives_input_gradients_on_an_mdeq_in_eval_mode():
    torch.manual_seed(0)
    deq = MDEQ("tiny").eval()
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    solver = {"name": "broyden", "budget": 4, "tol": 1e-3}
    for spec, state in [
        ({"name": "exact"}, None),
        ({"name": "unroll", "lam": 0.5, "k": 2}, None),
        ({"name": "neumann", "lam": 1.0, "k": 3}, None),
        ({"name": "intermediate", "lam": 1.0, "k": 1}, 2),
        ({"name": "adjoint"}, 3),
        ({"name": "adjoint", "variant": "quasi_newton"}, 3),
    ]:
        grad = input_grad(DEQLogits(deq, build_estimator(spec), state, solver, {"budget": 3}), x, y)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, spec


def test_attacking_state_n_runs_the_solver_only_to_n():
    deq = ToyDEQ()
    calls = []
    original = deq.f
    deq.f = lambda z, inj: calls.append(1) or original(z, inj)
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.no_grad():
        DEQLogits(
            deq,
            build_estimator({"name": "intermediate", "lam": 1.0, "k": 1}),
            3,
            {"name": "fixed_point", "budget": 30, "tol": 0.0},
        )(x)
    assert len(calls) == 1 + 3 + 2  # f(z_0) + 3 solver steps + the estimator's 2 layers


def test_bad_estimator_inputs_are_named():
    with pytest.raises(ConfigError, match="unknown gradient estimator 'implicit'.*exact"):
        build_estimator({"name": "implicit"})
    with pytest.raises(ConfigError, match="estimator 'unroll': unknown parameter 'lambda'; valid parameters: lam, k"):
        build_estimator({"name": "unroll", "lambda": 0.5})
    with pytest.raises(ConfigError, match="variant 'both' is not valid; choose one of lockstep, quasi_newton"):
        build_estimator({"name": "adjoint", "variant": "both"})
    with pytest.raises(ConfigError, match=r"lam must be a number in \(0, 1\], got 0"):
        build_estimator({"name": "neumann", "lam": 0})
    with pytest.raises(ConfigError, match="state 12 is not valid for a solver budget of 8.*0..8"):
        DEQLogits(ToyDEQ(), build_estimator({"name": "exact"}), 12, {"budget": 8})
