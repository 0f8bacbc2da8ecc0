"""Section ``host``: the host-side costs that would dominate on a GPU, measured on the CPU.

On a GPU the arithmetic of one f of DEQ-Large at batch 96 (79 GFLOP) takes about 2.4 ms at the
33 TFLOP/s the paper profile needs; whatever the host does per f (Python, the dispatcher, one
kernel launch per operator) and every device synchronisation in the solver loop (``bool()`` of a
tensor, ``.item()``, ``.cpu()``) then counts against it. Three measurements, none of which needs
a GPU:

- operators per f, per solver step and per attack step (forward + exact input gradient), from
  torch.profiler: top-level operators are the kernels a GPU would be sent;
- synchronisations per step: the profiler's ``aten::is_nonzero``, ``aten::item`` and
  ``aten::_local_scalar_dense`` calls (each reads a device value on the host);
- the host cost of one operator with (almost) no arithmetic: one-element ``add``, ``where`` and
  ``norm`` on the CPU, Python and dispatch alone. Times the number of kernels, it is a lower bound
  of the host time per f on a GPU (a CUDA launch adds a few microseconds more). The ``meta``
  device is no proxy: its shape functions run more Python than a real kernel's dispatch.
"""

from __future__ import annotations

import collections
import time

import torch
import torch.nn.functional as F

from deqrobust.deq_logits import DEQLogits
from deqrobust.estimators import build_estimator
from deqrobust.models.mdeq import MDEQ

from .common import make_batch
from .settings import Settings
from .timing import count_flops

SYNC_OPS = ("aten::is_nonzero", "aten::item", "aten::_local_scalar_dense")
TARGET_TFLOPS = 33.0  # issue 20: DEQ-Large PGD-AT in 24 h on one GPU


def _events(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.events()


def op_counts(fn) -> dict:
    """Top-level operators (cpu_parent None), all profiler events, and host synchronisations of one call."""
    events = _events(fn)
    top = [e for e in events if e.cpu_parent is None]
    syncs = collections.Counter(e.name for e in events if e.name in SYNC_OPS)
    # is_nonzero (bool of a tensor) calls item, which calls _local_scalar_dense: the one read of device memory
    outer = syncs["aten::_local_scalar_dense"]
    return {
        "top_level_ops": len(top),
        "events": len(events),
        "syncs": outer,
        "sync_kinds": dict(syncs),
        "top_ops": collections.Counter(e.name for e in top).most_common(8),
    }


def dispatch_seconds(repeats: int = 3000) -> float:
    """Median host seconds of one small operator (one-element add, where, norm), over 5 rounds."""
    a, b = torch.ones(1), torch.ones(1)
    mask = torch.ones(1, dtype=torch.bool)
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.add(a, b)
            torch.where(mask, a, b)
            a.norm()
        rounds.append((time.perf_counter() - t0) / (3 * repeats))
    return sorted(rounds)[2]


def host(s: Settings) -> dict:
    size, batch = s.large_size, s.large_batch
    torch.manual_seed(0)
    deq = MDEQ(size).eval()
    x, y = make_batch(batch)
    solver = s.solver()
    with torch.no_grad():
        injection, z0 = deq.prepare(x), deq.init_state(x)

    def one_f():
        with torch.no_grad(), deq.cached_weights():
            deq.f(z0, injection)

    model = DEQLogits(deq, build_estimator({"name": "exact"}), None, solver, s.backward_solver())

    def forward():
        with torch.no_grad():
            model(x)

    def attack_step():
        xg = x.clone().requires_grad_()
        with torch.enable_grad():
            torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    one_f()
    attack_step()
    f_ops, fwd_ops, step_ops = op_counts(one_f), op_counts(forward), op_counts(attack_step)
    steps_fwd, steps_bwd = s.budget, s.backward_budget
    # the forward: f(z0), N Broyden steps (one f each), f(z*), the head
    solver_ops_per_step = (fwd_ops["top_level_ops"] - (steps_fwd + 2) * f_ops["top_level_ops"]) / steps_fwd
    per_op = dispatch_seconds()
    gflop_f_96 = count_flops(one_f) / batch * 96 / 1e9
    gpu_f_ms = gflop_f_96 / TARGET_TFLOPS  # GFLOP / (TFLOP/s) = ms
    return {
        "size": size,
        "batch": batch,
        "solver": solver,
        "backward_solver": s.backward_solver(),
        "f": f_ops,
        "forward": fwd_ops,
        "attack_step": step_ops,
        "solver_ops_per_step": solver_ops_per_step,
        "syncs_per_forward_step": fwd_ops["syncs"] / steps_fwd,
        "syncs_per_attack_step": step_ops["syncs"],
        "solver_steps_per_attack_step": steps_fwd + steps_bwd,
        "host_us_per_op": per_op * 1e6,
        "host_ms_per_f_lower_bound": per_op * f_ops["top_level_ops"] * 1e3,
        "host_ms_per_forward_step_lower_bound": per_op * (f_ops["top_level_ops"] + solver_ops_per_step) * 1e3,
        "gflop_per_f_batch96": gflop_f_96,
        "gpu_ms_per_f_at_target": gpu_f_ms,
        "target_tflops": TARGET_TFLOPS,
    }
