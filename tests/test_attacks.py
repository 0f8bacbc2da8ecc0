"""PGD and the AutoAttack adapter on tiny models (no DEQ needed: attacks only call model(x))."""

import copy
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack, checks
from torch import nn

from deqrobust.attacks import build_attack
from deqrobust.attacks.autoattack import capture, configure
from deqrobust.attacks.pgd import pgd
from deqrobust.errors import ConfigError

SIDE = 8  # image side: small, square (Square attack assumes square images)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes, each a fixed pattern of amplitude 0.02 under noise: easy to learn, easy to attack at 8/255."""
    patterns = torch.randn(10, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = (0.5 + 0.02 * patterns[y] + 0.03 * torch.randn(n, 3, SIDE, SIDE, generator=gen)).clamp(0, 1)
    return x, y


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8 * SIDE * SIDE, 10),
    )


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A trained tiny net with BatchNorm and Dropout, in eval mode."""
    torch.manual_seed(0)
    net = tiny_net()
    x, y = synthetic(512, 1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        idx = torch.randint(0, 512, (128,))
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval()


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(32, 2)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class Probe(nn.Module):
    """Records, per call, whether the wrapped model was in train mode and the input gradient's size."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.modes: list[bool] = []
        self.grads: list[float] = []

    def forward(self, x):
        self.modes.append(self.net.training)
        if x.requires_grad:
            x.register_hook(lambda g: self.grads.append(g.abs().sum().item()))
        return self.net(x)


class Quantized(nn.Module):
    """Gradient masking by construction: the input is floored to 8 bits, so every gradient is zero."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * SIDE * SIDE, 10)

    def forward(self, x):
        return self.linear((torch.floor(x * 255) / 255).flatten(1))


class SignGradient(torch.autograd.Function):
    """Identity whose backward returns all ones: a stand-in for a DEQ gradient estimator."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.ones_like(grad)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# --- PGD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(restarts=3), dict(random_start=False, loss="cw")])
def test_pgd_stays_in_ball_and_image(model, test_set, kw):
    x, y = test_set
    eps = 8 / 255
    x_adv = pgd(model, x, y, eps, 2 / 255, 5, generator=torch.Generator().manual_seed(0), **kw)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_lowers_accuracy_and_raises_loss(model, test_set):
    x, y = test_set
    x_adv = build_attack("pgd10", {"name": "pgd"}).run(model, x, y, seed=0).x_adv
    assert accuracy(model, x, y) >= 0.9
    assert accuracy(model, x_adv, y) <= 0.2
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 1


def test_pgd_repeats_with_a_seed(model, test_set):
    x, y = test_set
    attack = build_attack("weak", {"name": "pgd", "eps_255": 2, "step_255": 0.5, "steps": 3})
    a, b = (attack.run(model, x, y, seed=7).x_adv for _ in range(2))
    c = attack.run(model, x, y, seed=8).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_restarts_keep_successes(model, test_set):
    """The first restart equals a single run, and a restart only replaces examples not yet fooled."""
    x, y = test_set
    spec = {"name": "pgd", "eps_255": 2, "step_255": 0.5, "steps": 3}
    one = build_attack("r1", spec).run(model, x, y, seed=3).x_adv
    three = build_attack("r3", {**spec, "restarts": 3}).run(model, x, y, seed=3).x_adv
    with torch.no_grad():
        fooled_one = model(one).argmax(1) != y
        fooled_three = model(three).argmax(1) != y
    assert torch.equal(three[fooled_one], one[fooled_one])
    assert fooled_three.sum() >= fooled_one.sum()


def test_pgd_leaves_model_and_input_alone(model, test_set):
    x, y = test_set
    x = x.clone()
    before = x.clone()
    training = copy.deepcopy(model).train()
    pgd(training, x, y, 8 / 255, 2 / 255, 2)
    assert training.training
    pgd(model, x, y, 8 / 255, 2 / 255, 2)
    assert not model.training
    assert torch.equal(x, before) and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_pgd_follows_the_models_own_backward():
    """A custom-autograd gradient inside the model is used as is: all-ones gradient -> x + eps."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 10))
    model = nn.Sequential(Lambda(SignGradient.apply), net)
    x = torch.full((4, 3, SIDE, SIDE), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    x_adv = pgd(model, x, y, 8 / 255, 2 / 255, 10, random_start=False)
    assert torch.allclose(x_adv, x + 8 / 255)


# --- AutoAttack adapter ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "apgd-ce", "n_iter": 10, "restarts": 2},
        {"name": "apgd-t", "n_iter": 10, "n_target_classes": 3},
        {"name": "fab-t", "n_iter": 10, "n_target_classes": 3},
        {"name": "square", "n_queries": 50},
    ],
)
def test_components_use_nonzero_input_gradients(model, test_set, spec):
    x, y = test_set
    probe = Probe(model)
    out = build_attack(spec["name"], {**spec, "eps_255": 8}).run(probe, x, y, seed=0)
    assert (out.x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert probe.modes and not any(probe.modes)  # the model stayed in eval mode throughout
    if spec["name"] == "square":
        assert probe.grads == []  # gradient-free
    else:
        assert probe.grads and all(g > 0 for g in probe.grads)
    assert all(p.grad is None for p in model.parameters())  # FAB's backward() left no trace
    if spec["name"] == "square":
        # a random search of 50 queries: whether it breaks one of these examples is luck (it broke
        # 0-10 over fixture seeds); its first stripes always move the input
        assert (out.x_adv != x).any() and accuracy(model, out.x_adv, y) <= accuracy(model, x, y)
    else:
        assert accuracy(model, out.x_adv, y) < accuracy(model, x, y)
    assert out.warnings == []
    assert len(out.broken_by) == len(y)


def test_standard_cascade_matches_one_autoattack_call(model, test_set):
    """Run component by component, the cascade gives the same examples as pyautoattack in one call."""
    x, y = test_set
    y = y.clone()
    y[:2] = (y[:2] + 1) % 10  # two examples misclassified from the start
    spec = {"name": "autoattack", "eps_255": 2, "n_iter": 20, "n_queries": 100}
    out = build_attack("aa", spec).run(model, x, y, seed=0)

    reference = AutoAttack(model, eps=2 / 255, seed=0, version="standard")
    configure(reference, {"n_iter": 20, "n_queries": 100})
    with capture(logging.getLogger("auto-attack")):
        x_ref, _ = reference.run_standard_evaluation(x, y, batch_size=len(x))
    assert torch.equal(out.x_adv, x_ref)

    with torch.no_grad():
        wrong = (model(out.x_adv).argmax(1) != y).tolist()
    assert out.broken_by[:2] == ["clean", "clean"]
    assert [b is not None for b in out.broken_by] == wrong
    assert 0 < sum(wrong[2:]) < len(y) - 2
    assert set(out.broken_by) <= {None, "clean", "apgd-ce", "apgd-t", "fab-t", "square"}
    assert any("running apgd-ce" in line for line in out.log)


def test_autoattack_repeats_and_restores_the_global_rng(model, test_set):
    x, y = test_set
    attack = build_attack("sq", {"name": "square", "n_queries": 20, "eps_255": 4})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = attack.run(model, x, y, seed=1).x_adv
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(attack.run(model, x, y, seed=1).x_adv, a)


def test_configure_rebuilds_apgd_with_restarts_kept():
    net = tiny_net().eval()
    aa = AutoAttack(net, eps=8 / 255, seed=0, version="custom", attacks=["apgd-ce"])
    assert aa.apgd.n_restarts == 5  # the "plus" setting for single components
    configure(aa, {"n_iter": 10, "n_target_classes": 4, "n_queries": 30})
    assert aa.apgd.n_iter == 10 and aa.apgd.n_iter_2 == 2 and aa.apgd.n_restarts == 5
    assert aa.apgd_targeted.n_iter == 10 and aa.apgd_targeted.n_target_classes == 4
    assert aa.fab.n_iter == 10 and aa.fab.n_target_classes == 4 and aa.square.n_queries == 30


def test_gradient_masking_is_flagged():
    """Zero gradients: AutoAttack says so, and Square beats the white-box attacks."""
    torch.manual_seed(0)
    model = Quantized().eval()
    x = torch.rand(32, 3, SIDE, SIDE)
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = {"name": "autoattack", "n_iter": 10, "n_queries": 100, "n_target_classes": 3}
    out = build_attack("aa", spec).run(model, x, y, seed=0)
    assert any("zero gradient" in w for w in out.warnings)
    assert any(w.startswith("Square Attack has decreased the robust accuracy") for w in out.warnings)
    assert "square" in out.broken_by


def test_randomness_is_flagged(model, test_set):
    x, y = test_set
    noisy = copy.deepcopy(model).train()  # Dropout active: the predictions are random
    out = build_attack("apgd", {"name": "apgd-ce", "n_iter": 2, "restarts": 1}).run(noisy, x, y, seed=0)
    assert any("randomized defense" in w for w in out.warnings)


class Dynamic(nn.Module):
    """Computes a gradient inside its forward pass, which AutoAttack flags as a dynamic defense."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            torch.autograd.grad(self.net(probe).sum(), probe)
        return self.net(x)


def test_dynamic_flag_does_not_stick_to_later_models(model, test_set):
    x, y = test_set
    spec = {"name": "apgd-ce", "n_iter": 2, "restarts": 1}
    flagged = build_attack("a", spec).run(Dynamic(model), x, y, seed=0)
    clean = build_attack("a", spec).run(model, x, y, seed=0)
    assert any("dynamic defense" in w for w in flagged.warnings)
    assert clean.warnings == []


def test_capture_takes_autoattack_output_only(caplog):
    """Logger records, pyautoattack's Python warnings and stdout are kept; other warnings pass."""
    logger = logging.getLogger("auto-attack")
    probabilities = torch.full((2, 10), 0.1)
    with caplog.at_level(logging.DEBUG), pytest.warns(UserWarning, match="foreign"), capture(logger) as (found, lines):
        logger.warning("checked")
        logger.debug("detail")
        checks.check_range_output(lambda x: x, probabilities)  # no logger: warnings.warn
        warnings.warn("foreign", UserWarning)
        print("printed")
    assert found[0] == "checked" and "output is a probability distribution" in found[1] and len(found) == 2
    assert lines[:2] == ["WARNING: checked", "DEBUG: detail"] and lines[-1] == "printed"
    assert not [r for r in caplog.records if r.name == "auto-attack"]
    assert logger.propagate and logger.level == logging.NOTSET


# --- build_attack ------------------------------------------------------------------------


def test_build_attack_defaults():
    pgd10 = build_attack("pgd10", {"name": "pgd"})
    assert (pgd10.eps, pgd10.step, pgd10.steps, pgd10.restarts) == (8 / 255, 2 / 255, 10, 1)
    aa = build_attack("aa", {"name": "autoattack"})
    assert (aa.version, aa.attacks, aa.settings) == ("standard", None, {})
    square = build_attack("sq", {"name": "square", "n_queries": 500, "restarts": 2})
    assert (square.version, square.attacks) == ("custom", ["square"])
    assert square.settings == {"n_queries": 500, "square_restarts": 2}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "pgd-10"}, "unknown attack type 'pgd-10'; valid types: pgd, autoattack, apgd-ce"),
        ({"steps": 10}, "unknown attack type None"),
        ({"name": "pgd", "stepz": 3}, "unknown parameter 'stepz'; valid parameters: eps_255, step_255, steps"),
        ({"name": "fab-t", "restarts": 2}, "unknown parameter 'restarts'; valid parameters: eps_255, n_iter"),
        ({"name": "autoattack", "restarts": 2}, "unknown parameter 'restarts'; valid parameters: eps_255, version"),
        ({"name": "pgd", "steps": 0}, "steps must be a positive integer"),
        ({"name": "pgd", "loss": "dlr"}, "loss 'dlr' is not valid; choose one of ce, cw"),
        (
            {"name": "autoattack", "version": "rand"},
            "version 'rand' is not valid; choose one of standard, plus, custom",
        ),
        ({"name": "autoattack", "version": "custom"}, "needs 'attacks'"),
        ({"name": "autoattack", "version": "custom", "attacks": ["apgd-ce", "pgd"]}, "component 'pgd' is not valid"),
        ({"name": "autoattack", "version": "custom", "attacks": ["fab-t", "fab"]}, "put 'fab' before 'fab-t'"),
        ({"name": "autoattack", "attacks": ["square"]}, "only for version custom"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        build_attack("mine", spec)
    assert "'mine'" in str(err.value)
