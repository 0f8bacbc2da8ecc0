"""``deqrobust select-exit``: the early-exit state of a DEQ, chosen on the dev split."""

from __future__ import annotations

import argparse

from deqrobust import config
from deqrobust.commands import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a DEQ")
    parser.add_argument("--out", required=True, help="JSON file recording the choice")


def run(args: argparse.Namespace) -> int:
    from deqrobust.evaluation import select_exit
    from deqrobust.joblock import claim

    cfg = config.load(args.config, args.overrides)
    with claim(args.out):  # one writer; stops if its snakemake dies
        record = select_exit(cfg, args.checkpoint, args.out)
    scores = ", ".join(f"{n}: {d['clean_acc']:.3f}/{d['robust_acc']:.3f}" for n, d in record["dev"].items())
    print(
        f"{record['model']}: early exit at state {record['state']} by rule {record['rule']} (dev clean/robust "
        f"accuracy by state: {scores}; final clean {record['final_clean_acc']:.3f}); strongest attack at state "
        f"{record['strongest_attack_state']}"
    )
    return 0
