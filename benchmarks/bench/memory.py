"""Section ``memory``: peak memory of forward + input gradient against the solver steps
(one subprocess per configuration)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deqrobust.models.mdeq import MDEQ

from .common import input_gradient, logits_module, make_batch, make_model
from .probes import run_probe
from .settings import Settings


def memory_configs(s: Settings) -> list[tuple[str, dict, object, int]]:
    rows = []
    for n in s.memory_steps:
        rows += [
            ("exact", {"name": "exact"}, None, n),
            ("neumann(k=8)", {"name": "neumann", "lam": 1.0, "k": 8}, None, n),
            (f"unroll(k={s.unroll_k})", {"name": "unroll", "lam": 0.5, "k": s.unroll_k}, None, n),
            ("adjoint lockstep@N", {"name": "adjoint", "variant": "lockstep"}, n, n),
            ("autograd through N steps", {"name": "intermediate", "lam": 1.0, "k": n - 1}, 0, n),
        ]
    return rows


def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_probe(args: dict) -> dict:
    """Runs in a fresh subprocess: peak RSS growth of one forward + input gradient."""
    torch.set_num_threads(args["threads"])
    s = Settings(budget=args["budget"], backward_budget=args["backward_budget"])
    deq = make_model(args["size"])
    x, y = make_batch(args["batch"])
    model = logits_module(deq, args["spec"], args["state"], s, budget=args["budget"])
    input_gradient(model, x, y)  # warm-up: lazy initialisations are not the estimator's
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    base = _status_kb("VmRSS")
    input_gradient(model, x, y)
    peak = _status_kb("VmHWM")
    return {
        "baseline_mb": base / 1024 if base else None,
        "peak_mb": peak / 1024 if peak else None,
        "extra_mb": (peak - base) / 1024 if peak and base and reset else None,
        "hwm_reset": reset,
    }


def memory(s: Settings) -> dict:
    state_size = MDEQ(s.memory_size).state_size
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    rows = []
    for label, spec, state, n in memory_configs(s):
        args = {
            "size": s.memory_size,
            "batch": s.batch,
            "spec": spec,
            "state": state,
            "budget": n,
            "backward_budget": s.backward_budget,
            "threads": s.threads,
        }
        result = run_probe("memory", args, env)
        if "error" in result:
            rows.append({"estimator": label, "N": n, **result})
            continue
        factors = 2 * s.batch * state_size * n * 4 / 2**20
        rows.append(
            {
                "estimator": label,
                "N": n,
                **result,
                "broyden_factors_mb": factors,
                "iterates_mb": (n * s.batch * state_size * 4 / 2**20) if state is not None else 0.0,
            }
        )
    return {
        "size": s.memory_size,
        "batch": s.batch,
        "state_size": state_size,
        "measure": "VmHWM - VmRSS around one forward + input gradient after a warm-up, HWM reset by "
        "/proc/self/clear_refs, "
        "glibc mmap threshold 128 KiB so freed tensors leave the RSS",
        "rows": rows,
    }
