"""``deqrobust import``: a checkpoint of the authors' training code (deqrobust.authors), or a user's
DEQ given by its factory and weights (deqrobust.user_models), as one of ours.

The module is named after its command (cli.py imports ``deqrobust.commands.<command>``).
"""

from __future__ import annotations

import argparse

from deqrobust.commands import add_force_argument, refuse_overwrite

EPILOG = """\
SOURCE is a file the authors' MDEQ-Vision training wrote (either training folder of
minicheshire/DEQ-White-Box-Robustness): checkpoint_<epoch>.pth.tar, model_best.pth.tar or
final_state.pth.tar, with or without the "module." prefix of DataParallel. LARGE or XL is
read from the tensors. Nothing in the file is executed: it is loaded with
torch.load(weights_only=True), and a file that needs more is refused, naming what it asks
for. Every tensor must map onto our MDEQ exactly once with our shape; a missing, extra or
misshapen tensor is refused by name.

--grad and --training are not in the file and are not guessed: --grad is the gradient
mode the model was trained with (the training folder: deq-exact-trained -> exact,
deq-unrolling-trained -> unroll); it decides the model's own output (exact: h(f(z*));
unroll: h of the damped unroll of the config's training.unroll). --training is standard
or pgd (PGD-AT).

OUT is a deqrobust checkpoint (the spec records the size, --training, --grad, --name and
the source: file, md5, layout, prefix and the file's epoch/perf when it has them). Every
command that takes --checkpoint reads it, e.g.:
  deqrobust evaluate -c config/config.yaml --checkpoint OUT --estimator exact --attack pgd10 --out cell.json
  deqrobust analyze  -c config/config.yaml --checkpoint OUT --out analysis.json

A user's own DEQ: --factory package.module:function (called with --kwargs, a YAML mapping)
must return a model that meets the DEQ protocol (prepare, f, init_state, head on flat states:
deqrobust.protocol; a TorchDEQ model through deqrobust.adapters.torchdeq.wrap), and --weights is
its state dict, read with weights_only. README, "Evaluate your own DEQ":
  deqrobust import --factory mypkg.models:build --kwargs '{width: 32}' --weights w.pt \
      --grad exact --training pgd --out OUT

The whole paper matrix, early exit, analysis and report in one command: the workflow
imports a model with `checkpoint: SOURCE` (and its size, training and grad) in the config
itself, e.g. with config/import.yaml (README, "Evaluate your own checkpoint"):
  snakemake --cores 8 --configfile config/import.yaml \\
      --config 'models={authors-large: {checkpoint: SOURCE, grad: exact, training: pgd}}'
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from deqrobust.user_models import GRADS, TRAININGS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("source", metavar="SOURCE", nargs="?", help="the authors' checkpoint file (.pth.tar)")
    parser.add_argument("--factory", metavar="MODULE:FUNCTION", help="a user's DEQ: the function that builds it")
    parser.add_argument("--kwargs", default="{}", help="the factory's keyword arguments, a YAML mapping")
    parser.add_argument("--weights", help="the user's DEQ: its state dict (a torch file)")
    parser.add_argument("--grad", required=True, choices=GRADS, help="gradient mode the model was trained with")
    parser.add_argument("--training", required=True, choices=TRAININGS, help="standard training, PGD-AT or FGSM-AT")
    parser.add_argument(
        "--out", required=True, metavar="OUT", help="deqrobust checkpoint to write (e.g. checkpoint.pt)"
    )
    parser.add_argument(
        "--name",
        default="imported",
        help="model name in the spec and in every result (default: imported); a model name of the "
        "config makes evaluation use that model's training section",
    )
    add_force_argument(parser, "checkpoint at OUT")


def run(args: argparse.Namespace) -> int:
    from deqrobust.errors import ConfigError

    if (args.source is None) == (args.factory is None) or (args.factory is None) != (args.weights is None):
        raise ConfigError("give either SOURCE (the authors' checkpoint) or --factory with --weights (your own DEQ)")
    refuse_overwrite(args.out, args.force, "a checkpoint")
    if args.factory is not None:
        return _import_factory(args)
    from deqrobust.authors import TRAININGS, import_checkpoint

    if args.training not in TRAININGS:
        raise ConfigError(f"--training {args.training!r}: the authors' code trains {' or '.join(TRAININGS)}")
    spec = import_checkpoint(args.source, args.out, args.grad, args.training, args.name)
    source = spec["source"]
    extra = "".join(f", {key} {source[key]}" for key in ("epoch", "perf") if key in source)
    print(
        f"{args.out}: MDEQ-{spec['size'].upper()} ({spec['training']}, grad {spec['grad']}, name {spec['name']}) "
        f"from {source['file']} (md5 {source['md5']}, {source['layout']}{extra})"
    )
    return 0


def _import_factory(args: argparse.Namespace) -> int:
    from deqrobust.errors import ConfigError
    from deqrobust.schema import read_yaml
    from deqrobust.user_models import import_factory

    kwargs = read_yaml(args.kwargs)
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--kwargs {args.kwargs!r} is not a mapping; valid: e.g. '{{width: 32}}'")
    spec = import_factory(args.factory, kwargs, args.weights, args.out, args.grad, args.training, args.name)
    print(
        f"{args.out}: {spec['factory']}({kwargs}) ({spec['training']}, grad {spec['grad']}, name {spec['name']}) "
        f"from {spec['source']['file']} (md5 {spec['source']['md5']})"
    )
    return 0
