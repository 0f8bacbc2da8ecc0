"""Model construction from a config spec: the MDEQ, the same-size deep baselines, and a user's model
built by its factory (deqrobust.models.factory)."""

from __future__ import annotations

from torch import nn

from deqrobust.errors import ConfigError

ARCHITECTURES = ("mdeq", "preact_resnet18", "wrn34_10", "factory")


def build_model(spec: dict) -> nn.Module:
    """Build the model described by ``spec`` (keys ``arch`` and, for MDEQs, ``size``; for a user's
    model ``factory`` and its ``kwargs``)."""
    from deqrobust.models import baselines
    from deqrobust.models.mdeq import MDEQ, SIZES

    arch = spec.get("arch")
    if arch == "mdeq":
        size = spec.get("size", "tiny")
        if size not in SIZES:
            raise ConfigError(f"unknown MDEQ size {size!r}; valid sizes: {', '.join(SIZES)}")
        return MDEQ(size)
    if arch == "preact_resnet18":
        return baselines.PreActResNet18(width=spec.get("width") or 64)
    if arch == "wrn34_10":
        return baselines.WideResNet(depth=34, widen_factor=10)
    if arch == "factory":
        from deqrobust.models import factory

        return factory.build(spec["factory"], spec.get("kwargs"))
    raise ConfigError(f"unknown architecture {arch!r}; valid architectures: {', '.join(ARCHITECTURES)}")


def describe_architectures() -> list[tuple[str, dict]]:
    from deqrobust.models.mdeq import SIZES

    rows = [(f"mdeq-{size}", {"arch": "mdeq", "size": size}) for size in SIZES]
    rows += [
        ("preact_resnet18-w8", {"arch": "preact_resnet18", "width": 8}),
        ("preact_resnet18", {"arch": "preact_resnet18"}),
        ("wrn34_10", {"arch": "wrn34_10"}),
    ]
    return rows
