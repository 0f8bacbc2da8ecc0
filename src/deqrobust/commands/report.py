"""``deqrobust report``: the reproduction report (and optionally a metrics JSON) from the merged results."""

from __future__ import annotations

import argparse

from deqrobust.commands import add_results_arguments
from deqrobust.config import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_results_arguments(parser)
    parser.add_argument(
        "--outcomes",
        help="per-example outcomes (deqrobust merge --outcomes); without them the "
        "paired tests of claims 2-5 are not run",
    )
    parser.add_argument(
        "--early-exit",
        nargs="*",
        default=[],
        metavar="JSON",
        help="development-selection records (deqrobust select-exit): claim 3's state",
    )
    parser.add_argument(
        "--trajectory",
        nargs="*",
        default=[],
        metavar="JSON",
        help='training trajectories (deqrobust trajectory): the section "Along training"',
    )
    parser.add_argument(
        "--summary",
        nargs="*",
        default=[],
        metavar="JSON",
        help="training summaries (deqrobust train): the machine each model was trained on",
    )
    parser.add_argument("--out", required=True, help="report Markdown to write")
    parser.add_argument("--metrics", help="also write headline accuracies, verdicts and p-values to this JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from deqrobust import analysis, report, trajectory  # heavy imports stay out of `deqrobust --help`
    from deqrobust.atomic import write_json, write_text
    from deqrobust.tidy import load_outcomes, load_table

    cfg = load(args.config, args.overrides)
    table = load_table(args.table)
    analyses = {p: analysis.load(p) for p in args.analysis}
    outcomes = load_outcomes(args.outcomes) if args.outcomes else None
    exits = {p: json.loads(Path(p).read_text()) for p in args.early_exit}
    report.check_runs(table, outcomes, {**analyses, **exits})  # one run's inputs, or name the odd one
    analyses = list(analyses.values())
    results = report.findings(analyses, cfg, outcomes, {r["model"]: r for r in exits.values()})
    trajectories = [trajectory.load(p) for p in args.trajectory]
    machines = report.load_machines(args.summary)
    write_text(args.out, report.render(table, analyses, cfg, results, outcomes, trajectories, machines))
    if args.metrics:
        write_json(args.metrics, report.metrics(table, cfg, results, outcomes, machines))
    for r in results:
        print(f"claim {r.claim}: {r.verdict}")
    return 0
