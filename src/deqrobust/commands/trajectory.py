"""``deqrobust trajectory``: the training dynamics of one trained DEQ, from the snapshots its
training kept (see deqrobust.trajectory)."""

from __future__ import annotations

import argparse

from deqrobust.commands import add_config_arguments, analysis_record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--snapshots", required=True, help="snapshots.json of a trained DEQ (beside its checkpoint)")
    parser.add_argument("--out", required=True, help="trajectory JSON to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from deqrobust import trajectory  # heavy imports stay out of `deqrobust --help`

    record = analysis_record(args, lambda cfg, device, progress: trajectory.run(cfg, args.snapshots, device, progress))
    trend = trajectory.trend(record)
    change = (
        "fewer than two snapshots after pretraining"
        if trend["residual"] is None
        else (f"log10 deployed residual, epoch {trend['first']:g} to {trend['last']:g}: {trend['residual'].summary()}")
    )
    print(
        f"trajectory of {record['model']['name']}: {len(record['snapshots'])} snapshots on {record['num_examples']} "
        f"images ({record['timing']['seconds']:.0f} s); {change}; wrote {args.out}"
    )
    return 0
