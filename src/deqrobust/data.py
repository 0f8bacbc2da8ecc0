"""CIFAR-10: import the official archive, verify it, extract it, carve the dev split, serve tensors.

The official python pickles are read here rather than through torchvision's ``CIFAR10``:
torchvision unpickles with plain ``pickle`` (a non-official archive accepted through
``data.allow_md5_mismatch`` could then run code) and checks no shapes or labels. Ours uses an
unpickler restricted to numpy arrays and checks every batch, so a broken archive stops with a
message that says what is wrong. Inputs stay raw pixels in [0, 1] (the authors removed the
normalisation).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from deqrobust import seeds
from deqrobust.atomic import atomic_path, write_json
from deqrobust.errors import ConfigError

OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
MEMBERS = TRAIN_BATCHES + ("test_batch", "batches.meta")
OFFICIAL_COUNT = 10000
MARKER = ".deqrobust-verified.json"
SPLIT_FILE = "cifar10-split.json"
DOWNLOAD_NAME = "cifar-10-python.tar.gz"
PAD = 4


class DataError(ConfigError):
    """The dataset is missing, broken or inconsistent with the config; the message says which file and why."""


class DataWarning(UserWarning):
    """A non-official archive was accepted because data.allow_md5_mismatch is true."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: nothing in a batch file can run code."""

    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        return super().find_class(module, name)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means the member is not a CIFAR batch
        raise DataError(f"{where} is not a readable CIFAR-10 pickle ({err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR-10 batch (a {type(obj).__name__}, expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _check_batch(batch: dict, where: str, official: bool) -> None:
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{where} lacks its 'data' array or its 'labels'")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{where}: data has shape {tuple(data.shape)} and dtype {data.dtype}, expected (N, 3072) uint8")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{where}: {len(data)} images but {labels.size} labels")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise DataError(f"{where}: labels outside 0..9 (found {sorted(set(labels.tolist()) - set(range(10)))[:5]})")
    if official and len(data) != OFFICIAL_COUNT:
        raise DataError(f"{where}: {len(data)} images, the official batch has {OFFICIAL_COUNT}")


def read_archive(path: Path, official: bool) -> dict[str, bytes]:
    """Raw bytes of every member of ``cifar-10-batches-py``, after checking each batch's structure."""
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                parent, _, name = info.name.rpartition("/")
                if parent.strip("./") == FOLDER and name in MEMBERS and info.isfile():
                    raw[name] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"archive {path} is truncated or not a gzipped tar file ({err})") from err
    missing = [f"{FOLDER}/{name}" for name in MEMBERS if name not in raw]
    if missing:
        raise DataError(f"archive {path} lacks member(s) {', '.join(missing)}")
    for name in MEMBERS[:-1]:
        _check_batch(_unpickle(raw[name], f"{path}:{name}"), f"{path}:{name}", official)
    meta = _unpickle(raw["batches.meta"], f"{path}:batches.meta")
    if len(meta.get("label_names", ())) != 10:
        raise DataError(f"{path}:batches.meta does not list 10 label_names")
    return raw


def download(url: str, dest: Path, allow_md5_mismatch: bool) -> None:
    """Fetch ``url`` into ``dest`` atomically with a progress bar; a non-official file is not kept
    (unless allowed), so a damaged download is never reused."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as err:
        raise DataError(
            f"could not download {url} ({err}). Without internet access, put a local copy of "
            f"{DOWNLOAD_NAME} on this machine and set data.archive to its path (or pass --archive PATH)"
        ) from err
    md5 = md5_of(dest)
    if md5 != OFFICIAL_MD5 and not allow_md5_mismatch:
        dest.unlink()
        raise DataError(
            f"the download from {url} has MD5 {md5}, not the official {OFFICIAL_MD5}; "
            "it was deleted: retry, or set data.archive to a verified local copy"
        )


def _accept_md5(path: Path, md5: str, allow: bool) -> bool:
    """True for the official archive; a different MD5 passes only with data.allow_md5_mismatch."""
    if md5 == OFFICIAL_MD5:
        return True
    if not allow:
        raise DataError(
            f"archive {path} has MD5 {md5}, the official cifar-10-python.tar.gz has {OFFICIAL_MD5}; "
            "use the official archive, or accept this one with data.allow_md5_mismatch: true (snakemake: "
            f"--config 'data={{archive: {path}, allow_md5_mismatch: true}}'; "
            "deqrobust: --set data.allow_md5_mismatch=true)"
        )
    warnings.warn(
        f"archive {path} has MD5 {md5}, not the official {OFFICIAL_MD5}; accepted because "
        "data.allow_md5_mismatch is true (results are not comparable with the paper's)",
        DataWarning,
        stacklevel=3,
    )
    return False


def _extract(raw: dict[str, bytes], root: Path, marker: dict) -> None:
    """Write the checked members under a temporary folder, then rename it into place.

    Only the seven known member names are written, so no archive path can escape ``root``.
    Leftovers of an extraction that was killed are removed first.
    """
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".cifar-extract.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar-extract.", dir=root))
    try:
        for name, content in raw.items():
            (tmp / name).write_bytes(content)
        write_json(tmp / MARKER, marker)
        tmp.rename(root / FOLDER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _verified(root: Path) -> dict | None:
    marker = root / FOLDER / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def _existing(archive: str | Path) -> Path:
    path = Path(archive)
    if path.is_dir():
        inside = sorted(path.glob("*.tar.gz"))
        hint = f" (it holds {', '.join(p.name for p in inside[:3])})" if inside else ""
        raise DataError(
            f"archive {path} (data.archive / --archive) is a directory{hint}; valid: the path of the "
            f"archive file itself, e.g. {path / DOWNLOAD_NAME}, or data.archive: null to download it"
        )
    if not path.is_file():
        raise DataError(
            f"archive {path} (data.archive / --archive) does not exist; valid: the path of an existing "
            f"{DOWNLOAD_NAME}, or data.archive: null to download it"
        )
    return path


def prepare(cfg: dict, archive: str | None = None) -> dict:
    """Import (or download) CIFAR-10 once, then write the dev split; return the split record."""
    data = cfg["data"]
    root = Path(data["root"])
    archive = archive or data["archive"]
    done = _verified(root)
    if done is not None:
        if archive and md5_of(_existing(archive)) != done["md5"]:
            raise DataError(
                f"{root / FOLDER} already holds a verified dataset with MD5 {done['md5']}, and {archive} differs; "
                "remove that folder to import another archive"
            )
    else:
        if (root / FOLDER).exists():
            raise DataError(f"{root / FOLDER} exists but was not verified by `deqrobust data`; remove it and rerun")
        if archive is None:
            archive = root / DOWNLOAD_NAME
            if not archive.is_file():
                download(data["url"], archive, data["allow_md5_mismatch"])
        path = _existing(archive)
        md5 = md5_of(path)
        raw = read_archive(path, official=md5 == OFFICIAL_MD5)
        official = _accept_md5(path, md5, data["allow_md5_mismatch"])
        done = {"archive": str(path), "md5": md5, "official": official}
        _extract(raw, root, done)
    return _write_split(cfg, done)


def _write_split(cfg: dict, done: dict) -> dict:
    data = cfg["data"]
    train_size = sum(len(_batch(str(Path(data["root"]) / FOLDER), name)[1]) for name in TRAIN_BATCHES)
    if data["dev_size"] >= train_size:
        raise DataError(
            f"data.dev_size={data['dev_size']} leaves no training images (the training set has {train_size})"
        )
    rng = np.random.default_rng(data["split_seed"])
    dev = np.sort(rng.permutation(train_size)[: data["dev_size"]])
    record = {
        "dev_indices": dev.tolist(),
        "train_size": train_size - len(dev),
        "dev_size": len(dev),
        "split_seed": data["split_seed"],
        "archive_md5": done["md5"],
        "official": done["official"],
    }
    path = Path(data["root"]) / SPLIT_FILE
    if not path.is_file() or json.loads(path.read_text()) != record:
        write_json(path, record)
    return record


@functools.lru_cache(maxsize=8)
def _batch(folder: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    where = f"{folder}/{name}"
    try:
        raw = Path(where).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {where} ({err}); run `deqrobust data` first") from err
    batch = _unpickle(raw, where)
    _check_batch(batch, where, official=False)
    return batch["data"], np.asarray(batch["labels"], dtype=np.int64)


def _indices(cfg: dict, split: str) -> tuple[list[str], np.ndarray | None]:
    """Batch files and row indices (None = all rows) of a split, subsets drawn with fixed seeds."""
    data = cfg["data"]
    root = Path(data["root"])
    if _verified(root) is None or not (root / SPLIT_FILE).is_file():
        raise DataError(f"no verified CIFAR-10 under {root}; run `deqrobust data -c CONFIG` first")
    record = json.loads((root / SPLIT_FILE).read_text())
    if (record["dev_size"], record["split_seed"]) != (data["dev_size"], data["split_seed"]):
        raise DataError(
            f"{root / SPLIT_FILE} was carved with dev_size={record['dev_size']}, split_seed={record['split_seed']}; "
            f"this config asks for {data['dev_size']}, {data['split_seed']}: rerun `deqrobust data` with it"
        )
    dev = np.asarray(record["dev_indices"], dtype=np.int64)
    if split == "dev":
        return list(TRAIN_BATCHES), dev
    if split == "train":
        keep = np.setdiff1d(np.arange(record["train_size"] + len(dev)), dev)
        subset, stream = data["train_subset"], 1
    elif split == "test":
        keep = np.arange(len(_batch(str(root / FOLDER), "test_batch")[1]))
        subset, stream = data["test_subset"], 2
    else:
        raise ConfigError(f"unknown split {split!r}; valid splits: train, dev, test")
    if subset is not None and subset < len(keep):
        keep = np.sort(np.random.default_rng([data["split_seed"], stream]).choice(keep, subset, replace=False))
    return (list(TRAIN_BATCHES) if split == "train" else ["test_batch"]), keep


def split_uint8(cfg: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as uint8 images [N, 3, 32, 32] and int64 labels (a quarter of the float memory)."""
    names, rows = _indices(cfg, split)
    folder = str(Path(cfg["data"]["root"]) / FOLDER)
    parts = [_batch(folder, name) for name in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if rows is not None:
        x, y = x[rows], y[rows]
    return torch.from_numpy(np.ascontiguousarray(x).reshape(-1, 3, 32, 32)), torch.from_numpy(np.ascontiguousarray(y))


def load_split(cfg: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 [N, 3, 32, 32] in [0, 1], y int64 [N])`` of train, dev or test."""
    x, y = split_uint8(cfg, split)
    return x.float().div_(255), y


def augment(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop after zero padding of 4 (offsets ``shifts`` [B, 2] in 0..8) and horizontal flip."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    rows = (shifts[:, 0, None] + torch.arange(h))[:, None, :, None]
    cols = (shifts[:, 1, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    return torch.where(flips[:, None, None, None], out.flip(3), out)


def num_batches(n: int, batch_size: int) -> int:
    """Training batches per epoch: the last incomplete batch is dropped (batch norm needs > 1 image)."""
    if n < batch_size:
        raise ConfigError(f"training split has {n} images, fewer than training.batch_size={batch_size}")
    return n // batch_size


def train_loader(
    cfg: dict, batch_size: int, seed: int, epoch: int, start_batch: int = 0, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented training batches of one epoch.

    Order, crops and flips of the whole epoch are drawn up front from a generator seeded by
    ``(seed, epoch)``, so starting at ``start_batch`` yields exactly the batches an
    uninterrupted epoch would have yielded from there. With ``world_size`` > 1 (data-parallel
    training) ``batch_size`` is the global batch, which must divide by ``world_size``; each
    rank gets the ``rank``-th contiguous slice of every global batch, with the crops and
    flips the single-process batch would have had.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"training.batch_size={batch_size} is the global batch and must divide by the "
            f"{world_size} data-parallel processes"
        )
    local = batch_size // world_size
    x, y = split_uint8(cfg, "train")
    n = len(y)
    gen = seeds.generator(seed, epoch)
    order = torch.randperm(n, generator=gen)
    shifts = torch.randint(0, 2 * PAD + 1, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    for b in range(start_batch, num_batches(n, batch_size)):
        sel = order[b * batch_size + rank * local : b * batch_size + (rank + 1) * local]
        yield augment(x[sel].float().div_(255), shifts[sel], flips[sel]), y[sel]


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive evaluation batches, in order, the last one possibly smaller."""
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
