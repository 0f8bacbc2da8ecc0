"""Shared fixtures: a synthetic CIFAR-10 archive in the official layout and small test configs."""
from __future__ import annotations

import io
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
        batches[name] = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
    batches["batches.meta"] = {b"label_names": [s.encode() for s in LABEL_NAMES],
                               b"num_cases_per_batch": per_batch, b"num_vis": 3072}
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
        "profile": "test", "device": "cpu", "threads": 1, "seed": 0,
        "data": {"root": str(data_root), "archive": str(archive) if archive else None,
                 "allow_md5_mismatch": True, "dev_size": 10},
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
