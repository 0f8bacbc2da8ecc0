"""Solver coupling at the model level: under the authors' whole-batch rule (coupling: batch)
an image's logits and input gradient depend on the other images of its batch, forward and
backward; under per-sample decisions (our default) they do not. ``batch_dependence``
measures it. Solver-level checks of the rule itself: tests/test_solvers.py."""

import pytest
import torch
from toy_deq import ToyDEQ

from deqrobust.config import load
from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import Exact, build_estimator
from deqrobust.gradients import batch_dependence, input_gradient
from deqrobust.models.mdeq import MDEQ


@pytest.fixture
def toy():
    """Image 0 converges slowly (small input, tanh far from saturation), image 2 fast."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, dtype=torch.float64) * torch.tensor([0.3, 2, 5], dtype=torch.float64)[:, None]
    return ToyDEQ(), x, torch.tensor([0, 2, 1])


def solvers(coupling, backward_coupling=None):
    return (
        {"name": "broyden", "budget": 8, "tol": 1e-3, "coupling": coupling},
        {"name": "broyden", "budget": 6, "tol": 1e-3, "coupling": backward_coupling or coupling},
    )


def with_mate(model, x, y, image, mate):
    """Logits, exact input gradient and solver decisions of ``image`` in a batch with ``mate``."""
    xb, yb = x[[image, mate]], y[[image, mate]]
    with torch.no_grad():
        logits = model(xb)[0]
    return logits, input_gradient(model, xb, yb)[0], int(model.stats["result"].steps[0])


def test_under_batch_coupling_an_image_depends_on_its_batch_mates(toy):
    deq, x, y = toy
    model = DEQLogits(deq, Exact(), None, *solvers("batch"))
    slow_logits, slow_grad, slow_steps = with_mate(model, x, y, 1, 0)
    fast_logits, fast_grad, fast_steps = with_mate(model, x, y, 1, 2)
    assert slow_steps > fast_steps  # the slow mate keeps image 1 iterating
    assert not torch.allclose(slow_logits, fast_logits, rtol=0, atol=1e-10)
    assert not torch.allclose(slow_grad, fast_grad, rtol=0, atol=1e-10)


def test_under_per_sample_decisions_an_image_does_not_depend_on_its_batch(toy):
    deq, x, y = toy
    model = DEQLogits(deq, Exact(), None, *solvers("sample"))
    alone_logits = model(x[1:2]).detach()[0]
    alone_grad = input_gradient(model, x[1:2], y[1:2])[0]
    for mate in (0, 2):
        logits, grad, _ = with_mate(model, x, y, 1, mate)
        torch.testing.assert_close(logits, alone_logits, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(grad, alone_grad, rtol=1e-12, atol=1e-14)


def test_the_backward_solve_is_coupled_on_its_own(toy):
    """Forward per sample, backward over the batch (backward_solver.coupling: batch): the
    logits do not depend on the mate, the implicit gradient does."""
    deq, x, y = toy
    model = DEQLogits(deq, Exact(), None, *solvers("sample", backward_coupling="batch"))
    slow_logits, slow_grad, _ = with_mate(model, x, y, 1, 0)
    fast_logits, fast_grad, _ = with_mate(model, x, y, 1, 2)
    torch.testing.assert_close(slow_logits, fast_logits, rtol=1e-13, atol=1e-14)
    assert not torch.allclose(slow_grad, fast_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("spec", [{"name": "exact"}, {"name": "solver_autograd"}], ids=lambda s: s["name"])
def test_batch_dependence_measures_the_coupling_on_an_mdeq(spec):
    """An untrained MDEQ whose solve does not converge (relative residual about 0.8 at the
    budget), as for the authors' adversarially trained DEQ: with whole-batch decisions the
    gradient of some images turns by more than 60 degrees (here cosines 0.24 to 0.50 for
    exact, -0.14 and 0.11 for the true gradient); with per-sample decisions every image's
    gradient is the one it has alone."""
    torch.manual_seed(0)
    deq = MDEQ("mini").double().eval()
    x = (
        torch.rand(6, 3, 32, 32, dtype=torch.float64)
        * torch.tensor([0.2, 0.6, 1, 1, 0.4, 0.8], dtype=torch.float64)[:, None, None, None]
    )
    y = torch.arange(6)
    cosines = {}
    for coupling in ("sample", "batch"):
        solver = {"name": "broyden", "budget": 6, "tol": 0.85, "coupling": coupling}
        backward = {"name": "broyden", "budget": 4, "tol": 0.5, "coupling": coupling}
        cosines[coupling] = batch_dependence(
            DEQLogits(deq, build_estimator(spec), None, solver, backward, own=Exact()), x, y
        )
    assert (cosines["sample"] > 1 - 1e-10).all(), cosines["sample"]
    assert cosines["batch"].min() < 0.9, cosines["batch"]


def test_coupling_is_a_config_key_of_both_solvers(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("profile: t\nmodels: {deq: {arch: mdeq, training: standard}}\n")
    cfg = load(profile, ["solver.coupling=batch", "backward_solver.coupling=batch"])
    assert cfg["solver"]["coupling"] == cfg["backward_solver"]["coupling"] == "batch"
    with pytest.raises(ConfigError, match="solver.coupling.*'sideways'.*sample.*batch"):
        load(profile, ["solver.coupling=sideways"])
