"""The printed tables of a report, one renderer per section."""

from __future__ import annotations


def _fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    body = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([f"\n## {title}", line, "-" * len(line), *body])


def render(report: dict) -> str:
    out = []
    m = report["machine"]
    out.append(
        f"# benchmarks/bench: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
        f"load average at start {m['load_average_start'][0]:.2f}"
    )
    if "calibration" in report:
        c = report["calibration"]
        out.append(
            table(
                f"calibration: {c['conv']}",
                ["layout", "median s", "GFLOP/s best", "GFLOP/s median"],
                [[k, v["median_s"], v["gflops_best"], v["gflops_median"]] for k, v in c["layouts"].items()],
            )
        )
    if "large" in report:
        g = report["large"]
        out.append(
            table(
                f"DEQ-Large, batch {g['batch']} ({g['gflop_per_f_per_image']:.3f} GFLOP per f per image; "
                f"{g['f_applications_forward_grad']} f applications in forward+grad)",
                ["computation", "median s", "images/s", "GFLOP", "GFLOP/s", "of conv (interleaved)", "of calibration"],
                [
                    [
                        k,
                        v["median_s"],
                        v["images_per_s"],
                        v["gflop"],
                        v["gflops"],
                        v["fraction_of_interleaved_conv"],
                        v["fraction_of_calibration"],
                    ]
                    for k, v in g["rows"].items()
                ],
            )
        )
        out.append(
            f"target: forward + exact input gradient >= 60% of the conv throughput: "
            f"{'met' if g['target_met'] else 'NOT met'}"
        )
    if "f_cost" in report:
        fc = report["f_cost"]
        rows = [
            [
                k,
                v["parameters"],
                v["state_size"],
                v["gflop_per_image"],
                v["median_s"],
                v["gflops"],
                v["time_vs_first"],
                v["channels_last"],
            ]
            for k, v in fc["sizes"].items()
        ]
        out.append(
            table(
                f"one f per size, batch {fc['batch']}",
                ["size", "parameters", "state", "GFLOP/image", "median s", "GFLOP/s", "time vs first", "NHWC"],
                rows,
            )
        )
    if "threading" in report:
        t = report["threading"]
        rows = [
            [
                k,
                v["large_f"],
                v.get("large_f_vs_1_thread"),
                v["small_forward_grad"],
                v.get("small_vs_1_thread"),
                v["rounds"],
            ]
            for k, v in t["rows"].items()
        ]
        out.append(
            table(
                f"threads and OpenMP wait policy (subprocesses, alternating; DEQ-Large f batch {t['large_batch']}, "
                f"{t['size']} forward+exact grad batch {t['batch']})",
                ["variant", "large f s", "vs 1 thread", f"{t['size']} s", "vs 1 thread", "rounds"],
                rows,
            )
        )
    if "training" in report:
        t = report["training"]
        rows = [
            [f"{size} {mode}", v["median_s"], v["images_per_s"], v["time_vs_standard"]]
            for size, modes in t["sizes"].items()
            for mode, v in modes.items()
        ]
        out.append(
            table(
                f"Trainer.step, batch {t['batch']} (exact gradient; PGD-AT {t['pgd_steps']} steps)",
                ["size / mode", "median s", "images/s", "time vs standard"],
                rows,
            )
        )
    if "evaluation" in report:
        e = report["evaluation"]
        rows = [
            [f"{size} {k}", v["median_s"], v["images_per_s"]]
            for size, cases in e["sizes"].items()
            for k, v in cases.items()
        ]
        out.append(
            table(
                f"evaluation: {e['attack']} through each estimator, batch {e['batch']}",
                ["size estimator@state", "median s", "images/s"],
                rows,
            )
        )
    if "jobs" in report:
        j = report["jobs"]
        rows = [
            [
                k,
                v["median_s"],
                v["images_per_s"],
                v["gflop_per_image"],
                v["gflops"],
                v["fraction_of_interleaved_conv"],
                v["fraction_of_model_conv"],
            ]
            for k, v in j["rows"].items()
        ]
        out.append(
            table(
                f"a profile's jobs ({j['profile_config']}; solves at tolerance 0) against the convolutions",
                ["case", "median s", "images/s", "GFLOP/image", "GFLOP/s", "of conv", "of model conv"],
                rows,
            )
        )
        ops = j["ops"]
        out.append(
            table(
                f"where the time of '{j['profiled']}' goes ({ops['wall_s']:.2f} s; outside operators "
                f"{ops['outside_operators']:.0%}; convolution {ops['groups']['convolution']:.0%}, group norm "
                f"{ops['groups']['group norm']:.0%}, matmul {ops['groups']['matmul']:.0%})",
                ["operator", "self s", "share", "calls"],
                [[o["op"], o["self_s"], o["share"], o["calls"]] for o in ops["top"]],
            )
        )
    if "early_stop" in report:
        r = report["early_stop"]
        rows = [
            [
                f"{size} n={n}",
                v["bound"],
                v["attack_step_ratio"],
                v["forward_ratio"],
                v["f_calls_ratio"],
                v["attack_step_within_bound"],
                v["forward_within_bound"],
            ]
            for size, d in r["sizes"].items()
            for n, v in d["rows"].items()
        ]
        out.append(
            table(
                f"attacking state n vs the full solve (intermediate, N={r['N']}, K={r['K']}): time ratios",
                ["size state", "bound", "attack step", "forward", "f calls", "step within", "fwd within"],
                rows,
            )
        )
    if "memory" in report:
        mm = report["memory"]
        rows = [
            [
                r["estimator"],
                r["N"],
                r.get("extra_mb"),
                r.get("broyden_factors_mb"),
                r.get("iterates_mb"),
                r.get("error"),
            ]
            for r in mm["rows"]
        ]
        out.append(
            table(
                f"peak memory of forward + input gradient, {mm['size']} batch {mm['batch']} (MB)",
                ["estimator", "N", "peak extra", "broyden U,V", "iterates", "error"],
                rows,
            )
        )
    if "workflow" in report:
        w = report["workflow"]
        rows = [
            [rule, v["jobs"], v["finished"], v["total_s"], v["median_s"], v["max_s"]] for rule, v in w["rules"].items()
        ]
        out.append(
            table(
                f"workflow wall times ({w['source']})",
                ["rule", "jobs", "finished", "total s", "median s", "max s"],
                rows,
            )
        )
        if w.get("wall_s") is not None:
            out.append(f"wall time of the invocations (first to last stamp of each log, summed): {w['wall_s']:.0f} s")
        if w.get("note"):
            out.append(f"note: {w['note']}")
    if "host" in report:
        out.append(render_host(report["host"]))
    if "gpu" in report:
        out.append(render_gpu(report["gpu"]))
    return "\n".join(out)


def render_host(h: dict) -> str:
    rows = [
        [name, h[name]["top_level_ops"], h[name]["events"], h[name]["syncs"]]
        for name in ("f", "forward", "attack_step")
    ]
    lines = [
        table(
            f"host-side work, {h['size']} batch {h['batch']} (forward {h['solver']['budget']} and backward "
            f"{h['backward_solver']['budget']} Broyden steps)",
            ["call", "top-level ops (kernels)", "profiler events", "host syncs"],
            rows,
        ),
        f"solver operators per forward step (besides f): {h['solver_ops_per_step']:.0f}; host syncs per forward "
        f"step: {h['syncs_per_forward_step']:.1f}; per attack step: {h['syncs_per_attack_step']}",
        f"host time per operator without arithmetic: {h['host_us_per_op']:.1f} us, so at least "
        f"{h['host_ms_per_f_lower_bound']:.2f} ms per f and {h['host_ms_per_forward_step_lower_bound']:.2f} ms per "
        "forward solver step; arithmetic per f at batch 96 on a GPU "
        f"at {h['target_tflops']:.0f} TFLOP/s: {h['gpu_ms_per_f_at_target']:.1f} ms "
        f"({h['gflop_per_f_batch96']:.0f} GFLOP)",
    ]
    return "\n".join(lines)


def render_gpu(g: dict) -> str:
    parts = g["parts"]
    cuda = g["cuda"]
    head = f"gpu check ({g['form']['name']} form, {g['form']['size']} batch {g['form']['batch']}; " + (
        f"{cuda['device']}, CUDA {cuda['torch_cuda']})" if cuda.get("available") else "no CUDA)"
    )
    rows = [[name, p.get("status", "-"), g["seconds"].get(name), p.get("reason")] for name, p in parts.items()]
    out = [table(head, ["part", "status", "seconds", "reason"], rows)]
    tests = parts.get("tests", {})
    if "cases" in tests:
        out.append(
            f"CUDA-only tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped "
            f"({tests['command']})"
        )
    par = parts.get("parity", {})
    if "logits_rel_diff" in par:
        out.append(
            f"float64 parity {par['devices'][0]} vs {par['devices'][1]} ({par['size']}, batch {par['batch']}): "
            f"logits rel. diff {par['logits_rel_diff']:.2e}, exact input gradient rel. diff "
            f"{par['gradient_rel_diff']:.2e} (cosine {par['gradient_cosine']:.12f})"
        )
    thr = parts.get("throughput", {})
    if "rows" in thr:
        out.append(
            table(
                f"Trainer.step, batch {thr['batch']}, PGD-{thr['pgd_steps']} AT through the exact gradient",
                ["model precision", "status", "s/step", "images/s", "TFLOP/s", "GFLOP/step", "peak GiB", "reason"],
                [
                    [
                        k,
                        v.get("status"),
                        v.get("seconds_per_step"),
                        v.get("images_per_s"),
                        v.get("tflops"),
                        v.get("gflop_per_step"),
                        v.get("peak_memory_gib"),
                        v.get("reason"),
                    ]
                    for k, v in thr["rows"].items()
                ],
            )
        )
    ev = parts.get("evaluation", {})
    if "rows" in ev:
        out.append(
            table(
                "one batch of a cell (clean scores, attack, adversarial scores)",
                ["estimator attack", "s", "s/image", "peak GiB", "clean", "adversarial"],
                [
                    [k, v["seconds"], v["seconds_per_image"], v["peak_memory_gib"]]
                    + [v["clean_final"], v["adversarial_final"]]
                    for k, v in ev["rows"].items()
                ],
            )
        )
    proj = parts.get("projection", {})
    if "precisions" in proj:
        rules = sorted({r for p in proj["precisions"].values() for r in p["hours_per_rule"]})
        out.append(
            table(
                f"projected hours of {proj['profile']} on this GPU, one job at a time ({proj['cells']} cells, "
                f"{proj['training_iterations']} iterations per model; assumptions in the JSON)",
                ["precision", *rules, "total h", "days"],
                [
                    [k, *[p["hours_per_rule"][r] for r in rules], p["hours_total"], p["days_total"]]
                    for k, p in proj["precisions"].items()
                ],
            )
        )
    smoke = parts.get("smoke", {})
    if "command" in smoke:
        out.append(f"smoke workflow: {smoke['command']} -> {smoke.get('jobs')} jobs, exit {smoke.get('returncode')}")
    out.append(f"overall: {g.get('status', '-')}")
    return "\n".join(out)
