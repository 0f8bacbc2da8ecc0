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
        f"# benchmarks/bench.py: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
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
    return "\n".join(out)
