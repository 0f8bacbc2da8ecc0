"""Data-parallel training on the CPU (gloo, two processes, one thread each).

* ranks stay bit-identical and equal one process that averages the gradients of the two
  half batches (what data parallelism computes: each rank's BatchNorm normalises its own
  half, so the comparison is with per-half forwards, not one forward of the whole batch);
* ``deqrobust train`` under torchrun writes its outputs from rank 0 only, and a 2-process
  run killed mid-way and restarted ends exactly like an uninterrupted 2-process run.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import synthetic_batches, write_archive, write_config

from deqrobust import config, data, distributed
from deqrobust.errors import ConfigError
from deqrobust.training import Trainer

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

STEPS = 3
TRAINING = {
    "batch_size": 8,
    "pretrain_iters": 1,
    "pretrain_unroll": 2,
    "eval_batch_size": 10,
    "jac_reg": {"weight": 0.0},
    "adv": {"steps": 2},
    "select": {"pgd_steps": 1},
    "lr": 3e-3,
}


def setup(root: Path, **training) -> Path:
    """A prepared synthetic dataset (70 train, 10 dev, 16 test images) and a mini-MDEQ config."""
    archive = write_archive(root / "cifar.tar.gz", synthetic_batches(per_batch=16, n_test=16))
    path = write_config(
        root / "config.yaml",
        root / "data",
        archive,
        solver={"budget": 3},
        backward_solver={"budget": 2},
        models={"deq": {"arch": "mdeq", "size": "mini", "training": "standard", "grad": "exact"}},
        training={**TRAINING, **training},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)
        data.prepare(config.load(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg_path: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    t = Trainer(config.load(cfg_path), "deq", out)
    assert t.dist.world_size == 2 and t.dist.rank == rank and t.dist.backend == "gloo"
    losses = []
    for i, (x, y) in zip(range(STEPS), data.train_loader(t.cfg, 8, 0, 0, 0, rank, 2)):
        assert len(y) == 4
        losses.append(t.step(i, x, y))
    torch.save({"losses": losses, "state": t.model.state_dict()}, Path(out) / f"rank{rank}.pt")
    distributed.shutdown()


def reference(cfg: dict, out: Path) -> tuple[list[float], dict]:
    """One process: per iteration, forward each half of the global batch separately (own
    BatchNorm statistics), average the two gradients, one Adam step; BatchNorm running
    statistics are rank 0's (the first half's), as the ranks broadcast them."""
    t = Trainer(cfg, "deq", out)
    assert not t.dist.active
    losses = []
    for i, (x, y) in zip(range(STEPS), data.train_loader(cfg, 8, 0, 0)):
        net = t.net(pretraining=i < t.tc["pretrain_iters"])
        net.train()
        for group in t.optimizer.param_groups:
            group["lr"] = t.lr(i)
        t.optimizer.zero_grad(set_to_none=True)
        halves, rank0_buffers = [], None
        for h in (slice(0, 4), slice(4, 8)):
            loss = F.cross_entropy(net(x[h]), y[h])
            (loss / 2).backward()
            halves.append(loss.item())
            if rank0_buffers is None:
                rank0_buffers = [b.clone() for b in t.model.buffers()]
        with torch.no_grad():
            for b, saved in zip(t.model.buffers(), rank0_buffers):
                b.copy_(saved)
        t.optimizer.step()
        losses.append(sum(halves) / 2)
    return losses, t.model.state_dict()


def test_two_ranks_stay_identical_and_average_the_half_batch_gradients(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg_path = setup(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_worker, args=(free_port(), str(cfg_path), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["losses"] == r1["losses"]
    assert r0["state"].keys() == r1["state"].keys()
    for key in r0["state"]:  # parameters and buffers: bit-identical on both ranks
        assert torch.equal(r0["state"][key], r1["state"][key]), key

    losses, state = reference(config.load(cfg_path), tmp_path / "ref")
    assert r0["losses"] == pytest.approx(losses, rel=1e-5)
    moved = 0
    initial = Trainer(config.load(cfg_path), "deq", tmp_path / "init").model.state_dict()
    for key, value in state.items():
        assert torch.allclose(r0["state"][key].float(), value.float(), rtol=1e-4, atol=1e-6), (
            key,
            (r0["state"][key].float() - value.float()).abs().max().item(),
        )
        moved += not torch.equal(value, initial[key])
    assert moved > len(state) // 2  # the comparison is not between untrained weights


def test_global_batch_must_divide_by_the_processes(tmp_path):
    cfg = config.load(setup(tmp_path, batch_size=9))
    with pytest.raises(ConfigError, match="must divide by the 2"):
        next(data.train_loader(cfg, 9, 0, 0, 0, 0, 2))


def test_amp_is_refused_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip(
            "CUDA is available: this checks that amp is refused on CPU; on a GPU measure amp as "
            "docs/performance.md says"
        )
    with pytest.raises(ConfigError, match="training.amp=true needs CUDA"):
        Trainer(config.load(setup(tmp_path, amp=True)), "deq", tmp_path / "out")


def torchrun(cfg_path: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "deqrobust.cli",
            "train",
            "-c",
            str(cfg_path),
            "--model",
            "deq",
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_torchrun_writes_from_rank_0_and_resumes_exactly(tmp_path):
    cfg_path = setup(tmp_path, epochs=1.0, select={"every_epochs": 0.5, "pgd_steps": 1}, checkpoint_every_iters=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference_run, victim = torchrun(cfg_path, whole), torchrun(cfg_path, cut)
    deadline = time.time() + 60
    while not (cut / "resume.pt").is_file() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert victim.poll() is None, f"the run ended before it could be killed: {victim.communicate()[1][-3000:]}"
    # torchrun and both ranks: the ranks run in sessions of their own (torch 2.14), so a kill of
    # torchrun's process group leaves them training; kill the whole tree
    import psutil

    tree = [*psutil.Process(victim.pid).children(recursive=True), psutil.Process(victim.pid)]
    for proc in tree:
        proc.kill()
    psutil.wait_procs(tree, timeout=30)
    victim.wait()
    assert not (cut / "summary.json").exists()
    saved = torch.load(cut / "resume.pt", weights_only=True)
    assert saved["state"]["iteration"] >= 2 and len(saved["rng_ranks"]) == 2
    resumed = torchrun(cfg_path, cut)
    for proc in (reference_run, resumed):
        stdout, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert stdout.count("selected epoch") == 1  # rank 0 alone reports

    for d in (whole, cut):
        assert sorted(p.name for p in d.iterdir()) == [
            "checkpoint.pt",
            "finished",
            "metrics.csv",
            "snapshots",
            "snapshots.json",
            "summary.json",
        ]
    assert (whole / "metrics.csv").read_text() == (cut / "metrics.csv").read_text()
    assert [r["iteration"] for r in csv.DictReader((whole / "metrics.csv").open())] == ["4", "8"]
    timing = ("wall_seconds", "train_images_per_second")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (whole, cut))
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"])
