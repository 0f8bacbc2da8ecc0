"""The command line: ``python benchmarks/bench --help`` (or ``python -m benchmarks.bench``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Callable

import torch

from deqrobust.atomic import write_json

from . import calibration, early_stop, evaluation, f_cost, gpu, host, jobs, large, memory, threads, training, workflow
from .probes import PACKAGE
from .render import render
from .settings import Settings
from .timing import machine

# name -> (function, whether it takes the calibration); the order is the run order
SECTIONS: dict[str, tuple[Callable, bool]] = {
    "calibration": (calibration.calibration, False),
    "large": (large.large, True),
    "f_cost": (f_cost.f_cost, False),
    "threading": (threads.threading, False),
    "training": (training.training, False),
    "evaluation": (evaluation.evaluation, False),
    "jobs": (jobs.jobs, True),
    "early_stop": (early_stop.early_stop, False),
    "memory": (memory.memory, False),
    "workflow": (workflow.workflow_times, False),
    "host": (host.host, False),
    "gpu": (gpu.gpu, False),
}
DEFAULT_SKIPPED = ("workflow", "host", "gpu")  # run only when named (workflow: or given --workflow-times)
PROBES = {"memory": memory.memory_probe, "threading": threads.threading_probe}


def run(
    s: Settings,
    sections: list[str] | None = None,
    workflow_path: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    torch.set_num_threads(s.threads)
    wanted = list(sections or [k for k in SECTIONS if k not in DEFAULT_SKIPPED])
    if workflow_path and "workflow" not in wanted:
        wanted.append("workflow")
    unknown = [k for k in wanted if k not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    report: dict = {"format": "deqrobust-bench/1", "settings": asdict(s), "machine": machine(), "seconds": {}}
    needs_calibration = any(SECTIONS[k][1] or k == "calibration" for k in wanted)
    for name in (["calibration"] if needs_calibration else []) + [k for k in wanted if k != "calibration"]:
        started = time.perf_counter()
        function, takes_calibration = SECTIONS[name]
        if name == "workflow":
            if not workflow_path:
                continue
            report[name] = function(workflow_path)
        elif takes_calibration:
            report[name] = function(s, report["calibration"])
        else:
            report[name] = function(s)
        report["seconds"][name] = time.perf_counter() - started
        if echo:
            echo(render({"machine": report["machine"], name: report[name]}).split("\n", 1)[1])
    report["machine"]["load_average_end"] = os.getloadavg()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench",
        description="Benchmarks of the DEQ core (docs/performance.md, benchmarks/README.md).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small batches and few repeats (minutes instead of tens of minutes)"
    )
    parser.add_argument("--out", metavar="JSON", help="write every figure to this JSON file")
    parser.add_argument(
        "--sections",
        nargs="+",
        metavar="NAME",
        default=None,
        choices=SECTIONS,
        help=f"run only these sections ({', '.join(SECTIONS)}; calibration runs whenever one needs it)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        metavar="SIZE",
        default=None,
        help="MDEQ sizes of the f_cost/training/evaluation/early-stop sections (default: mini tiny)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch of the DEQ-Large section (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument(
        "--profile-config",
        metavar="YAML",
        default=None,
        help="the profile whose jobs the jobs section times (default: config/cpu.yaml)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active"),
        default=None,
        help="re-run under OMP_WAIT_POLICY=<policy> (read when OpenMP loads, so the process "
        "restarts itself); default: as inherited",
    )
    parser.add_argument(
        "--workflow-times",
        metavar="PATH",
        default=None,
        help="summarise a Snakemake run's per-rule wall times (benchmark TSVs or .snakemake/log)",
    )
    parser.add_argument(
        "--gpu-form",
        choices=("full", "reduced"),
        default=None,
        help="the gpu section's form: full (DEQ-Large, batch 96, on CUDA) or reduced (tiny sizes on the CPU, "
        "what CI runs); default: full where CUDA is available",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        default=None,
        help="seconds the gpu section may take; parts not started by then are reported as skipped (default 540)",
    )
    parser.add_argument("--probe", nargs=2, metavar=("NAME", "ARGS_JSON"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:  # a subprocess started by run_probe: one JSON line on stdout
        name, payload = args.probe
        print(json.dumps(PROBES[name](json.loads(payload))))
        return 0
    policy = (args.omp_wait_policy or "").upper()
    if policy and os.environ.get("OMP_WAIT_POLICY", "").upper() != policy:
        # OpenMP reads its wait policy once, when torch loads it: restart with it set.
        os.execve(
            sys.executable,
            [sys.executable, str(PACKAGE), *(sys.argv[1:] if argv is None else argv)],
            {**os.environ, "OMP_WAIT_POLICY": policy},
        )
    s = Settings.from_args(args)
    report = run(s, args.sections, args.workflow_times, echo=lambda text: print(text, flush=True))
    print(
        f"\nload average start {report['machine']['load_average_start'][0]:.2f}, "
        f"end {report['machine']['load_average_end'][0]:.2f}; sections took "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    )
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
