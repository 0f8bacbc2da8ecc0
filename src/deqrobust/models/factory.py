"""A user's model given by reference: a factory ``package.module:function`` called with keyword
arguments, and a weights file loaded with ``weights_only`` (no code in a weights file runs).

The factory's module is imported from the user's environment. A factory must return a model that
meets the DEQ protocol (deqrobust.protocol); each failure (a reference that does not import, a model
missing part of the protocol, weights of the wrong shape) is one ConfigError line naming it.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from deqrobust import protocol
from deqrobust.errors import ConfigError

REFERENCE_RE = r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*"


def resolve(reference: str):
    """The function ``package.module:function`` names; ConfigError when it does not import."""
    if not isinstance(reference, str) or not re.fullmatch(REFERENCE_RE, reference):
        raise ConfigError(f"factory {reference!r} is not a reference; valid: 'package.module:function'")
    module_name, function_name = reference.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any failure of the user's module: named, on one line
        raise ConfigError(
            f"factory {reference!r} does not import: {type(err).__name__}: {err} (is its package installed, "
            "or on PYTHONPATH?)"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"factory {reference!r}: module {module_name!r} has no function {function_name!r}")
    return function


def build(reference: str, kwargs: dict | None = None) -> nn.Module:
    """The model the factory returns, checked against the DEQ protocol."""
    try:
        model = resolve(reference)(**(kwargs or {}))
    except TypeError as err:
        raise ConfigError(f"factory {reference!r} refused its keyword arguments {kwargs or {}}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"factory {reference!r} returned a {type(model).__name__}, not a torch.nn.Module")
    protocol.check(model, f"the model of factory {reference!r}")
    return model


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict (or a dict holding one under ``state_dict``), read with ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; valid: a torch file of the model's state dict")
    try:
        found = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled code, or not a torch file: refused either way
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"weights file {path} cannot be read with weights_only ({reason})") from None
    weights = found.get("state_dict", found) if isinstance(found, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    return weights


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load ``weights`` strictly; ConfigError naming the first key that is missing, extra or of another shape."""
    own = model.state_dict()
    missing, extra = [k for k in own if k not in weights], [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        first = (
            f"{wrong[0]} has shape {tuple(weights[wrong[0]].shape)}, the model's {tuple(own[wrong[0]].shape)}"
            if wrong
            else f"the model's {missing[0]} is missing"
            if missing
            else f"{extra[0]} is not a weight of the model"
        )
        raise ConfigError(
            f"{source} does not fit the model: {first} ({len(wrong)} of another shape, {len(missing)} missing, "
            f"{len(extra)} extra)"
        )
    model.load_state_dict(weights)
