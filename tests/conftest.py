"""Shared fixtures: a synthetic CIFAR-10 archive in the official layout, small test configs, and
the authors' MDEQ-LARGE state dict (tests/fixtures/authors-mdeq-large.json) in their file layouts."""

from __future__ import annotations

import io
import json
import math
import pickle
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

FOLDER = "cifar-10-batches-py"
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_batches(per_batch: int = 20, n_test: int = 20, seed: int = 0) -> dict[str, dict]:
    """Batches like the official pickles; each class has its own colour, so the task is learnable."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, size=(10, 3))
    batches = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        labels = rng.integers(0, 10, size=n)
        noise = rng.integers(-30, 31, size=(n, 3, 1024))
        data = np.clip(palette[labels][:, :, None] + noise, 0, 255).astype(np.uint8).reshape(n, 3072)
        batches[name] = {
            b"batch_label": name.encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(n)],
        }
    batches["batches.meta"] = {
        b"label_names": [s.encode() for s in LABEL_NAMES],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    return batches


def write_archive(path: Path, batches: dict[str, object], raw: dict[str, bytes] | None = None) -> Path:
    """A gzipped tar with ``cifar-10-batches-py/<name>`` members (pickled, or raw bytes as given)."""
    members = {name: pickle.dumps(obj, protocol=2) for name, obj in batches.items()}
    members.update(raw or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run torch on one thread: small models are fastest so, and the 2 cores are shared
    (two OpenMP threads spin against each other under load, docs/performance.md)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def cifar_archive(tmp_path: Path) -> Callable[..., tuple[Path, dict]]:
    """Factory: ``cifar_archive(per_batch=20, n_test=20, edit=None)`` -> (archive path, batches written).

    ``edit(batches)`` may change or delete batches before they are written (broken archives).
    """

    def make(per_batch: int = 20, n_test: int = 20, seed: int = 0, edit=None, name: str = "cifar.tar.gz"):
        batches = synthetic_batches(per_batch, n_test, seed)
        if edit is not None:
            edit(batches)
        return write_archive(tmp_path / "archives" / name, batches), batches

    return make


def write_config(path: Path, data_root: Path, archive: Path | None = None, **sections) -> Path:
    """A small profile: CPU, one thread, the given data root and archive, sections merged over defaults."""
    cfg = {
        "profile": "test",
        "device": "cpu",
        "threads": 1,
        "seed": 0,
        "data": {
            "root": str(data_root),
            "archive": str(archive) if archive else None,
            "allow_md5_mismatch": True,
            "dev_size": 10,
        },
        "solver": {"name": "broyden", "budget": 4, "tol": 1e-3},
        "backward_solver": {"name": "broyden", "budget": 3, "tol": 1e-3},
        "models": {"deq": {"arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact"}},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_config(archive, name="config.yaml", **sections)`` -> config path (data under tmp_path/data)."""

    def make(archive: Path | None = None, name: str = "config.yaml", **sections) -> Path:
        return write_config(tmp_path / name, tmp_path / "data", archive, **sections)

    return make


# ---- the authors' MDEQ-LARGE (tests/fixtures/authors-mdeq-large.json, made with their code) ----
AUTHORS_FIXTURE = Path(__file__).parent / "fixtures" / "authors-mdeq-large.json"
# The files their training writes (fixture "checkpoint_formats").
AUTHORS_FILES = {
    "checkpoint": "checkpoint_220.pth.tar",
    "model_best": "model_best.pth.tar",
    "final_state": "final_state.pth.tar",
}


def draw(kind: str, shape: list[int], g):
    """One tensor of the fixture's weights_recipe."""
    import torch

    f64 = torch.float64
    if kind == "count":
        return torch.full(shape, 7, dtype=torch.long)
    if kind == "running_mean":
        return 0.3 * torch.randn(shape, generator=g, dtype=f64)
    if kind in ("running_var", "weight_g"):
        return 0.5 + torch.rand(shape, generator=g, dtype=f64)
    if kind == "weight":
        return torch.randn(shape, generator=g, dtype=f64) / math.sqrt(math.prod(shape[1:]))
    if kind == "scale":
        return 1 + 0.2 * torch.randn(shape, generator=g, dtype=f64)
    if kind == "bias":
        return 0.1 * torch.randn(shape, generator=g, dtype=f64)
    raise AssertionError(f"fixture kind {kind!r} is not in the recipe")


@pytest.fixture(scope="session")
def authors() -> dict:
    return json.loads(AUTHORS_FIXTURE.read_text())


@pytest.fixture(scope="session")
def their_state(authors) -> dict:
    """Their state dict, in their naming and order, rebuilt from the recipe."""
    import torch

    return {
        t["key"]: draw(t["kind"], t["shape"], torch.Generator().manual_seed(1000 + i))
        for i, t in enumerate(authors["tensors"])
    }


def write_authors_file(folder: Path, state: dict, layout: str, prefix: str = "") -> Path:
    """One file as their training writes it (``layout`` a key of AUTHORS_FILES): the training
    checkpoint dict or the bare state dict, each key with ``prefix`` (``module.``: DataParallel)."""
    import torch

    state = {prefix + key: value for key, value in state.items()}
    obj = state
    if layout == "checkpoint":
        param = torch.nn.Parameter(torch.zeros(3))
        optimizer = torch.optim.Adam([param], lr=1e-3)
        param.sum().backward()
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 100, eta_min=1e-6)
        obj = {
            "epoch": 220,
            "model": "mdeq",
            "state_dict": state,
            "perf": 0.5625,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "train_global_steps": 114400,
        }
    path = folder / AUTHORS_FILES[layout]
    torch.save(obj, path)
    return path


def run_command(name: str, argv: list[str]) -> int:
    """Run one subcommand through its own parser (independent of the other subcommands)."""
    import argparse
    import importlib

    module = importlib.import_module(f"deqrobust.commands.{name}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))
