"""Models, batches and the computations the sections time (a synthetic CIFAR-10 archive too)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deqrobust import data
from deqrobust.deq_logits import DEQLogits
from deqrobust.estimators import build_estimator
from deqrobust.models.mdeq import MDEQ

from .settings import Settings

EPS, STEP = 8 / 255, 2 / 255


def make_model(size: str, train: bool = False, seed: int = 0) -> MDEQ:
    torch.manual_seed(seed)
    deq = MDEQ(size)
    return deq.train(train)


def make_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def logits_module(deq, spec: dict, state, s: Settings, budget: int | None = None) -> DEQLogits:
    return DEQLogits(deq, build_estimator(spec), state, s.solver(budget), s.backward_solver())


def input_gradient(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


def forward_only(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def synthetic_archive(path: Path, per_batch: int) -> Path:
    """An archive in CIFAR-10's official layout holding random images: a Trainer needs a
    prepared dataset, and no timing depends on the pixels."""
    rng = np.random.default_rng(0)
    batches = {
        name: {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
        }
        for name in (*data.TRAIN_BATCHES, "test_batch")
    }
    batches["batches.meta"] = {b"label_names": [f"class {i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{data.FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path
