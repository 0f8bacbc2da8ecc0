"""Section ``threading``: one thread against two under OpenMP's wait policies (one
subprocess per variant). Named ``threads`` so that it never shadows the standard library."""

from __future__ import annotations

import os
import statistics
from collections import defaultdict

import torch

from .common import input_gradient, logits_module, make_batch, make_model
from .probes import run_probe
from .settings import Settings
from .timing import interleaved

THREADING_VARIANTS = (
    ("1 thread", 1, {}),
    ("2 threads, OpenMP default wait", 2, {}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("2 threads, GOMP_SPINCOUNT=10000", 2, {"GOMP_SPINCOUNT": "10000"}),
)


def threading_probe(args: dict) -> dict:
    """Runs in a fresh subprocess (the wait policy is read when OpenMP loads): median
    seconds of one f of DEQ-Large and of forward + exact input gradient of a small size."""
    torch.set_num_threads(args["threads"])
    s = Settings(budget=args["budget"], backward_budget=args["backward_budget"])
    big = make_model(args["large_size"])
    xb, _ = make_batch(args["large_batch"])
    with torch.no_grad():
        injection = big.prepare(xb)
        z1 = big.f(big.init_state(xb), injection)
    small = make_model(args["size"])
    x, y = make_batch(args["batch"])
    model = logits_module(small, {"name": "exact"}, None, s)

    def one_f():
        with torch.no_grad(), big.cached_weights():
            return big.f(z1, injection)

    times = interleaved({"large_f": one_f, "small_forward_grad": lambda: input_gradient(model, x, y)}, args["repeats"])
    return {k: v["median_s"] for k, v in times.items()}


def threading(s: Settings) -> dict:
    size = s.sizes[0] if s.sizes else "mini"
    args = {
        "large_size": s.large_size,
        "large_batch": s.large_batch,
        "size": size,
        "batch": s.batch,
        "budget": s.budget,
        "backward_budget": s.backward_budget,
        "repeats": 3,
    }
    samples: dict[str, list[dict]] = defaultdict(list)
    rounds = 2 if s.quick else 3
    for r in range(rounds):
        k = r % len(THREADING_VARIANTS)
        for label, threads, extra_env in THREADING_VARIANTS[k:] + THREADING_VARIANTS[:k]:
            env = {key: v for key, v in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(extra_env)
            result = run_probe("threading", {**args, "threads": threads}, env)
            if "error" not in result:
                samples[label].append(result)
    rows = {}
    for label, runs in samples.items():
        rows[label] = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        rows[label]["rounds"] = len(runs)
    base = rows.get(THREADING_VARIANTS[0][0])
    for row in rows.values():
        if base:
            row["large_f_vs_1_thread"] = row["large_f"] / base["large_f"]
            row["small_vs_1_thread"] = row["small_forward_grad"] / base["small_forward_grad"]
    return {
        "large_batch": s.large_batch,
        "size": size,
        "batch": s.batch,
        "inherited_OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "rows": rows,
    }
