"""``deqrobust train``: train one model of the config into a folder, resuming if it was interrupted.

Launched by ``torchrun --nproc_per_node N -m deqrobust.cli train ...`` it trains data-parallel
over N processes (deqrobust.distributed); rank 0 writes the outputs and prints the summary.
"""

from __future__ import annotations

import argparse

from deqrobust.commands import add_config_arguments, add_force_argument, refuse_overwrite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="name of a model of the config (models.<NAME>)")
    parser.add_argument("--out", required=True, help="output folder: checkpoint.pt, metrics.csv, summary.json")
    add_force_argument(parser, "finished model in --out (an unfinished one, with resume.pt, is resumed)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from deqrobust import config, training
    from deqrobust.checkpoint import RESUME
    from deqrobust.joblock import claim

    cfg = config.load(args.config, args.overrides)
    out = Path(args.out)
    # An unfinished training is resumed, a finished one kept. Under torchrun rank 0 alone looks: the
    # other ranks may start after it has already finished a nearly done training.
    if os.environ.get("RANK", "0") == "0" and not (out / RESUME).is_file():
        refuse_overwrite(out / "checkpoint.pt", args.force, "a finished model")
    with claim(args.out):  # one writer per model folder; stops if its snakemake dies
        summary = training.train(cfg, args.model, args.out)
    if summary is None:  # a rank > 0 of a data-parallel run (torchrun): rank 0 reports
        return 0
    key = summary["selected_by"]
    print(
        f"{args.model}: selected epoch {summary['best_epoch']:.2f} ({key} {summary['dev'][key]:.4f}), "
        f"test clean accuracy {summary['test_clean_acc']:.4f}; "
        f"{summary['iterations']} iterations in {summary['wall_seconds']:.0f} s"
    )
    return 0
