"""Checkpoints written by the authors' training code, mapped onto our MDEQ.

Their MDEQ-Vision code (minicheshire/DEQ-White-Box-Robustness, both training folders)
computes the same function as ``deqrobust.models.mdeq.MDEQ`` with the same weights
(tests/test_import.py checks it against numbers their code produced), so a model they
trained can be evaluated here as it is: ``import_checkpoint`` reads one of their files
without running code from it, renames every tensor to our naming (each used exactly
once, with the shape our model has) and writes our checkpoint format.

Their training writes ``checkpoint_<epoch>.pth.tar`` (a dict: epoch, model, state_dict,
perf, optimizer, lr_scheduler, train_global_steps) and ``model_best.pth.tar`` /
``final_state.pth.tar`` (the bare state dict); a ``module.`` prefix (DataParallel) is
accepted on every key.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from deqrobust.errors import ConfigError
from deqrobust.plan import IMPORTED

# What their code trains (deqrobust.plan.IMPORTED, which the config checks use too). The
# gradient mode (their two training folders) decides the model's own output
# (deqrobust.estimators.model_estimator), so it is never guessed.
GRADS, TRAININGS = IMPORTED["grad"], IMPORTED["training"]
SIZES = IMPORTED["size"]  # the authors' CIFAR-10 configs, told apart by the stem width
STEM = "downsample.0.weight"  # their first stem conv: [C0, 3, 3, 3]
PREFIX = "module."  # added by torch.nn.DataParallel
TRAINING_CHECKPOINT = ("epoch", "model", "state_dict", "perf", "optimizer", "lr_scheduler", "train_global_steps")
LAYOUTS = {
    "checkpoint": "checkpoint_<epoch>.pth.tar: a dict with " + ", ".join(TRAINING_CHECKPOINT),
    "state_dict": "model_best.pth.tar or final_state.pth.tar: the bare state dict",
}

# Module paths, theirs <-> ours; {a}, {b}, {c}, {m} stand for one path component each.
# Both directions are unambiguous, so a missing tensor is named in their naming too.
MODULES = (
    ("downsample.0", "stem.0"),
    ("downsample.1", "stem.1"),
    ("downsample.3", "stem.3"),
    ("downsample.4", "stem.4"),
    ("stage0.0", "stem.6"),
    ("stage0.1", "stem.7"),
    ("fullstage.branches.{a}.blocks.0.{m}", "layer.blocks.{a}.{m}"),
    ("fullstage.fuse_layers.{a}.{b}.net.conv", "layer.fuse.{a}.{b}.0"),
    ("fullstage.fuse_layers.{a}.{b}.net.gnorm", "layer.fuse.{a}.{b}.1"),
    ("fullstage.fuse_layers.{a}.{b}.net.{c}.conv", "layer.fuse.{a}.{b}.{c}.0"),
    ("fullstage.fuse_layers.{a}.{b}.net.{c}.gnorm", "layer.fuse.{a}.{b}.{c}.1"),
    ("fullstage.post_fuse_layers.{a}.conv", "layer.post.{a}.1"),
    ("incre_modules.{a}.0.conv1", "head_net.incre.{a}.body.0"),
    ("incre_modules.{a}.0.bn1", "head_net.incre.{a}.body.1"),
    ("incre_modules.{a}.0.conv2", "head_net.incre.{a}.body.3"),
    ("incre_modules.{a}.0.bn2", "head_net.incre.{a}.body.4"),
    ("incre_modules.{a}.0.conv3", "head_net.incre.{a}.body.6"),
    ("incre_modules.{a}.0.bn3", "head_net.incre.{a}.body.7"),
    ("incre_modules.{a}.0.downsample.{b}", "head_net.incre.{a}.shortcut.{b}"),
    ("downsamp_modules.{a}.{b}", "head_net.down.{a}.{b}"),
    ("final_layer.{a}", "head_net.final.{a}"),
    ("classifier", "head_net.classifier"),
)
# Their weight norm keeps g and v as plain parameters; ours is a torch parametrization.
LEAVES = (("weight_g", "parametrizations.weight.original0"), ("weight_v", "parametrizations.weight.original1"))


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{(\w)\\\}", r"(?P<\1>[^.]+)", re.escape(template)))


_RULES = [(_pattern(theirs), theirs, _pattern(ours), ours) for theirs, ours in MODULES]


def _rename(key: str, to_ours: bool) -> str | None:
    """The key in the other naming, or None when no rule covers it."""
    leaves = LEAVES if to_ours else [(b, a) for a, b in LEAVES]
    for src, dst in leaves:
        if key.endswith("." + src):
            path, leaf = key[: -len(src) - 1], dst
            break
    else:
        path, _, leaf = key.rpartition(".")
    for their_re, their_t, our_re, our_t in _RULES:
        match = (their_re if to_ours else our_re).fullmatch(path)
        if match:
            return (our_t if to_ours else their_t).format(**match.groupdict()) + "." + leaf
    return None


def ours_from_theirs(key: str) -> str | None:
    """Our state-dict key for one of theirs (None: no tensor of ours corresponds)."""
    return _rename(key, to_ours=True)


def theirs_from_ours(key: str) -> str | None:
    """Their state-dict key for one of ours (names the tensors a file lacks)."""
    return _rename(key, to_ours=False)


def _plain(value):
    """A number or string for the spec (their perf may be a tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str)) or value is None else repr(value)[:200]


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Their state dict (``module.`` stripped) and what the file says about itself.

    Loading is ``weights_only``: a file that needs any other class or function to unpickle
    is refused before anything in it runs, naming what it asks for.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; valid: a file written by the authors' training ({_layouts()})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refused a global, or the file is no torch file at all
        raise ConfigError(_unreadable(path, err)) from err
    if isinstance(obj, dict) and "state_dict" in obj:
        layout, state = "checkpoint", obj["state_dict"]
        info = {key: _plain(obj[key]) for key in ("epoch", "model", "perf", "train_global_steps") if key in obj}
    else:
        layout, state, info = "state_dict", obj, {}
    if not isinstance(state, dict) or not state:
        found = f"a {type(state).__name__}" if not isinstance(state, dict) else "an empty dict"
        raise ConfigError(f"{path} holds {found} where a state dict was expected; valid: {_layouts()}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            keys = ", ".join(map(str, list(state)[:8]))
            raise ConfigError(
                f"{path}: entry {key!r} is not a tensor but {type(value).__name__} (keys: {keys}, ...); "
                f"valid: {_layouts()}"
            )
    prefixed = all(str(key).startswith(PREFIX) for key in state)
    if prefixed:
        state = {key[len(PREFIX) :]: value for key, value in state.items()}
    return state, {"layout": layout, "prefix": PREFIX if prefixed else "", **info}


def _layouts() -> str:
    return "; ".join(LAYOUTS.values())


def _unreadable(path: Path, err: Exception) -> str:
    """Why ``weights_only`` loading refused the file: the globals it asks for, else torch's reason."""
    text = str(err)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) torch file, or no torch file: read the loader's message
        found = re.findall(r"GLOBAL ([\w.]+)", text)
    if found:
        what = f"it asks for {', '.join(sorted(set(found)))}, which loading without running code from the file refuses"
    else:
        reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines() or [type(err).__name__]
        what = f"torch cannot read it ({reason[0][:300]}); is it a file torch.save wrote?"
    return (
        f"{path} cannot be imported: {what}. Valid: {_layouts()}, holding only tensors, numbers, strings, "
        "lists and dicts. If you trust the file, re-save its state dict as plain tensors, e.g. "
        "torch.save(torch.load(SRC, weights_only=False)['state_dict'], DST)."
    )


def detect_size(state: dict[str, torch.Tensor]) -> str:
    """LARGE or XL, from the width of their first stem convolution."""
    from deqrobust.models.mdeq import SIZES as OUR_SIZES

    widths = {OUR_SIZES[name].channels[0]: name for name in SIZES}
    if STEM not in state:
        raise ConfigError(
            f"the state dict has no tensor {STEM!r} (the stem convolution), so it is no MDEQ of the "
            f"authors' code; its first keys: {', '.join(list(state)[:5])}"
        )
    shape = tuple(state[STEM].shape)
    if len(shape) != 4 or shape[0] not in widths:
        valid = ", ".join(f"{w} ({name})" for w, name in widths.items())
        raise ConfigError(
            f"tensor {STEM!r} has shape {list(shape)}: its {shape[0] if shape else '?'} output channels "
            f"are no MDEQ size of the authors; valid widths: {valid}"
        )
    return widths[shape[0]]


def to_ours(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """(size, our state dict): every tensor of theirs used exactly once, with our shape.

    Refuses, naming the tensor, one with no counterpart (extra), one that two of theirs
    would fill, one ours needs and theirs lacks (missing), a shape that differs, and a
    non-finite floating tensor.
    """
    from deqrobust.models.mdeq import MDEQ

    size = detect_size(state)
    model = MDEQ(size)
    expected = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        ours = ours_from_theirs(key)
        if ours is None or ours not in expected:
            raise ConfigError(
                f"extra tensor {key!r} (shape {list(value.shape)}): no tensor of our MDEQ-{size} "
                "corresponds to it; is it a model of another config of the authors' code?"
            )
        if ours in origin:
            raise ConfigError(f"tensors {origin[ours]!r} and {key!r} both map to {ours!r}")
        if value.shape != expected[ours].shape:
            raise ConfigError(
                f"tensor {key!r} has shape {list(value.shape)}; MDEQ-{size} needs {list(expected[ours].shape)} ({ours})"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(f"tensor {key!r} holds non-finite values")
        mapped[ours], origin[ours] = value, key
    missing = [key for key in expected if key not in mapped]
    if missing:
        names = ", ".join(repr(theirs_from_ours(key)) for key in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConfigError(f"missing tensor{'s' if len(missing) > 1 else ''} {names}{more}: MDEQ-{size} needs them")
    weights = {key: mapped[key] for key in expected}
    model.load_state_dict(weights)  # strict: the load evaluation will make
    return size, weights


def import_checkpoint(
    source: str | os.PathLike, out: str | os.PathLike, grad: str, training: str, name: str = "imported"
) -> dict:
    """Write ``out`` (our checkpoint format) from one of their files; return its spec."""
    from deqrobust.checkpoint import save_checkpoint
    from deqrobust.data import md5_of

    for value, valid, what in ((grad, GRADS, "gradient mode"), (training, TRAININGS, "training")):
        if value not in valid:
            raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    state, info = read_file(source)
    size, weights = to_ours(state)
    source = Path(source)
    spec = {
        "arch": "mdeq",
        "size": size,
        "training": training,
        "grad": grad,
        "name": name,
        "source": {"file": str(source), "md5": md5_of(source), **info},
    }
    epoch = info.get("epoch")
    save_checkpoint(
        out, weights, spec, float(epoch) if isinstance(epoch, (int, float)) else math.nan, {}, profile="imported"
    )
    return spec
