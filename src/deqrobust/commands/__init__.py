"""CLI subcommands; each module has ``add_arguments(parser)`` and ``run(args)``.

The argument helpers the subcommands share live here, not in ``deqrobust.cli``, so that
the CLI imports its commands and never the other way round.
"""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``-c FILE [-c FILE ...] [--set KEY=VALUE ...]``, read by ``deqrobust.config.load``."""
    parser.add_argument(
        "--config",
        "-c",
        action="append",
        required=True,
        metavar="FILE",
        help="profile config file (config/*.yaml); repeat to merge several, later ones win",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set training.epochs=2 (repeatable; the value is "
        "YAML, and a mapping is merged into the section it names)",
    )


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    """Inputs shared by the commands that read the merged results (figures, report)."""
    add_config_arguments(parser)
    parser.add_argument("--table", required=True, help="tidy table CSV (deqrobust merge)")
    parser.add_argument(
        "--analysis", nargs="*", default=[], metavar="JSON", help="fixed-point analyses (deqrobust analyze)"
    )


def add_force_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force``: replace a finished output (never needed under Snakemake, which removes a job's
    old outputs before it runs it)."""
    parser.add_argument("--force", action="store_true", help=f"replace an existing {what} (refused without it)")


def refuse_overwrite(path, force: bool, what: str) -> None:
    """ConfigError when ``path`` exists and ``--force`` was not given: finished work is never
    replaced silently."""
    from pathlib import Path

    from deqrobust.errors import ConfigError

    if Path(path).exists() and not force:
        raise ConfigError(f"{path} already holds {what}; give another --out, or add --force to replace it")


def analysis_record(args: argparse.Namespace, analyse) -> dict:
    """The shared body of the analysis commands (analyze, trajectory): load the config, seed torch,
    then ``analyse(cfg, device, progress)`` under the one-writer claim of ``--out`` and write its
    record there as JSON."""
    import torch  # heavy imports stay out of `deqrobust --help`

    from deqrobust.atomic import write_json
    from deqrobust.config import load
    from deqrobust.device import resolve_device
    from deqrobust.joblock import claim

    cfg = load(args.config, args.overrides)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    with claim(args.out):  # one writer; stops if its snakemake dies
        record = analyse(cfg, resolve_device(cfg), not args.no_progress)
        write_json(args.out, record)
    return record
