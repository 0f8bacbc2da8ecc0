"""The ``deqrobust`` command: one subcommand per workflow step.

Each subcommand lives in ``deqrobust.commands.<name>`` with ``add_arguments(parser)`` and
``run(args)``; command modules keep their heavy imports inside ``run`` so that building
the parser (and ``deqrobust --help``) stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from deqrobust import __version__
from deqrobust.atomic import refused
from deqrobust.errors import ConfigError

COMMANDS = {
    "data": "download or import CIFAR-10, verify it and carve the development split",
    "models": "list every model size with its parameter count and state size",
    "train": "train one model of the config (standard, PGD-AT or FGSM-AT), resumable",
    "import": "import a checkpoint trained with the authors' code (their MDEQ-LARGE/XL) instead of training",
    "select-exit": "choose the early-exit state of a DEQ by PGD robust accuracy on the dev split",
    "evaluate": "run one cell of the estimator x attack matrix on one checkpoint, resumable",
    "merge": "merge evaluation cells into the tidy robustness table",
    "analyze": "fixed-point analysis: residual traces and per-state accuracy, clean and adversarial",
    "trajectory": "training dynamics of a trained DEQ: residuals, accuracy and alignment at every snapshot",
    "figures": "figures and tables from the merged results",
    "report": "the reproduction report: each claim of the paper against the measured figures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deqrobust", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"deqrobust.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ConfigError, OSError) as err:
        if isinstance(err, OSError) and (err := refused(err)) is None:  # only refused writes are the user's to fix
            raise
        print(f"deqrobust {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
