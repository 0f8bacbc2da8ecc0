"""Atomic file output: a failed or killed job never leaves a complete-looking file.

A write goes to a hidden temporary sibling, is flushed to disk and only then renamed onto
its name, so a reader sees the old version or the new one, never half of one, even after a
power cut. A write the user's machine refuses (disk full, quota, read-only file system, no
permission) stops with an ``OutputError`` naming the path and what to do, instead of a
traceback; the previous version of the file, if any, is left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

import torch

from deqrobust.errors import ConfigError

NEXT_STEP = {
    errno.ENOSPC: "free space on that disk, or set `results` (and `data.root`) in the config to a folder on a "
    "larger one",
    errno.EDQUOT: "free space within your disk quota, or set `results` (and `data.root`) in the config to another disk",
    errno.EROFS: "remount it writable, or set `results` (and `data.root`) in the config to a writable folder",
    errno.EACCES: "make the folder writable for you (chmod u+w), or set `results` (and `data.root`) in the config "
    "to a folder you own",
    errno.EPERM: "make the folder writable for you, or set `results` (and `data.root`) in the config to a folder "
    "you own",
}


class OutputError(ConfigError):
    """An output cannot be written (disk full, read-only, no permission); the message says which path and what to do."""


def refused(err: OSError, path: str | os.PathLike | None = None) -> OutputError | None:
    """The message for a write the machine refused (``err`` of writing ``path``), or None for other errors."""
    if err.errno not in NEXT_STEP:
        return None
    return OutputError(
        f"cannot write {path or err.filename or 'an output'} ({err.strerror}): {NEXT_STEP[err.errno]}. "
        "Finished outputs are intact (every write is atomic); rerun the same command afterwards."
    )


def _ours(err: OSError, *paths: Path) -> bool:
    """True when ``err`` is a refused write of one of ``paths`` (not some other file's error)."""
    return err.errno in NEXT_STEP and (err.filename is None or Path(err.filename) in paths)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; flush it and rename it onto ``path`` only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if refused(err) is None:
            raise
        raise refused(err, path) from err
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp_path.chmod(0o666 & ~umask)  # mkstemp makes 0600 files; outputs are ordinary files
        yield tmp_path
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(tmp_path, path)
    except OSError as err:
        if _ours(err, path, tmp_path, path.parent):
            raise refused(err, path) from err
        raise
    finally:
        with suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save tensors and plain types so that ``torch.load(..., weights_only=True)`` works.

    Written through ``_WriteAll``, which keeps the ``OSError`` of a refused write: torch's
    zip writer replaces it by an opaque ``RuntimeError`` ("unexpected pos"), and a full disk
    must reach ``atomic_path`` as ENOSPC to be explained.
    """
    with atomic_path(path) as tmp, open(tmp, "wb", buffering=0) as f:
        writer = _WriteAll(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


class _WriteAll:
    """A file for torch.save whose ``write`` writes every byte, or keeps the ``OSError`` that stopped it."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[self.raw.write(view) :]  # a short write is retried; a full disk raises ENOSPC
        except OSError as err:
            self.error = err
            raise
        return len(data)

    def flush(self) -> None:
        pass


def torch_load(path: str | os.PathLike) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def unreadable(path: str | os.PathLike, err: Exception) -> str:
    """Why a torch file cannot be read, in words (torch's own message for a damaged file
    suggests ``weights_only=False``, which would run whatever the file holds)."""
    path = Path(path)
    if path.is_dir():
        return "it is a directory, not a file"
    if path.is_file() and path.stat().st_size == 0:
        return "it is empty (0 bytes: a copy or a disk that failed)"
    size = f"{path.stat().st_size} bytes, " if path.is_file() else ""
    return f"it is damaged or not a torch file ({size}{type(err).__name__})"
