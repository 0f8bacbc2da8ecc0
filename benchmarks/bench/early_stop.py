"""Section ``early_stop``: attacking state n against the bound (n + K + 1) / (N + K + 1)."""

from __future__ import annotations

from .common import forward_only, input_gradient, logits_module, make_batch, make_model
from .settings import Settings
from .timing import CountCalls, interleaved


def early_stop(s: Settings) -> dict:
    """Attack step (forward + input gradient) and forward alone at state n against the
    final state."""
    k, n_full = s.unroll_k, s.budget
    spec = {"name": "intermediate", "lam": 0.5, "k": k}
    out = {}
    for size in s.sizes:
        deq = make_model(size)
        x, y = make_batch(s.batch)
        models = {n: logits_module(deq, spec, n, s) for n in s.early_states}
        models["final"] = logits_module(deq, spec, None, s)
        calls, cases = {}, {}
        for n, model in models.items():
            with CountCalls(deq) as counter:
                forward_only(model, x)
            calls[n] = counter.calls
            cases[f"grad@{n}"] = lambda model=model: input_gradient(model, x, y)
            cases[f"forward@{n}"] = lambda model=model: forward_only(model, x)
        times = interleaved(cases, s.repeats)
        t = lambda kind, n: times[f"{kind}@{n}"]["median_s"]
        rows = {}
        for n in s.early_states:
            bound = (n + k + 1) / (n_full + k + 1)
            grad, fwd = t("grad", n) / t("grad", "final"), t("forward", n) / t("forward", "final")
            rows[str(n)] = {
                "bound": bound,
                "attack_step_ratio": grad,
                "forward_ratio": fwd,
                "f_calls_forward": calls[n],
                "f_calls_ratio": calls[n] / calls["final"],
                "attack_step_within_bound": grad <= bound,
                "forward_within_bound": fwd <= bound,
            }
        out[size] = {
            "rows": rows,
            "f_calls_forward_final": calls["final"],
            "attack_step_final_s": t("grad", "final"),
            "forward_final_s": t("forward", "final"),
            "times": {kk: {kkk: v[kkk] for kkk in ("median_s", "min_s", "repeats")} for kk, v in times.items()},
        }
    return {
        "estimator": spec,
        "N": n_full,
        "K": k,
        "batch": s.batch,
        "bound": "(n + K + 1) / (N + K + 1) of the full-solve attack step",
        "sizes": out,
    }
