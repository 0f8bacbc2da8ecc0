"""Every speed option computes what the original code path computes (docs/performance.md).

The reference is the same code with every option off (the original path, kept switchable);
outputs, input gradients and parameter gradients are compared in float64, where only the
summation order may differ, for each estimator and state and for the solvers' own outputs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from deqrobust import estimators, solvers
from deqrobust.estimators import DEQLogits, all_state_logits, build_estimator
from deqrobust.models import mdeq
from deqrobust.models.mdeq import MDEQ, MDEQSize
from deqrobust.solvers import solve

ALL_OFF = ({k: False for k in mdeq.SPEED}, {k: False for k in solvers.SPEED}, {k: False for k in estimators.SPEED})
ALL_ON = ({k: True for k in mdeq.SPEED}, {k: True for k in solvers.SPEED}, {k: True for k in estimators.SPEED})
DEFAULTS = (dict(mdeq.SPEED), dict(solvers.SPEED), dict(estimators.SPEED))
# A small custom size with dropout, to check that masks are shared the same way.
DROPPY = MDEQSize((8, 16), (4, 8), 32, 0.2, downsample=1)


class options:
    def __init__(self, flags):
        self.scopes = [mdeq.speed_options(**flags[0]), solvers.speed_options(**flags[1]),
                       estimators.speed_options(**flags[2])]

    def __enter__(self):
        for scope in self.scopes:
            scope.__enter__()

    def __exit__(self, *exc):
        for scope in reversed(self.scopes):
            scope.__exit__(*exc)


def one_option(module_index, name):
    """Everything off but one option."""
    flags = tuple(dict(d) for d in ALL_OFF)
    flags[module_index][name] = True
    return flags


VARIANTS = {"all on": ALL_ON, "defaults": DEFAULTS,
            **{f"only mdeq.{k}": one_option(0, k) for k in mdeq.SPEED},
            **{f"only solvers.{k}": one_option(1, k) for k in solvers.SPEED},
            **{f"only estimators.{k}": one_option(2, k) for k in estimators.SPEED}}

CASES = [({"name": "exact"}, None), ({"name": "unroll", "lam": 0.5, "k": 2}, None),
         ({"name": "neumann", "lam": 0.8, "k": 3}, None), ({"name": "intermediate", "lam": 0.5, "k": 2}, 2),
         ({"name": "intermediate", "lam": 1.0, "k": 2}, 0), ({"name": "adjoint"}, 3), ({"name": "adjoint"}, None),
         ({"name": "adjoint", "variant": "quasi_newton"}, 2), ({"name": "intermediate", "lam": 1.0, "k": 1}, "ensemble")]
SOLVER = {"name": "broyden", "budget": 4, "tol": 1e-3}
BACKWARD = {"name": "broyden", "budget": 3, "tol": 1e-3}


def run(deq, spec, state, x, y, flags, train=False, jac_probes=0):
    """Logits, input gradient, parameter gradients and solver trace of one forward + backward."""
    deq.zero_grad(set_to_none=True)
    deq.train(train)
    torch.manual_seed(7)                    # dropout masks and Hutchinson probes
    with options(flags):
        model = DEQLogits(deq, build_estimator(spec), state, SOLVER, BACKWARD, jac_probes=jac_probes)
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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two OpenMP threads on two shared cores spin against each other (docs/performance.md)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    deq = MDEQ("mini").double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    return deq, x, torch.tensor([1, 4, 7])


@pytest.mark.parametrize("spec,state", CASES, ids=lambda v: str(v))
def test_estimators_give_the_same_logits_and_gradients_with_all_options(mini, spec, state):
    deq, x, y = mini
    ref = run(deq, spec, state, x, y, ALL_OFF)
    assert ref[1].abs().sum() > 0 and all(torch.isfinite(g).all() for g in ref[2].values())
    for name in ("all on", "defaults"):
        assert_same(ref, run(deq, spec, state, x, y, VARIANTS[name]))


@pytest.mark.parametrize("variant", [k for k in VARIANTS if k.startswith("only")])
def test_each_option_alone_gives_the_same_logits_and_gradients(mini, variant):
    deq, x, y = mini
    for spec, state in (CASES[0], CASES[3], CASES[5]):     # exact, intermediate at 2, lockstep adjoint at 3
        assert_same(run(deq, spec, state, x, y, ALL_OFF), run(deq, spec, state, x, y, VARIANTS[variant]))


def test_reuse_last_f_saves_one_application_per_forward(mini):
    """(Only with lean_loop: the original loop always re-selects z_n, a new tensor.)"""
    deq, x, _ = mini
    counts = {}
    lean = (ALL_OFF[0], {**ALL_OFF[1], "lean_loop": True}, ALL_OFF[2])
    with_reuse = (ALL_OFF[0], {**ALL_OFF[1], "lean_loop": True}, {**ALL_OFF[2], "reuse_last_f": True})
    for name, flags in (("off", lean), ("on", with_reuse)):
        calls = []
        original = deq.f
        deq.f = lambda z, inj: calls.append(1) or original(z, inj)
        try:
            with options(flags):
                model = DEQLogits(deq, build_estimator({"name": "intermediate", "lam": 0.5, "k": 2}), 3,
                                  {"name": "broyden", "budget": 8, "tol": 0.0})
                model(x.clone().requires_grad_()).sum().backward()
        finally:
            del deq.f
        counts[name] = len(calls)
    assert counts == {"off": 1 + 3 + 3, "on": 1 + 3 + 2}


@pytest.mark.parametrize("variant,jac_probes", [("all on", 0), ("only mdeq.cache_weights", 1), ("only mdeq.inplace", 1),
                                                ("only mdeq.channels_last", 0)])
def test_training_forward_with_dropout_and_jacobian_penalty_is_unchanged(variant, jac_probes):
    """Train mode: shared dropout masks, batch norm, Jacobian penalty (double backward).

    The Hutchinson probe is a random vector over the flat state, so with channels_last
    the same seed draws it in another order (the same distribution, another draw): the
    penalty is compared only where the state layout is the reference one.
    """
    torch.manual_seed(0)
    deq = MDEQ(DROPPY).double()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    ref = run(deq, {"name": "exact"}, None, x, y, ALL_OFF, train=True, jac_probes=jac_probes)
    out = run(deq, {"name": "exact"}, None, x, y, VARIANTS[variant], train=True, jac_probes=jac_probes)
    assert_same(ref, out)
    assert any(g.abs().sum() > 0 for n, g in out[2].items() if "original" in n)   # weight-norm g and v get gradients


def test_weights_cached_without_grad_never_reach_a_differentiated_f():
    """One scope holds a no-grad solve and a differentiated f: the weight-norm parameters
    must still receive their gradients (a no-grad cached weight would cut them off)."""
    torch.manual_seed(0)
    deq = MDEQ("mini").double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with mdeq.speed_options(cache_weights=True), deq.cached_weights():
        inj = deq.prepare(x)
        with torch.no_grad():
            z = deq.f(deq.init_state(x), inj)
        deq.head(deq.f(z, inj)).sum().backward()
    grads = [p.grad for n, p in deq.named_parameters() if "parametrizations" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_channels_last_state_is_a_permutation_of_the_reference_state(mini):
    deq, x, _ = mini
    with torch.no_grad():
        with mdeq.speed_options(channels_last=False):
            inj = deq.prepare(x)
            z_ref = deq.f(deq.f(deq.init_state(x), inj), inj)
            branches = [b.clone() for b in deq.split(z_ref)]
        with mdeq.speed_options(channels_last=True):
            inj = deq.prepare(x)
            z = deq.f(deq.f(deq.init_state(x), inj), inj)
            split = deq.split(z)
            torch.testing.assert_close(deq.join(split), z, rtol=0, atol=0)      # split/join round trip
            assert all(t.is_contiguous(memory_format=torch.channels_last) or t.shape[0] == 1
                       for t in (s.contiguous(memory_format=torch.channels_last) for s in split))
    for a, b in zip(split, branches):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(z.norm(dim=1), z_ref.norm(dim=1))


def test_all_state_logits_are_unchanged(mini):
    deq, x, _ = mini
    deq.eval()
    out = {}
    for name, flags in (("off", ALL_OFF), ("on", ALL_ON)):
        with options(flags):
            out[name] = all_state_logits(deq, x, SOLVER, build_estimator({"name": "exact"}))
    assert out["on"].keys() == out["off"].keys()
    for key in out["off"]:
        torch.testing.assert_close(out["on"][key], out["off"][key], rtol=1e-7, atol=1e-10)


def affine_problem(batch=6, dim=20, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    a = torch.linspace(0.2, 0.95, batch, dtype=torch.float64)[:, None, None] * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    c = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return lambda z: torch.einsum("bij,bj->bi", a, z) + c, c


@pytest.mark.parametrize("name", sorted(solvers.SOLVERS))
@pytest.mark.parametrize("poison", [False, True])
def test_solver_outputs_are_unchanged_with_frozen_and_diverging_samples(name, poison):
    """Samples converge at different steps (some frozen, some active) and one may diverge."""
    f, c = affine_problem()
    if poison:
        g = f
        f = lambda z: g(z) * torch.tensor([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0], dtype=torch.float64)[:, None]
    out = {}
    for key, flags in (("off", {k: False for k in solvers.SPEED}), ("on", {k: True for k in solvers.SPEED})):
        with solvers.speed_options(**flags):
            out[key] = solve({"name": name, "budget": 25, "tol": 1e-6}, f, torch.zeros_like(c), keep_iterates=True)
    ref, new = out["off"], out["on"]
    assert ref.steps.unique().numel() > 1                    # samples stop at different steps: frozen beside active
    for field in ("z", "rel_trace", "abs_trace"):
        torch.testing.assert_close(getattr(new, field), getattr(ref, field), rtol=1e-9, atol=1e-12, equal_nan=True)
    for field in ("steps", "converged", "diverged"):
        assert torch.equal(getattr(new, field), getattr(ref, field)), field
    for a, b in zip(new.iterates, ref.iterates):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    if name == "broyden":
        for a, b in zip(new.broyden_factors, ref.broyden_factors):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not poison or (bool(ref.diverged[2]) and math.isfinite(float(ref.z[2].sum())))
