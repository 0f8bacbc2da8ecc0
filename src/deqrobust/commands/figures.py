"""``deqrobust figures``: PNG figures and the main table (main.md, main.tex) from the merged results."""

from __future__ import annotations

import argparse

from deqrobust.commands import add_results_arguments
from deqrobust.config import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_results_arguments(parser)
    parser.add_argument(
        "--trajectory",
        nargs="*",
        default=[],
        metavar="JSON",
        help="training trajectories (deqrobust trajectory): the training-dynamics figure",
    )
    parser.add_argument(
        "--training-curves",
        nargs="*",
        default=[],
        metavar="CSV",
        help="the trained models' metrics.csv (deqrobust train): the learning curves against the profile's aims",
    )
    parser.add_argument("--out-dir", required=True, help="folder for the PNGs, main.md and main.tex")


def run(args: argparse.Namespace) -> int:
    import matplotlib  # heavy imports stay out of `deqrobust --help`

    matplotlib.use("Agg")
    from deqrobust import aims, analysis, figures, tidy, trajectory
    from deqrobust.instances import model_aims

    cfg = load(args.config, args.overrides)
    table = tidy.profile_rows(tidy.load_table(args.table), cfg)  # the profile's solver setting
    written = figures.write_all(
        table,
        [analysis.load(p) for p in args.analysis],
        args.out_dir,
        cfg["profile"],
        [trajectory.load(p) for p in args.trajectory],
        aims.learning_curves(args.training_curves, cfg),
        model_aims(cfg),
    )
    print(f"wrote {len(written)} files to {args.out_dir}")
    return 0
