"""The true gradient (``solver_autograd``, ``true_gradient(E)``): the logits of the deployed
model, and the derivative of exactly what the solver computed, checked by central finite
differences.

The solver's decisions (per-sample stop, lowest-residual iterate) make the deployed map
piecewise smooth; the finite differences are taken where no decision switches: every
perturbed solve is checked to make the same decisions (steps, best_step) as the unperturbed
one, and the cases are chosen so that decisions do act (some samples frozen before the
budget, some returning an iterate other than the last).
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from toy_deq import ToyDEQ

from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import Exact, build_estimator, true_gradient
from deqrobust.gradients import cosine, deployed_model, input_gradient, true_gradient_model
from deqrobust.models.mdeq import MDEQ
from deqrobust.scoring import all_state_logits

DEPLOYED = {"name": "solver_autograd"}
BACKWARD = {"name": "broyden", "budget": 40, "tol": 1e-12}


def decisions(model):
    result = model.stats["result"]
    return result.steps.tolist(), result.best_step.tolist()


def linear_loss(logits, weights):
    """A fixed random functional of the logits: every logit counts, unlike a saturated loss."""
    return (logits * weights).sum()


def decisions_at(model, x, state, budget):
    """The solver's decisions at ``x``; at the final state and in the ensemble they must act
    (some sample stops early and is frozen, or returns an iterate other than its last)."""
    with torch.no_grad():
        model(x)
    steps, best = decisions(model)
    if state in (None, "ensemble"):
        assert any(s < budget for s in steps) or any(b < s for b, s in zip(best, steps)), (steps, best)
    return steps, best


@pytest.fixture
def toy():
    deq = ToyDEQ()
    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64) * torch.tensor([0.3, 1, 2, 3, 5], dtype=torch.float64)[:, None]
    return deq, x, torch.randn(5, 4, dtype=torch.float64)


@pytest.mark.parametrize(
    "solver",
    [
        {"name": "broyden", "budget": 8, "tol": 1e-3},  # per-sample stops at steps 3..5
        {"name": "anderson", "budget": 7, "tol": 0.0},  # lowest residual not always the last
        {"name": "fixed_point", "budget": 6, "tol": 3e-3},
        {"name": "broyden", "budget": 8, "tol": 1e-3, "coupling": "batch"},  # the authors' whole-batch rule
    ],
    ids=lambda s: f"{s['name']}-{s.get('coupling', 'sample')}",
)
@pytest.mark.parametrize("state", [None, 2, 5, "ensemble"], ids=str)
def test_true_gradient_matches_central_differences_on_a_smooth_deq(toy, solver, state):
    """Every input coordinate, float64, a smooth f (tanh): the deployed map's derivative."""
    deq, x, weights = toy
    model = DEQLogits(deq, build_estimator(DEPLOYED), state, solver, BACKWARD, own=Exact())
    steps = decisions_at(model, x, state, solver["budget"])
    grad = input_gradient_of(model, x, weights)
    eps = 1e-6
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for idx in itertools.product(*(range(n) for n in x.shape)):
            step = torch.zeros_like(x)
            step[idx] = eps
            up = linear_loss(model(x + step), weights)
            assert decisions(model) == steps
            down = linear_loss(model(x - step), weights)
            assert decisions(model) == steps
            numeric[idx] = (up - down) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


def input_gradient_of(model, x, weights):
    xx = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(linear_loss(model(xx), weights), xx)
    return grad


@pytest.fixture(scope="module")
def mini():
    """MDEQ mini in float64. Solver budget 5, tol 0.85: samples 0, 1, 3 meet the tolerance at
    step 4 and are frozen; sample 2 never does and returns z_4, its lowest-residual iterate,
    rather than z_5 (asserted in the test, so a change of initialisation is caught)."""
    torch.manual_seed(0)
    deq = MDEQ("mini").double().eval()
    x = (
        torch.rand(4, 3, 32, 32, dtype=torch.float64)
        * torch.tensor([0.2, 0.6, 1, 1], dtype=torch.float64)[:, None, None, None]
    )
    return deq, x, torch.randn(4, 10, dtype=torch.float64)


@pytest.mark.parametrize("coupling", ["sample", "batch"])
@pytest.mark.parametrize("state", [None, 3, "ensemble"], ids=str)
def test_true_gradient_matches_directional_differences_on_an_mdeq(mini, state, coupling):
    """Six random directions, eps 1e-8: small enough that no ReLU kink of the untrained MDEQ
    is crossed (at 1e-7 kinks already cost up to 1e-3 relative); a solve whose Broyden
    factors carried no gradient misses by 50-90 %."""
    deq, x, weights = mini
    solver = {"name": "broyden", "budget": 5, "tol": 0.85, "coupling": coupling}
    model = DEQLogits(deq, build_estimator(DEPLOYED), state, solver, BACKWARD, own=Exact())
    steps = decisions_at(model, x, state, 5)
    if coupling == "sample" and state is None:
        assert steps == ([4, 4, 5, 4], [4, 4, 4, 4])
    grad = input_gradient_of(model, x, weights)
    gen = torch.Generator().manual_seed(1)
    eps, numeric, analytic = 1e-8, [], []
    with torch.no_grad():
        for _ in range(6):
            v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            up = linear_loss(model(x + eps * v), weights)
            assert decisions(model) == steps
            down = linear_loss(model(x - eps * v), weights)
            assert decisions(model) == steps
            numeric.append(((up - down) / (2 * eps)).item())
            analytic.append((grad * v).sum().item())
    numeric, analytic = torch.tensor(numeric), torch.tensor(analytic)
    assert (numeric - analytic).norm() / analytic.norm() < 1e-4, (numeric, analytic)


@pytest.mark.parametrize("size", ["mini", "tiny"])
@pytest.mark.parametrize("coupling", ["sample", "batch"])
@pytest.mark.parametrize("own", [{"name": "exact"}, {"name": "unroll", "lam": 0.5, "k": 2}], ids=lambda s: s["name"])
def test_deployed_logits_equal_every_defense_score(size, coupling, own):
    """solver_autograd computes the deployed model's logits: all_state_logits' final (the
    model's own output), ensemble and every state_n, to float rounding."""
    torch.manual_seed(0)
    deq = MDEQ(size).double().eval()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    solver = {"name": "broyden", "budget": 4, "tol": 0.9, "coupling": coupling}
    own = build_estimator(own)
    with torch.no_grad():
        scores = all_state_logits(deq, x, solver, own)
    for key, expected in scores.items():
        state = key.removeprefix("state_")
        model = DEQLogits(deq, build_estimator(DEPLOYED), state, solver, own=own)
        logits = model(x.clone().requires_grad_())
        assert logits.requires_grad
        torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-14, msg=key)


@pytest.mark.parametrize(
    "spec,state",
    [
        ({"name": "exact"}, None),
        ({"name": "unroll", "lam": 0.5, "k": 2}, None),
        ({"name": "neumann", "lam": 1.0, "k": 3}, None),
        ({"name": "intermediate", "lam": 1.0, "k": 1}, 2),
        ({"name": "adjoint"}, 3),
        ({"name": "intermediate", "lam": 0.5, "k": 1}, "ensemble"),
    ],
    ids=str,
)
def test_true_gradient_of_an_estimator_keeps_its_logits_and_differs_in_gradient(mini, spec, state):
    deq, x, weights = mini
    solver = {"name": "broyden", "budget": 4, "tol": 1e-3}
    model = DEQLogits(deq, build_estimator(spec), state, solver, {"budget": 3})
    reference = true_gradient_model(model)
    assert reference.estimator == true_gradient(model.estimator) and reference.state == model.state
    xx = x.clone().requires_grad_()
    torch.testing.assert_close(reference(xx), model(xx), rtol=1e-12, atol=1e-14)
    cos = cosine(input_gradient(model, x, weights.argmax(1)), input_gradient(reference, x, weights.argmax(1)))
    assert cos.shape == (4,) and torch.isfinite(cos).all() and (cos.abs() <= 1 + 1e-12).all()
    if spec["name"] in ("exact", "neumann", "adjoint"):  # a gradient rewrite: the true gradient is another vector
        assert (cos < 0.999).any()


@pytest.mark.parametrize("own_spec", [{"name": "exact"}, {"name": "unroll", "lam": 0.5, "k": 2}], ids=str)
def test_the_deployed_model_is_the_own_output_under_its_true_gradient(mini, own_spec):
    """deployed_model: the final defense's logits (the model's own estimator's output), and the
    gradient of autograd through the solver of that output, whichever estimator it is built from."""
    deq, x, weights = mini
    solver, y = {"name": "broyden", "budget": 4, "tol": 1e-3}, weights.argmax(1)
    own = build_estimator(own_spec)
    for spec in ({"name": "exact"}, {"name": "unroll", "lam": 0.5, "k": 3}):
        model = DEQLogits(deq, build_estimator(spec), None, solver, {"budget": 3}, own=own)
        deployed = deployed_model(model)
        as_own = true_gradient_model(DEQLogits(deq, own, None, solver, {"budget": 3}, own=own))
        with torch.no_grad():
            torch.testing.assert_close(deployed(x), as_own(x), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(input_gradient(deployed, x, y), input_gradient(as_own, x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["broyden", "anderson", "fixed_point"])
def test_true_gradient_of_exact_is_the_implicit_gradient_where_the_solver_converged(name):
    """At a converged fixed point, differentiating the solver's iterations gives the implicit
    gradient (the solver's derivative converges with it)."""
    torch.manual_seed(0)
    deq, x, y = ToyDEQ(), torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 3])
    solver = {"name": name, "budget": 60, "tol": 1e-12}
    exact = DEQLogits(deq, Exact(), None, solver, BACKWARD)
    implicit = input_gradient(exact, x, y)
    torch.testing.assert_close(input_gradient(true_gradient_model(exact), x, y), implicit, rtol=1e-9, atol=1e-10)
    deployed = DEQLogits(deq, build_estimator(DEPLOYED), None, solver, own=Exact())
    torch.testing.assert_close(input_gradient(deployed, x, y), implicit, rtol=1e-9, atol=1e-10)


def test_parameter_gradients_flow_through_the_solve():
    """The solve keeps its graph to the parameters too: f's weights get the true gradient."""
    torch.manual_seed(0)
    deq, x, y = ToyDEQ(), torch.randn(3, 6, dtype=torch.float64), torch.tensor([0, 1, 3])
    solver = {"name": "fixed_point", "budget": 5, "tol": 0.0}
    F.cross_entropy(DEQLogits(deq, build_estimator(DEPLOYED), None, solver, own=Exact())(x), y).backward()
    through_solver = deq.W.grad.clone()
    deq.zero_grad()
    inj, z = deq.prepare(x), deq.init_state(x)
    for _ in range(6):  # the 5 solver steps and the own output's f
        z = deq.f(z, inj)
    F.cross_entropy(deq.head(z), y).backward()
    torch.testing.assert_close(through_solver, deq.W.grad, rtol=1e-12, atol=1e-14)


def test_no_graph_is_kept_when_nothing_is_differentiated(mini):
    deq, x, _ = mini
    model = DEQLogits(deq, build_estimator(DEPLOYED), 3, {"name": "broyden", "budget": 4, "tol": 0.0})
    with torch.no_grad():
        model(x)
    assert all(not z.requires_grad for z in model.stats["result"].iterates)


def saved_bytes(model, x):
    """Bytes of the distinct storages the forward's autograd graph holds for the backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x.clone().requires_grad_())
    return sum(storages.values())


def test_memory_grows_linearly_with_the_budget():
    """Each solver step adds the same graph (docs/estimators.md, Memory): Broyden's rows are
    saved once, not as a growing copy per step (which made 8 -> 16 cost 2.7 times 4 -> 8)."""
    torch.manual_seed(0)
    deq = MDEQ("mini").eval()
    x = torch.rand(2, 3, 32, 32)
    used = {
        n: saved_bytes(DEQLogits(deq, build_estimator(DEPLOYED), None, {"budget": n, "tol": 0.0}, own=Exact()), x)
        for n in (4, 8, 16)
    }
    ratio = (used[16] - used[8]) / (used[8] - used[4])
    assert 1.9 < ratio < 2.1, used


def test_deployed_final_state_needs_the_models_own_estimator():
    with pytest.raises(ConfigError, match="solver_autograd.*own estimator"):
        DEQLogits(ToyDEQ(), build_estimator(DEPLOYED), None, {"budget": 3})(torch.randn(2, 6, dtype=torch.float64))
