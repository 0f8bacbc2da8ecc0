"""Any DEQ: the protocol, a model given by its factory and weights, and a TorchDEQ model through
the adapter, evaluated by this package's solvers and estimators.

The TorchDEQ tests need the extra (``pip install 'deqrobust[torchdeq]'``; .ci/setup installs it)
and are skipped, with that reason, without it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from test_workflow import SMOKE_ARCHIVE_SIZE, job_stats, output_of, snakemake, workdir  # noqa: F401 (workdir: fixture)
from torch import nn

from deqrobust import config, plan, protocol, slices
from deqrobust.checkpoint import load_checkpoint
from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import Exact, SolverAutograd
from deqrobust.models import factory
from deqrobust.models.mdeq import MDEQ
from deqrobust.user_models import import_factory

TESTS = Path(__file__).resolve().parent
DEQROBUST = str(Path(sys.executable).parent / "deqrobust")

# A user's package: a toy DEQ that meets the protocol, one that does not, and a factory that fails.
USER_PACKAGE = """
import torch
from torch import nn


class Toy(nn.Module):
    def __init__(self, dim=8, inputs=12, classes=3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(dim, dim, generator=gen)
        self.W = nn.Parameter(0.5 * w / torch.linalg.matrix_norm(w, ord=2))
        self.U = nn.Parameter(torch.randn(dim, inputs, generator=gen) / inputs**0.5)
        self.V = nn.Parameter(torch.randn(classes, dim, generator=gen))

    def prepare(self, x):
        return x.flatten(1) @ self.U.T

    def init_state(self, x):
        return x.new_zeros(x.shape[0], self.W.shape[0])

    def f(self, z, injection):
        return torch.tanh(z @ self.W.T + injection)

    def head(self, z):
        return z @ self.V.T


class NoHead(Toy):
    head = None


def toy(dim=8):
    return Toy(dim=dim)


def headless():
    return NoHead()
"""


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    (tmp_path / "user_deqs.py").write_text(textwrap.dedent(USER_PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for the CLI's own process
    sys.modules.pop("user_deqs", None)
    return tmp_path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DEQROBUST, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- the protocol
def test_the_protocol_names_every_member_a_model_lacks():
    class Half(nn.Module):
        def prepare(self, x):
            return x

    assert protocol.missing(Half()) == ["f", "init_state", "head"] and not protocol.is_deq(Half())
    with pytest.raises(ConfigError, match=r"lacks f\(z, injection\) -> z.*init_state\(x\) -> z0.*head\(z\) -> logits"):
        protocol.check(Half(), "my model")
    assert protocol.is_deq(MDEQ("mini"))  # the project's own DEQ meets it


# ---------------------------------------------------------------- a model given by reference
def test_a_factory_model_round_trips_through_its_checkpoint(user_package, tmp_path):
    model = factory.build("user_deqs:toy", {"dim": 8})
    weights = {k: v + 0.01 for k, v in model.state_dict().items()}  # trained weights differ from the init
    torch.save(weights, tmp_path / "w.pt")
    spec = import_factory("user_deqs:toy", {"dim": 8}, tmp_path / "w.pt", tmp_path / "ckpt.pt", "exact", "pgd", "mine")
    assert spec["arch"] == "factory" and spec["source"]["layout"] == "state_dict"
    loaded, meta = load_checkpoint(tmp_path / "ckpt.pt")
    assert meta["spec"]["factory"] == "user_deqs:toy" and meta["spec"]["kwargs"] == {"dim": 8}
    for key, value in weights.items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = torch.randn(5, 12)
    solver = {"name": "broyden", "budget": 30, "tol": 1e-6}
    ours = DEQLogits(loaded, Exact(), None, solver, solver).eval()(x)
    model.load_state_dict(weights)
    assert torch.equal(ours, DEQLogits(model, Exact(), None, solver, solver).eval()(x))


@pytest.mark.parametrize(
    "reference, message",
    [
        ("user_deqs:headless", r"does not meet the DEQ protocol: it lacks head\(z\) -> logits"),
        ("no_such_package.models:build", r"does not import: ModuleNotFoundError"),
        ("user_deqs:nothing", r"module 'user_deqs' has no function 'nothing'"),
        ("user_deqs.toy", r"is not a reference; valid: 'package.module:function'"),
    ],
)
def test_a_factory_that_fails_is_refused_in_one_line_with_exit_code_2(user_package, tmp_path, reference, message):
    torch.save(factory.build("user_deqs:toy").state_dict(), tmp_path / "w.pt")
    args = ["--factory", reference, "--weights", str(tmp_path / "w.pt"), "--grad", "exact", "--training", "pgd"]
    proc = cli("import", *args, "--out", str(tmp_path / "ckpt.pt"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr
    assert not (tmp_path / "ckpt.pt").exists()


def test_weights_of_the_wrong_shape_are_refused_naming_the_tensor(user_package, tmp_path):
    torch.save(factory.build("user_deqs:toy", {"dim": 6}).state_dict(), tmp_path / "small.pt")
    args = ["--factory", "user_deqs:toy", "--kwargs", "{dim: 8}", "--weights", str(tmp_path / "small.pt")]
    proc = cli("import", *args, "--grad", "exact", "--training", "pgd", "--out", str(tmp_path / "c.pt"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "W has shape (6, 6), the model's (8, 8)" in proc.stderr
    torch.save({"W": "not a tensor"}, tmp_path / "odd.pt")
    with pytest.raises(ConfigError, match="cannot be read with weights_only|holds no state dict"):
        factory.read_weights(tmp_path / "odd.pt")


# ---------------------------------------------------------------- TorchDEQ
def torchdeq_model(seed: int = 0) -> nn.Module:
    """A TorchDEQ user's model as its examples build one: injection, layer, head and get_deq."""
    torchdeq = pytest.importorskip("torchdeq", reason="TorchDEQ is an extra: pip install 'deqrobust[torchdeq]'")

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, z, injection):
            return torch.tanh(0.5 * self.conv(z) + injection)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.inject = nn.Conv2d(3, 4, 3, padding=1)
            self.f = Layer()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
            self.deq = torchdeq.get_deq(f_solver="fixed_point_iter", f_max_iter=200, f_tol=1e-9, f_stop_mode="abs")

        def forward(self, x):
            injection = self.inject(x)
            z_out, _ = self.deq(lambda z: self.f(z, injection), torch.zeros_like(injection))
            return self.head(z_out[-1])

    return Net().double()


def trained_torchdeq() -> nn.Module:
    """A few steps of TorchDEQ's own training on a synthetic task (its own gradient)."""
    net = torchdeq_model()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 5, (16,), generator=gen)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(5):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net.eval()


def test_a_torchdeq_model_meets_the_protocol_and_our_solve_matches_its_own():
    from deqrobust.adapters.torchdeq import wrap

    net = trained_torchdeq()
    deq = wrap(net)
    assert protocol.is_deq(deq) and deq.state_dict().keys() == net.state_dict().keys()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        theirs = net(x)
        solver = {"name": "broyden", "budget": 60, "tol": 1e-10}
        ours = DEQLogits(deq, Exact(), None, solver, solver).eval()(x)
    assert torch.allclose(ours, theirs, atol=1e-7), (ours - theirs).abs().max()
    # Why the adapter: TorchDEQ's own eval forward solves under no_grad, so an attack on it gets no
    # input gradient through the equilibrium (TorchDEQ issue #4); through the adapter it does.
    x.requires_grad_(True)
    assert torch.autograd.grad(net(x).sum(), x, allow_unused=True) == (None,)
    (grad,) = torch.autograd.grad(DEQLogits(deq, Exact(), None, solver, solver).eval()(x).sum(), x)
    assert grad.abs().sum() > 0


def _directional(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor, eps: float = 1e-5) -> float:
    with torch.no_grad():
        loss = lambda t: nn.functional.cross_entropy(model(t), y, reduction="sum").item()  # noqa: E731
        return (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


def test_torchdeq_input_gradients_agree_with_finite_differences():
    """exact (the implicit gradient at the converged fixed point) and solver_autograd (the true
    gradient of the deployed solve, here 6 Broyden steps) each match the finite difference of the
    map they differentiate, in float64."""
    from deqrobust.adapters.torchdeq import wrap

    deq = wrap(trained_torchdeq())
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=gen)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    converged = {"name": "broyden", "budget": 60, "tol": 1e-12}
    exact = DEQLogits(deq, Exact(), None, converged, converged).eval()
    assert _gradient(exact, x, y).mul(v).sum().item() == pytest.approx(_directional(exact, x, y, v), rel=1e-5)
    deployed = {"name": "broyden", "budget": 6, "tol": 0.0}  # a fixed number of steps: a smooth map
    truth = DEQLogits(deq, SolverAutograd(), None, deployed, deployed, own=Exact()).eval()
    assert _gradient(truth, x, y).mul(v).sum().item() == pytest.approx(_directional(truth, x, y, v), rel=1e-5)


def test_the_worked_example_builds_a_protocol_deq(monkeypatch):
    pytest.importorskip("torchdeq", reason="TorchDEQ is an extra: pip install 'deqrobust[torchdeq]'")
    monkeypatch.syspath_prepend(str(TESTS.parent / "examples"))
    import byo_deq

    deq = byo_deq.build(channels=8)
    assert protocol.is_deq(deq) and set(deq.state_dict()) == set(deq.net.state_dict())
    x = torch.rand(2, 3, 32, 32)
    solver = {"name": "broyden", "budget": 4, "tol": 1e-3}
    assert DEQLogits(deq, Exact(), None, solver, solver).eval()(x).shape == (2, 10)


# ---------------------------------------------------------------- a user's DEQ in a profile
def test_a_profile_checks_its_factory_models():
    smoke = str(TESTS.parent / "config" / "smoke.yaml")
    with pytest.raises(ConfigError, match=r"models.mine.weights: arch factory needs it"):
        config.load(smoke, ["models={mine: {arch: factory, factory: 'user_deqs:toy', training: pgd}}"])
    with pytest.raises(ConfigError, match=r"models.deq-std.factory: only a model of arch factory has it"):
        config.load(smoke, ["models={deq-std: {factory: 'user_deqs:toy'}}"])
    with pytest.raises(ConfigError, match=r"models.mine.seeds: a model of arch factory is one instance"):
        config.load(
            smoke, ["models={mine: {arch: factory, factory: 'a:b', weights: w.pt, training: pgd, seeds: [0, 1]}}"]
        )
    cfg = config.load(smoke, ["models={mine: {arch: factory, factory: 'a.b:c', weights: w.pt, training: pgd}}"])
    assert "mine" in plan.imported(cfg) and "mine" in plan.deqs(cfg) and "mine" not in plan.trained(cfg)
    assert slices.import_slice(cfg, "mine") == {
        "factory": "a.b:c",
        "kwargs": None,
        "weights": "w.pt",
        "training": "pgd",
        "grad": "exact",
    }


@pytest.mark.slow
def test_a_users_deq_runs_through_the_whole_workflow(workdir, cifar_archive, user_package, tmp_path):
    """A factory DEQ (no training) through import, every cell, early exit, analysis and the report."""
    archive, _ = cifar_archive(**SMOKE_ARCHIVE_SIZE)
    profile = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    profile["models"] = {
        "mine": {"arch": "factory", "factory": "user_deqs:cifar", "weights": str(tmp_path / "w.pt"), "training": "pgd"}
    }
    profile["results"], profile["reports"] = "results/byo", "reports/byo"
    profile["data"]["root"] = "results/byo/data"
    for group in profile["evaluation"]["cells"]:
        group.pop("models", None)
    (user_package / "user_deqs.py").write_text(
        (user_package / "user_deqs.py").read_text()
        + "\n\ndef cifar():\n    return Toy(dim=8, inputs=3072, classes=10)\n"
    )
    sys.modules.pop("user_deqs", None)
    torch.save(factory.build("user_deqs:cifar").state_dict(), tmp_path / "w.pt")
    path = workdir / "config" / "byo-test.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    data = f"data={{archive: {archive}, allow_md5_mismatch: true}}"
    args = ["--workflow-profile", "workflow/profiles/default", "--cores", "2", "--configfile", str(path)]
    proc = snakemake(workdir, *args, "--config", data, timeout=1200)
    assert proc.returncode == 0, output_of(proc)[-5000:]
    stats = job_stats(output_of(proc))
    assert stats["import_checkpoint"] == 1 and "train" not in stats and stats["evaluate"] > 5
    loaded, meta = load_checkpoint(workdir / "results/byo/models/mine/checkpoint.pt")
    assert meta["spec"]["arch"] == "factory" and protocol.is_deq(loaded)
    report = (workdir / "reports/byo/report.md").read_text()
    assert "| 3 |" in report and (workdir / "results/byo/analysis/mine.json").is_file()
