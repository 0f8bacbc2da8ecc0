"""Section ``large``: DEQ-Large's f, forward and forward + exact input gradient against the
interleaved calibration convolution."""

from __future__ import annotations

import torch

from .calibration import reference_conv
from .common import forward_only, input_gradient, logits_module, make_batch, make_model
from .settings import Settings
from .timing import CountCalls, count_flops, interleaved


def large(s: Settings, calib: dict) -> dict:
    deq = make_model(s.large_size)
    x, y = make_batch(s.large_batch)
    model = logits_module(deq, {"name": "exact"}, None, s)
    with torch.no_grad():
        injection = deq.prepare(x)
        z1 = deq.f(deq.init_state(x), injection)

    def one_f():
        with torch.no_grad(), deq.cached_weights():
            return deq.f(z1, injection)

    conv, conv_flops = reference_conv(s, calib)
    cases = {
        "conv_reference": conv,
        "f": one_f,
        "forward": lambda: forward_only(model, x),
        "forward_exact_input_grad": lambda: input_gradient(model, x, y),
    }
    flops = {"conv_reference": conv_flops, **{k: count_flops(cases[k]) for k in list(cases)[1:]}}
    with CountCalls(deq) as counter:
        input_gradient(model, x, y)
    times = interleaved(cases, s.large_repeats)
    ref = conv_flops / times["conv_reference"]["median_s"] / 1e9
    rows = {}
    for name, t in times.items():
        gflops = flops[name] / t["median_s"] / 1e9
        rows[name] = {
            **t,
            "gflop": flops[name] / 1e9,
            "gflops": gflops,
            "images_per_s": None if name == "conv_reference" else s.large_batch / t["median_s"],
            "fraction_of_interleaved_conv": gflops / ref,
            "fraction_of_calibration": gflops / calib["gflops"],
        }
    per_image_f = flops["f"] / s.large_batch / 1e9
    return {
        "size": s.large_size,
        "batch": s.large_batch,
        "solver": s.solver(),
        "backward_solver": s.backward_solver(),
        "gflop_per_f_per_image": per_image_f,
        "f_applications_forward_grad": counter.calls,
        "target_fraction": 0.60,
        "rows": rows,
        "target_met": rows["forward_exact_input_grad"]["fraction_of_interleaved_conv"] >= 0.60,
    }
