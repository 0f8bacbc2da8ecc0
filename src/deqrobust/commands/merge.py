"""``deqrobust merge``: evaluation cells into the tidy robustness table and the per-example outcomes."""

from __future__ import annotations

import argparse

from deqrobust import config
from deqrobust.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--cells", nargs="+", required=True, help="evaluation cell files")
    parser.add_argument("--early-exit", nargs="*", default=[], help="early-exit choices (select-exit outputs)")
    parser.add_argument("--out", required=True, help="CSV table to write")
    parser.add_argument(
        "--outcomes", help="also write the per-example outcomes (gzipped CSV) the report's paired tests read"
    )


def run(args: argparse.Namespace) -> int:
    from deqrobust.provenance import data_source
    from deqrobust.tidy import merge_outcomes, tabulate, write_outcomes, write_table

    cfg = config.load(args.config, args.overrides)  # the profile the cells belong to (its solver setting)
    outcomes = merge_outcomes(args.cells, args.early_exit, cfg)
    table = tabulate(outcomes).assign(**data_source(cfg))  # results.PROVENANCE_COLUMNS
    write_table(table, args.out)
    if args.outcomes:
        write_outcomes(outcomes, args.outcomes)
    print(
        f"{len(table)} rows from {len(args.cells)} cells -> {args.out}"
        + (f" (per-example outcomes -> {args.outcomes})" if args.outcomes else "")
    )
    return 0
