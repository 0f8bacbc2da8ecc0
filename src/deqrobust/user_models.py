"""A user's DEQ as a deqrobust checkpoint: built by its factory, loaded from its weights file, and
written with the spec that rebuilds it (deqrobust.models.factory), so every command that takes
``--checkpoint`` evaluates it as it does the project's own models."""

from __future__ import annotations

import os
from pathlib import Path

from deqrobust.checkpoint import save_checkpoint
from deqrobust.data import md5_of
from deqrobust.models import factory
from deqrobust.schema import schema

# As a model entry of a profile takes them: the gradient mode that defines the model's own output
# (as trained), and its training.
_MODEL = schema()["properties"]["models"]["additionalProperties"]["properties"]
GRADS, TRAININGS = tuple(_MODEL["grad"]["enum"]), tuple(_MODEL["training"]["enum"])


def import_factory(
    reference: str,
    kwargs: dict,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    grad: str,
    training: str,
    name: str = "imported",
) -> dict:
    """Write the checkpoint of the model ``reference(**kwargs)`` with the weights of ``weights``;
    return its spec."""
    model = factory.build(reference, kwargs)
    factory.load_weights(model, factory.read_weights(weights), f"weights file {weights}")
    spec = {
        "arch": "factory",
        "factory": reference,
        "kwargs": dict(kwargs),
        "training": training,
        "grad": grad,
        "name": name,
        "source": {"file": str(weights), "md5": md5_of(Path(weights)), "layout": "state_dict"},
    }
    save_checkpoint(out, model, spec, epoch=0.0, metrics={}, profile="import")
    return spec
