"""``deqrobust analyze``: fixed-point analysis and mechanism diagnostics of one DEQ checkpoint
(see deqrobust.analysis)."""

from __future__ import annotations

import argparse

from deqrobust.commands import add_config_arguments, analysis_record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt of a DEQ")
    parser.add_argument("--out", required=True, help="analysis JSON to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from deqrobust import analysis  # heavy imports stay out of `deqrobust --help`

    record = analysis_record(args, lambda cfg, device, progress: analysis.run(cfg, args.checkpoint, device, progress))
    clean, timing = record["inputs"]["clean"], record["timing"]
    print(
        f"analysis of {record['model']['name']}: {record['num_examples']} images, "
        f"clean never converged {clean['share_never_converged']:.1%}; gradients compared on "
        f"{record['diagnostics']['num_examples']} images ({timing['alignment_per_example']:.2f} s each), "
        f"batch dependence on a batch of {record['diagnostics']['batch_size']} ({timing['batch_dependence']:.0f} s); "
        f"wrote {args.out}"
    )
    return 0
