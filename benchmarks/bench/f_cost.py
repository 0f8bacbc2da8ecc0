"""Section ``f_cost``: one f of each size, interleaved."""

from __future__ import annotations

import torch

from .common import make_batch, make_model
from .settings import Settings
from .timing import count_flops, interleaved


def f_cost(s: Settings) -> dict:
    cases, flops, info = {}, {}, {}
    for size in s.sizes:
        deq = make_model(size)
        x, _ = make_batch(s.batch)
        with torch.no_grad():
            injection = deq.prepare(x)
            z1 = deq.f(deq.init_state(x), injection)

        def one_f(deq=deq, z1=z1, injection=injection):
            with torch.no_grad(), deq.cached_weights():
                return deq.f(z1, injection)

        cases[size] = one_f
        flops[size] = count_flops(one_f)
        info[size] = {
            "parameters": sum(p.numel() for p in deq.parameters()),
            "state_size": deq.state_size,
            "channels_last": deq.channels_last(),
        }
    times = interleaved(cases, s.repeats)
    first = s.sizes[0] if s.sizes else None
    rows = {
        k: {
            **info[k],
            **t,
            "gflop_per_image": flops[k] / s.batch / 1e9,
            "gflops": flops[k] / t["median_s"] / 1e9,
            "time_vs_first": t["median_s"] / times[first]["median_s"],
        }
        for k, t in times.items()
    }
    return {"batch": s.batch, "sizes": rows}
