"""The CUDA paths: each test here is skipped without CUDA (nccl data parallelism: without two
GPUs). The gpu check of the bench runs this module first (``python benchmarks/bench --sections
gpu``, docs/performance.md); on a CPU machine CI sees every test skipped, with the reason.

* device placement: a PGD-AT training step and one batch of a cell (with APGD-CE, the
  AutoAttack adapter) run with every tensor on the GPU;
* bf16 autocast (``training.amp``) trains, and keeps float32 weights and finite losses;
* the batch-coupled solver and the exact gradient give the CPU's float64 results on the GPU;
* nccl: two ranks on two GPUs stay bit-identical after a step.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import synthetic_batches, write_archive, write_config

from deqrobust import config, data
from deqrobust.attacks import build_attack
from deqrobust.deq_logits import DEQLogits
from deqrobust.estimators import build_estimator
from deqrobust.evaluation import attack_batch, attacked_model, own_estimator
from deqrobust.models.mdeq import MDEQ
from deqrobust.training import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

ATTACKS = {
    "pgd2": {"name": "pgd", "eps_255": 8, "step_255": 2, "steps": 2, "restarts": 1},
    "apgd-ce": {"name": "apgd-ce", "eps_255": 8, "n_iter": 3, "restarts": 1},
}


def cuda_config(root: Path, training: str = "pgd", **train) -> dict:
    archive = write_archive(root / "cifar.tar.gz", synthetic_batches(per_batch=16, n_test=16))
    path = write_config(
        root / "config.yaml",
        root / "data",
        archive,
        device="cuda",
        solver={"budget": 3},
        backward_solver={"budget": 2},
        models={"deq": {"arch": "mdeq", "size": "mini", "training": training, "grad": "exact"}},
        training={"batch_size": 8, "pretrain_iters": 0, "jac_reg": {"weight": 0.0}, "adv": {"steps": 2}, **train},
        evaluation={
            "batch_size": 8,
            "estimators": {"exact": {"name": "exact"}, "solver_autograd": {"name": "solver_autograd"}},
            "attacks": ATTACKS,
            "cells": [{"estimators": ["exact"], "attacks": ["pgd2"], "states": ["final"]}],
            "baseline_attacks": ["pgd2"],
            "early_exit": {"estimator": "exact", "attack": "pgd2"},
        },
        analysis={"attack": "pgd2", "estimator": "exact"},
    )
    cfg = config.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)
        data.prepare(cfg)
    return cfg


def batch(n: int = 8, device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=gen).to(device), torch.randint(0, 10, (n,), generator=gen).to(device)


def test_pgd_training_step_runs_on_the_gpu(tmp_path):
    trainer = Trainer(cuda_config(tmp_path), "deq", tmp_path / "out")
    assert trainer.device.type == "cuda"
    assert all(p.is_cuda for p in trainer.model.parameters())
    x, y = batch()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.step(1, x, y)
    assert torch.isfinite(torch.tensor(loss))
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_bf16_autocast_trains_and_keeps_float32_weights(tmp_path):
    trainer = Trainer(cuda_config(tmp_path, amp=True), "deq", tmp_path / "out")
    x, y = batch()
    losses = [trainer.step(i, x, y) for i in (1, 2)]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())


def test_cell_batch_with_pgd_and_apgd_on_the_gpu(tmp_path):
    cfg = cuda_config(tmp_path)
    trainer = Trainer(cfg, "deq", tmp_path / "out")
    net = trainer.model.eval()
    own = own_estimator(trainer.cfg, trainer.spec)
    x, y = batch()
    for estimator, attack in (("exact", "pgd2"), ("solver_autograd", "pgd2"), ("exact", "apgd-ce")):
        target = attacked_model(trainer.cfg, net, estimator, None, own)
        runner = build_attack(attack, ATTACKS[attack])
        part = attack_batch(net, target, runner, x, y, trainer.cfg["solver"], own, seed=0)
        assert set(part["clean"]) == set(part["adversarial"]) and "final" in part["clean"]
        assert all(v.shape == (8,) and v.device.type == "cpu" for v in part["adversarial"].values())


@pytest.mark.parametrize("coupling", ["sample", "batch"])
def test_float64_logits_and_exact_gradient_match_the_cpu(coupling):
    torch.manual_seed(0)
    deq = MDEQ("mini").double().eval()
    solver = {"name": "broyden", "budget": 4, "tol": 1e-3, "coupling": coupling}
    backward = {"name": "broyden", "budget": 3, "tol": 1e-3, "coupling": coupling}
    x, y = batch(4, "cpu")
    out = {}
    for device in ("cpu", "cuda"):
        model = deq if device == "cpu" else MDEQ("mini").double().eval()
        if device == "cuda":
            model.load_state_dict(deq.state_dict())
            model = model.to(device)
        net = DEQLogits(model, build_estimator({"name": "exact"}), None, solver, backward)
        xd = x.double().to(device).requires_grad_()
        logits = net(xd)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y.to(device), reduction="sum"), xd)
        out[device] = logits.detach().cpu(), grad.cpu()
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(out["cuda"][1], out["cpu"][1], rtol=1e-7, atol=1e-11)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_rank(rank: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    cfg = config.load(Path(root) / "config.yaml")
    trainer = Trainer(cfg, "deq", Path(root) / f"rank{rank}")
    assert trainer.dist.backend == "nccl"
    x, y = batch(4, str(trainer.device))
    trainer.step(1, x, y)
    torch.save([p.detach().cpu() for p in trainer.model.parameters()], Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl data parallelism needs 2 GPUs")
def test_nccl_ranks_stay_identical(tmp_path):
    cuda_config(tmp_path, distributed_backend="nccl")
    mp.spawn(_nccl_rank, args=(_free_port(), str(tmp_path), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
