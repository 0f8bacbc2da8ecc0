"""Training: steps learn, adversarial inputs stay in the ball, kill-and-resume is exact, checkpoints are safe."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import synthetic_batches, write_archive, write_config

from deqrobust import config, data, seeds
from deqrobust.checkpoint import load_checkpoint, save_checkpoint
from deqrobust.errors import ConfigError
from deqrobust.models import build_model
from deqrobust.training import Trainer

TRAINING = {
    "batch_size": 8,
    "pretrain_iters": 0,
    "pretrain_unroll": 2,
    "eval_batch_size": 10,
    "unroll": {"k": 2},
    "adv": {"steps": 2},
    "select": {"pgd_steps": 1},
}


def setup(root: Path, model: dict | None = None, **training) -> tuple[dict, Path]:
    """A prepared synthetic dataset (16 images per batch: 70 train, 10 dev, 16 test), its config and path."""
    archive = write_archive(root / "cifar.tar.gz", synthetic_batches(per_batch=16, n_test=16))
    spec = {"arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact", **(model or {})}
    path = write_config(
        root / "config.yaml",
        root / "data",
        archive,
        solver={"budget": 3},
        backward_solver={"budget": 2},
        models={"deq": spec},
        training={**TRAINING, **training},
    )
    cfg = config.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)
        data.prepare(cfg)
    return cfg, path


@pytest.mark.parametrize(
    "spec, training",
    [
        ({"grad": "exact"}, {}),
        ({"grad": "unroll"}, {}),
        ({"grad": "exact"}, {"pretrain_iters": 100}),
        ({"grad": "exact"}, {"jac_reg": {"freq": 1.0}}),
        ({"arch": "preact_resnet18"}, {}),
    ],
)
def test_steps_lower_the_loss(tmp_path, spec, training):
    t = Trainer(setup(tmp_path, spec, lr=3e-3, **training)[0], "deq", tmp_path / "out")
    x, y = next(data.train_loader(t.cfg, 8, seed=0, epoch=0))
    losses = [t.step(i, x, y) for i in range(6)]
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.parametrize("mode, step_255", [("pgd", 2), ("fgsm", 10)])
def test_adversarial_inputs_stay_in_the_ball(tmp_path, mode, step_255):
    t = Trainer(setup(tmp_path, {"training": mode})[0], "deq", tmp_path / "out")
    x, y = next(data.train_loader(t.cfg, 8, seed=0, epoch=0))
    x_adv = t.adversarial(t.net(), x, y, seeds.generator(0))
    eps = 8 / 255
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > eps / 2
    again = t.adversarial(t.net(), x, y, seeds.generator(0))
    assert torch.equal(x_adv, again)


@pytest.mark.parametrize("during", [False, True])
def test_phase_option_decides_whether_pretraining_is_attacked(tmp_path, monkeypatch, during):
    """The authors pretrain on clean images and train adversarially after (the default);
    adv_during_pretraining=true attacks the pretraining network too."""
    t = Trainer(
        setup(tmp_path, {"training": "pgd"}, pretrain_iters=2, adv_during_pretraining=during)[0],
        "deq",
        tmp_path / "out",
    )
    x, y = next(data.train_loader(t.cfg, 8, seed=0, epoch=0))
    attacked, original = [], t.adversarial
    monkeypatch.setattr(t, "adversarial", lambda net, *a: attacked.append(net.state.text) or original(net, *a))
    for iteration in range(3):
        t.step(iteration, x, y)
    # the pretraining network is DEQLogits at state 0 (the unroll), after it the final state
    assert attacked == (["0", "0", "final"] if during else ["final"])


def test_phase_option_reruns_only_models_it_shapes(tmp_path):
    """The key is in the train slice (rerun trigger, resume stamp) only of adversarially trained
    DEQs with pretraining, so its arrival retrains no other model."""
    from deqrobust import slices

    cfg = setup(tmp_path, pretrain_iters=2)[0]
    models = {
        "std": {"arch": "mdeq", "training": "standard"},
        "adv": {"arch": "mdeq", "training": "pgd"},
        "net": {"arch": "preact_resnet18", "training": "pgd"},
        "adv0": {"arch": "mdeq", "training": "pgd", "training_overrides": {"pretrain_iters": 0}},
    }
    cfg = config.validate({**cfg, "models": models})
    shaped = {m for m in models if "adv_during_pretraining" in slices.train_slice(cfg, m)["spec"]["training_config"]}
    assert shaped == {"adv"}


def train_command(cfg_path: Path, out: Path) -> subprocess.Popen:
    """A training in a child process. Its Ctrl-C (SIGINT) acts as in a terminal even when the tests
    run as a background job, which ignores SIGINT: the child is started while SIGINT is caught
    here, and exec resets a caught signal to its default (an ignored one would stay ignored)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "deqrobust.cli", "train", "-c", str(cfg_path), "--model", "deq", "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, before)


def test_kill_and_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    # FGSM-AT (seeded attack starts), Jacobian regularisation on half the iterations (global RNG
    # probes, budget jitter), pretraining then solver, evaluations every half epoch, resume every 2.
    _, cfg_path = setup(
        tmp_path,
        {"training": "fgsm"},
        epochs=1.5,
        pretrain_iters=1,
        jac_reg={"freq": 0.5},
        select={"every_epochs": 0.5, "pgd_steps": 1},
        checkpoint_every_iters=2,
    )
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = train_command(cfg_path, whole)
    victim = train_command(cfg_path, cut)
    deadline = time.time() + 90
    while not (cut / "resume.pt").is_file() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    time.sleep(2.0)
    assert victim.poll() is None, f"the run ended before it could be killed: {victim.communicate()[1][-2000:]}"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (cut / "summary.json").exists()
    for output in ("checkpoint.pt", "metrics.csv"):  # as Snakemake does before rerunning a job
        (cut / output).unlink(missing_ok=True)
    assert torch.load(cut / "resume.pt", weights_only=True)["state"]["iteration"] >= 2
    resumed = train_command(cfg_path, cut)
    for proc in (reference, resumed):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]

    assert not (whole / "resume.pt").exists() and not (cut / "resume.pt").exists()
    assert (whole / "metrics.csv").read_text() == (cut / "metrics.csv").read_text()
    rows = list(csv.DictReader((whole / "metrics.csv").open()))
    assert [r["iteration"] for r in rows] == ["4", "8", "12"]
    timing = ("wall_seconds", "train_images_per_second")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (whole, cut))
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
    assert {k: v for k, v in ca.items() if k != "state_dict"} == {k: v for k, v in cb.items() if k != "state_dict"}
    # every selection point's snapshot survives the kill, and equals the uninterrupted run's
    sa, sb = (json.loads((d / "snapshots.json").read_text()) for d in (whole, cut))
    assert [s["iteration"] for s in sa["snapshots"]] == [4, 8, 12] and sa["pretrain_iters"] == 1
    for a_entry, b_entry in zip(sa["snapshots"], sb["snapshots"]):
        wa, wb = (
            torch.load(d / "snapshots" / e["file"], weights_only=True)["state_dict"]
            for d, e in ((whole, a_entry), (cut, b_entry))
        )
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    last = torch.load(whole / "snapshots" / sa["snapshots"][-1]["file"], weights_only=True)
    assert last["epoch"] == 1.5 and last["metrics"]["iteration"] == 12


def test_a_file_that_is_no_checkpoint_is_named_and_never_said_to_be_deleted(tmp_path):
    from deqrobust.checkpoint import load_checkpoint

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,iteration\n0.5,4\n")
    with pytest.raises(
        ConfigError,
        match="metrics.csv is not a checkpoint \\(not a torch file\\); valid: the checkpoint.pt of a model folder",
    ) as err:
        load_checkpoint(metrics)
    assert "Delete" not in str(err.value)
    damaged = tmp_path / "checkpoint.pt"
    spec = {"arch": "mdeq", "size": "tiny", "training": "pgd", "grad": "exact", "name": "deq"}
    save_checkpoint(damaged, build_model(spec), spec, epoch=1.0, metrics={}, profile="test")
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # a torch file cut short
    with pytest.raises(ConfigError, match="cannot be read: .*Delete it and rerun"):
        load_checkpoint(damaged)


def test_checkpoints_load_safely_and_refuse_another_architecture(tmp_path):
    spec = {"arch": "mdeq", "size": "tiny", "training": "pgd", "grad": "exact", "name": "deq"}
    model = build_model(spec)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, spec, epoch=1.5, metrics={"dev_robust_acc": 0.25}, profile="test")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "deqrobust-checkpoint/1" and raw["spec"] == spec
    loaded, meta = load_checkpoint(path, "cpu", expect_arch="mdeq")
    assert meta["metrics"] == {"dev_robust_acc": 0.25} and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(ConfigError, match=r"holds a mdeq \(size tiny\) model, expected preact_resnet18"):
        load_checkpoint(path, "cpu", expect_arch="preact_resnet18")
    with pytest.raises(ConfigError, match=r"expected mdeq \(size small\)"):
        load_checkpoint(path, "cpu", expect_arch={"arch": "mdeq", "size": "small"})
    raw["spec"]["size"] = "small"
    torch.save(raw, path)
    with pytest.raises(ConfigError, match=r"weights do not fit a mdeq \(size small\) model"):
        load_checkpoint(path, "cpu")


def test_train_never_replaces_a_finished_model_without_force(tmp_path, capsys):
    from deqrobust import cli

    _, path = setup(tmp_path, epochs=0.25)
    out = tmp_path / "model"
    argv = ["train", "-c", str(path), "--model", "deq", "--out", str(out)]
    assert cli.main(argv) == 0
    machine = json.loads((out / "summary.json").read_text())["machine"]  # where it was trained
    assert machine["processor"] and machine["threads"] == 1 and machine["torch"] == torch.__version__
    finished = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.csv", "summary.json")}
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert (
        f"{out / 'checkpoint.pt'} already holds a finished model; give another --out, or add --force"
        in capsys.readouterr().err
    )
    assert {name: (out / name).read_bytes() for name in finished} == finished
    assert cli.main([*argv, "--force"]) == 0


def test_an_interrupted_rerun_after_a_config_change_never_costs_the_finished_model(tmp_path):
    """Issue 16, as found: change the config, start the rerun (Snakemake first removes the job's outputs),
    Ctrl-C; the finished model is gone from the folder. With the old config back, the rerun
    restores it byte for byte from finished/ instead of training, and the interrupted run of the
    other config is kept aside."""
    import yaml

    _, path = setup(tmp_path, epochs=1.5, select={"every_epochs": 0.5, "pgd_steps": 1}, checkpoint_every_iters=1)
    out = tmp_path / "model"
    first = train_command(path, out)
    assert first.wait(timeout=120) == 0, first.communicate()[1][-2000:]
    outputs = ("checkpoint.pt", "metrics.csv", "summary.json", "snapshots.json")
    finished = {name: (out / name).read_bytes() for name in outputs}
    changed = tmp_path / "changed.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["training"]["lr"] = 2e-3  # a setting changed
    cfg["training"]["epochs"] = 200  # long enough that the Ctrl-C always comes before it finishes
    changed.write_text(yaml.safe_dump(cfg))
    for name in outputs:  # as Snakemake does before it reruns the job
        (out / name).unlink()
    victim = train_command(changed, out)
    deadline = time.time() + 90
    while not (out / "resume.pt").is_file() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        victim.wait(timeout=60)
    finally:
        victim.kill()  # no 200-epoch training left behind if the Ctrl-C was not obeyed
    assert not (out / "checkpoint.pt").exists() and (out / "resume.pt").is_file()
    back = train_command(path, out)  # the old config again
    said, err = back.communicate(timeout=120)
    assert back.returncode == 0, err[-2000:]
    assert "restored the finished training" in said
    assert {name: (out / name).read_bytes() for name in outputs} == finished
    assert not (out / "resume.pt").exists() and (out / "resume-other-config.pt").is_file()
    manifest = json.loads(finished["snapshots.json"])
    assert all((out / "snapshots" / s["file"]).is_file() for s in manifest["snapshots"])
