"""The MDEQ sizes, as plain data.

Torch-free on purpose: the config checks (``deqrobust.plan``, imported by the Snakefile)
refuse an unknown size and give each size its cluster resources from this table, and
``deqrobust.models.mdeq`` builds the networks from it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MDEQSize:
    channels: tuple[int, ...]
    head_channels: tuple[int, ...]
    final_width: int
    dropout: float
    downsample: int = 0  # stride-2 stem convolutions before the equilibrium layer


SIZES: dict[str, MDEQSize] = {
    # Ours, for CPU profiles: two narrow branches on a stride-2 stem (16x16 and 8x8 states),
    # about 6x fewer FLOPs per f than tiny.
    "mini": MDEQSize((16, 32), (8, 16), 128, 0.0, downsample=1),
    # Ours, for CPU work: two branches of 24 channels (like locuslab's TINY).
    "tiny": MDEQSize((24, 24), (8, 16), 200, 0.0),
    # Ours, a four-branch model small enough for CPU training in minutes.
    "small": MDEQSize((16, 32, 64, 128), (8, 16, 32, 64), 400, 0.1),
    "large": MDEQSize((32, 64, 128, 256), (14, 28, 56, 112), 1680, 0.22),
    "xl": MDEQSize((72, 144, 288, 576), (20, 40, 80, 160), 1800, 0.22),
}
