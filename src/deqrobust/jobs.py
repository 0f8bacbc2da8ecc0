"""What each job of a model needs: its runtime and memory by MDEQ size or baseline architecture,
and its GPUs. Torch-free: the rules read it for their ``resources``.
"""

from __future__ import annotations

from typing import NamedTuple

from deqrobust.instances import instance
from deqrobust.vocab import MDEQ


class Resources(NamedTuple):
    train_minutes: int  # runtime of a train job
    eval_minutes: int  # runtime of an evaluate, select_exit or analyze job
    mem_mb: int


# By MDEQ size (every one of deqrobust.sizes) and by baseline architecture; a cluster
# profile may override them per rule.
RESOURCES = {
    "mini": Resources(60, 30, 3000),
    "tiny": Resources(120, 60, 4000),
    "small": Resources(240, 120, 6000),
    "large": Resources(4320, 720, 16000),
    "xl": Resources(10080, 1440, 32000),
    "preact_resnet18": Resources(1440, 240, 16000),
    "factory": Resources(30, 720, 16000),  # a user's DEQ: imported, not trained; a cluster profile may override
    "wrn34_10": Resources(4320, 720, 32000),
}


def resources(cfg: dict, model: str) -> Resources:
    spec = cfg["models"][instance(cfg, model).model]
    return RESOURCES[spec["size"] if spec["arch"] == MDEQ else spec["arch"]]


def gpus(cfg: dict) -> int:
    """GPUs per model job: one when the profile runs on CUDA."""
    return 1 if cfg["require_gpu"] or cfg["device"].startswith("cuda") else 0
