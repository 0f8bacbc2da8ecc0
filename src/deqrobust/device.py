"""The torch device a config asks for (kept out of ``deqrobust.config``, which is torch-free)."""

from __future__ import annotations

import torch

from deqrobust.errors import ConfigError
from deqrobust.plan import require_gpu_message


def resolve_device(cfg: dict) -> torch.device:
    """The configured device; a GPU-scale profile (``require_gpu``) refuses to start on a CPU."""
    name = cfg.get("device", "auto")
    has_cuda = torch.cuda.is_available()
    if cfg.get("require_gpu", False) and not has_cuda:
        raise ConfigError(require_gpu_message(cfg))
    if name == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device {name!r} is not valid; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not has_cuda:
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return torch.device(name)
