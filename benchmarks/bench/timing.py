"""Shared measurement: interleaved timing, FLOP counting, f-call counting, the operator
profile and the machine's description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from typing import Callable

import torch

MIN_SAMPLE_S = 0.3  # a sample repeats a short case until it lasts this long (timer and scheduler noise)


def interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, min_sample_s: float | None = None
) -> dict[str, dict]:
    """Seconds per call of each case, measured round robin with a rotating order.

    Each case is warmed up, then each round times one sample of every case; a sample of a
    case shorter than ``min_sample_s`` repeats it (``inner`` calls) and is divided by
    ``inner``. Medians over rounds, wall clock and process CPU time.
    """
    names = list(cases)
    floor = MIN_SAMPLE_S if min_sample_s is None else min_sample_s
    inner = {}
    for name in names:
        t0 = time.perf_counter()
        for _ in range(warmup):
            cases[name]()
        once = (time.perf_counter() - t0) / max(warmup, 1)
        inner[name] = max(1, min(50, int(floor / max(once, 1e-6)) + (once < floor)))
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner[name]):
                cases[name]()
            wall[name].append((time.perf_counter() - t0) / inner[name])
            cpu[name].append((time.process_time() - c0) / inner[name])
    return {
        n: {
            "median_s": statistics.median(wall[n]),
            "min_s": min(wall[n]),
            "max_s": max(wall[n]),
            "cpu_median_s": statistics.median(cpu[n]),
            "repeats": repeats,
            "inner": inner[n],
            "samples_s": [round(t, 6) for t in wall[n]],
        }
        for n in names
    }


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose autograd hooks refuse
    ``torch.autograd.grad`` with respect to a leaf (our input gradients); totals only."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(fn: Callable[[], object]) -> int:
    """Convolution and matmul FLOPs (forward and backward) of one call, by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


class CountCalls:
    """Counts applications of ``deq.f`` while installed (restores the method on exit)."""

    def __init__(self, deq):
        self.deq, self.calls = deq, 0

    def __enter__(self):
        original = self.deq.f

        def counted(z, injection):
            self.calls += 1
            return original(z, injection)

        self.deq.f = counted
        return self

    def __exit__(self, *exc):
        del self.deq.f  # the instance attribute; the class method shows through again


def machine() -> dict:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        flags = fields.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags.split()]
    except OSError:
        isa = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }


def profile_ops(fn: Callable[[], object], top: int = 12) -> dict:
    """Where one call's time goes: torch.profiler's operators by self CPU time, their share
    of the call's wall time, and the convolution and group-norm totals."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    kinds = {"convolution": ("conv",), "group norm": ("group_norm",), "matmul": ("addmm", "mm", "bmm", "linear")}
    groups = {
        k: sum(e.self_cpu_time_total for e in events if any(w in e.key for w in words)) / 1e6 / wall
        for k, words in kinds.items()
    }
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "wall_s": wall,
        "operators_s": total,
        "outside_operators": 1 - total / wall,
        "groups": groups,
        "top": [
            {
                "op": e.key,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / 1e6 / wall,
                "calls": e.count,
            }
            for e in events[:top]
        ],
    }
