"""``deqrobust bench``: benchmarks of the DEQ core (see deqrobust.bench and docs/performance.md)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small batches and few repeats (minutes instead of tens of minutes)")
    parser.add_argument("--out", metavar="JSON", help="write every figure to this JSON file")
    parser.add_argument("--sections", nargs="+", metavar="NAME", default=None,
                        help="run only these sections (calibration is always run)")
    parser.add_argument("--sizes", nargs="+", metavar="SIZE", default=None,
                        help="MDEQ sizes of the training/evaluation/memory sections (default: mini tiny)")
    parser.add_argument("--batch", type=int, default=None, help="batch of the DEQ-Large section (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--omp-wait-policy", choices=("passive", "active"), default=None,
                        help="re-run under OMP_WAIT_POLICY=<policy> (read when OpenMP loads, so the process "
                             "restarts itself); default: as inherited")
    parser.add_argument("--workflow-times", metavar="PATH", default=None,
                        help="summarise a Snakemake run's per-rule wall times (benchmark TSVs or .snakemake/log)")


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    policy = (args.omp_wait_policy or "").upper()
    if policy and os.environ.get("OMP_WAIT_POLICY", "").upper() != policy:
        # OpenMP reads its wait policy once, when torch loads it: restart with it set.
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        argv = [sys.executable, "-m", "deqrobust.cli", "bench", *_bench_argv(sys.argv)]
        os.execve(sys.executable, argv, env)
    from deqrobust import bench  # heavy imports stay out of `deqrobust --help`

    return bench.main(args)


def _bench_argv(argv: list[str]) -> list[str]:
    """The arguments after the ``bench`` subcommand in this process's command line."""
    return argv[argv.index("bench") + 1:] if "bench" in argv else argv[1:]
