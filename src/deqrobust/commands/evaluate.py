"""``deqrobust evaluate``: one cell of the estimator x attack x state matrix."""

from __future__ import annotations

import argparse

from deqrobust import config
from deqrobust.commands import add_config_arguments
from deqrobust.vocab import COUPLINGS, FINAL, SolveSetting, State


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of the model to attack")
    parser.add_argument(
        "--estimator", required=True, help="estimator name from evaluation.estimators, or 'autograd' for baselines"
    )
    parser.add_argument("--attack", required=True, help="attack name from evaluation.attacks")
    parser.add_argument("--state", default=FINAL, help="attacked state: 'final', 'ensemble' or a solver step n")
    parser.add_argument(
        "--coupling",
        choices=COUPLINGS,
        help="both solvers' coupling for this cell, the attack and the scoring (default: the config's solver settings)",
    )
    parser.add_argument("--batch-size", type=int, help="evaluation batch of this cell (default: evaluation.batch_size)")
    parser.add_argument("--out", required=True, help="cell file (JSON) to write")


def run(args: argparse.Namespace) -> int:
    from deqrobust.evaluation import run_cell
    from deqrobust.joblock import claim

    cfg = config.load(args.config, args.overrides)
    state = State.parse(args.state, cfg["solver"]["budget"])
    setting = SolveSetting(args.coupling, args.batch_size)
    with claim(args.out):  # one writer per cell; stops if its snakemake dies
        cell = run_cell(cfg, args.checkpoint, args.estimator, args.attack, state, args.out, setting)
    adv = cell["adversarial"][FINAL]
    clean = cell["clean"][FINAL]
    print(
        f"{cell['model']} {args.estimator}@{args.state} {args.attack} ({cell['coupling']} coupling, batch "
        f"{cell['batch_size']}): clean {sum(clean) / len(clean):.3f}, "
        f"robust (final state) {sum(adv) / len(adv):.3f} on {len(adv)} images"
    )
    for warning in cell["warnings"]:
        print(f"AutoAttack warning: {warning}")
    return 0
