"""Model checkpoints: plain types and tensors only, so ``torch.load(weights_only=True)`` reads them.

A checkpoint carries the spec it was trained from and is rebuilt from that spec alone; a
checkpoint whose weights do not fit its spec, or whose architecture is not the one the
caller expects, stops with a message naming both.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from deqrobust.atomic import torch_load, torch_save, unreadable
from deqrobust.errors import ConfigError
from deqrobust.models import build_model
from deqrobust.vocab import FACTORY, MDEQ

FORMAT = "deqrobust-checkpoint/1"
RESUME = "resume.pt"  # the state of an unfinished training, in its model folder
SNAPSHOTS_FORMAT = "deqrobust-snapshots/1"  # snapshots.json: a finished training's weights at each selection point
SPEC_KEYS = (
    "arch",
    "size",
    "width",
    "training",
    "grad",
    "name",
    "source",
    "factory",
    "kwargs",
)  # source: where an imported checkpoint came from (deqrobust.authors, deqrobust.user_models);
# factory, kwargs: how a user's model is built (deqrobust.models.factory)


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module | dict, spec: dict, epoch: float, metrics: dict, profile: str
) -> None:
    """Write ``model`` (a module or its state_dict) with its spec, atomically."""
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    torch_save(
        {
            "format": FORMAT,
            "spec": {key: spec[key] for key in SPEC_KEYS if key in spec},
            "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
            "epoch": float(epoch),
            "metrics": dict(metrics),
            "profile": profile,
        },
        path,
    )


def _starts_as_torch_file(path: Path) -> bool:
    """Whether a file begins like a torch file (a zip archive), whole or cut short."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _describe(spec: dict) -> str:
    if spec["arch"] == FACTORY:
        return f"factory {spec.get('factory')!r}"
    return spec["arch"] if spec["arch"] != MDEQ else f"{MDEQ} (size {spec.get('size')})"


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    expect_arch: str | dict | None = None,
    partial_ok: bool = False,
) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint in eval mode on ``device``; return it and the other fields.

    ``expect_arch`` is an architecture name or a spec with ``arch`` (and, for MDEQs, ``size``).
    A checkpoint with ``resume.pt`` beside it is refused as partial (its training has not
    finished), except by the trainer itself (``partial_ok``), which reads its own back.
    """
    path = Path(path)
    if not partial_ok and (path.parent / RESUME).is_file():
        raise ConfigError(
            f"checkpoint {path} is partial: the training in {path.parent} has not finished "
            f"({RESUME} is there). Finish it: rerun the workflow (snakemake resumes it) or "
            f"`deqrobust train -c CONFIG --model {path.parent.name} --out {path.parent}`."
        )
    if path.is_dir():
        inside = " (it holds one: give that file)" if (path / "checkpoint.pt").is_file() else ""
        raise ConfigError(f"checkpoint {path} is a directory; valid: the checkpoint.pt file of a model{inside}")
    try:
        ckpt = torch_load(path)
    except FileNotFoundError as err:
        raise ConfigError(
            f"checkpoint {path} does not exist; train the model first (snakemake, or "
            "`deqrobust train`) or import it (`deqrobust import`)"
        ) from err
    except Exception as err:  # unpickling refused or file damaged: either way not a usable checkpoint
        if path.is_file() and path.stat().st_size and not _starts_as_torch_file(path):  # another kind of file
            raise ConfigError(
                f"{path} is not a checkpoint (not a torch file); valid: the checkpoint.pt of a model "
                "folder (results/<profile>/models/<model>/checkpoint.pt)"
            ) from err
        raise ConfigError(
            f"checkpoint {path} cannot be read: {unreadable(path, err)}. Delete it and rerun "
            "the training of its model (snakemake reruns it), or copy it again"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {path} is not in format {FORMAT}")
    spec = ckpt["spec"]
    if expect_arch is not None:
        expected = {"arch": expect_arch} if isinstance(expect_arch, str) else expect_arch
        same = expected["arch"] == spec["arch"] and (
            spec["arch"] != MDEQ or expected.get("size") in (None, spec.get("size"))
        )
        if not same:
            raise ConfigError(f"checkpoint {path} holds a {_describe(spec)} model, expected {_describe(expected)}")
    model = build_model(spec)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        detail = str(err).split("\n", 1)[-1].strip()[:400]
        raise ConfigError(
            f"checkpoint {path}: its weights do not fit a {_describe(spec)} model as its spec says ({detail})"
        ) from err
    model.to(device).eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}
