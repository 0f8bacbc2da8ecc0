"""``deqrobust merge``: evaluation cells into the tidy robustness table."""
from __future__ import annotations

import argparse

from deqrobust import config
from deqrobust.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--cells", nargs="+", required=True, help="evaluation cell files")
    parser.add_argument("--early-exit", nargs="*", default=[], help="early-exit choices (select-exit outputs)")
    parser.add_argument("--out", required=True, help="CSV table to write")


def run(args: argparse.Namespace) -> int:
    from deqrobust.results import merge, write_table

    config.load(args.config, args.overrides)   # validates the profile the cells belong to
    table = merge(args.cells, args.early_exit)
    write_table(table, args.out)
    print(f"{len(table)} rows from {len(args.cells)} cells -> {args.out}")
    return 0
