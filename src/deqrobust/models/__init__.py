"""Model construction from a config spec: the MDEQ and the same-size deep baselines."""

from __future__ import annotations

from torch import nn

from deqrobust.errors import ConfigError

ARCHITECTURES = ("mdeq", "preact_resnet18", "wrn34_10")


def build_model(spec: dict) -> nn.Module:
    """Build the model described by ``spec`` (keys ``arch`` and, for MDEQs, ``size``)."""
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
    raise ConfigError(f"unknown architecture {arch!r}; valid architectures: {', '.join(ARCHITECTURES)}")


def is_deq(model: nn.Module) -> bool:
    return hasattr(model, "f") and hasattr(model, "head") and hasattr(model, "prepare")


def describe_architectures() -> list[tuple[str, dict]]:
    from deqrobust.models.mdeq import SIZES

    rows = [(f"mdeq-{size}", {"arch": "mdeq", "size": size}) for size in SIZES]
    rows += [
        ("preact_resnet18-w8", {"arch": "preact_resnet18", "width": 8}),
        ("preact_resnet18", {"arch": "preact_resnet18"}),
        ("wrn34_10", {"arch": "wrn34_10"}),
    ]
    return rows
