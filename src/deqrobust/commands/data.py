"""``deqrobust data``: import or download CIFAR-10, verify it, carve the development split."""

from __future__ import annotations

import argparse
from pathlib import Path

from deqrobust import config, data
from deqrobust.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--archive", help="local cifar-10-python.tar.gz (overrides data.archive; offline path)")


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, args.overrides)
    record = data.prepare(cfg, archive=args.archive)
    root = Path(cfg["data"]["root"])
    kind = "official" if record["official"] else "NOT the official archive"
    print(
        f"CIFAR-10 ready in {root / data.FOLDER} (MD5 {record['archive_md5']}, {kind}); "
        f"{record['train_size']} training and {record['dev_size']} development images "
        f"({root / data.SPLIT_FILE})"
    )
    return 0
