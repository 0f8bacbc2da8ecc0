"""Section ``calibration``: GFLOP/s of a large 3x3 convolution, the machine's reference."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .settings import Settings
from .timing import interleaved


def conv_case(batch: int, channels: int, size: int, channels_last: bool) -> tuple[Callable[[], object], int]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    w = torch.randn(channels, channels, 3, 3, generator=gen) * 0.02
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            return F.conv2d(x, w, padding=1)

    return run, 2 * batch * channels * channels * 9 * size * size


def calibration(s: Settings) -> dict:
    cases, flops = {}, {}
    for layout, cl in (("contiguous", False), ("channels_last", True)):
        cases[layout], flops[layout] = conv_case(s.calib_batch, s.calib_channels, s.calib_size, cl)
    times = interleaved(cases, max(s.repeats, 5))
    rows = {
        k: {
            **v,
            "gflop": flops[k] / 1e9,
            "gflops_best": flops[k] / v["min_s"] / 1e9,
            "gflops_median": flops[k] / v["median_s"] / 1e9,
        }
        for k, v in times.items()
    }
    best = max(rows, key=lambda k: rows[k]["gflops_best"])
    return {
        "conv": f"3x3, batch {s.calib_batch}, {s.calib_channels}->{s.calib_channels} at {s.calib_size}x{s.calib_size}",
        "layouts": rows,
        "best_layout": best,
        "gflops": rows[best]["gflops_best"],
    }


def reference_conv(s: Settings, calib: dict) -> tuple[Callable[[], object], int]:
    return conv_case(s.calib_batch, s.calib_channels, s.calib_size, calib["best_layout"] == "channels_last")
