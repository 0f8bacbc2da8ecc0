"""``deqrobust models``: every architecture and size with its parameter count."""

from __future__ import annotations

import argparse

from deqrobust.models import build_model, describe_architectures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    del args
    print(f"{'model':<24}{'parameters':>14}{'state size':>14}")
    for name, spec in describe_architectures():
        model = build_model(spec)
        params = sum(p.numel() for p in model.parameters())
        state = getattr(model, "state_size", None)
        print(f"{name:<24}{params:>14,}{(f'{state:,}' if state else '-'):>14}")
    return 0
