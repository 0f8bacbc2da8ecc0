"""Switchable speed options: each optimised module keeps its reference path behind a flag.

The flags let the equivalence tests compare optimised and reference outputs and let
``deqrobust bench`` measure what each optimisation buys (docs/performance.md).
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Callable, ContextManager, Iterator


@contextmanager
def _override(table: dict, kind: str, **flags) -> Iterator[dict]:
    unknown = set(flags) - set(table)
    if unknown:
        raise ValueError(f"unknown {kind} speed option {sorted(unknown)[0]!r}; valid options: {', '.join(table)}")
    saved = dict(table)
    table.update(flags)
    try:
        yield table
    finally:
        table.clear()
        table.update(saved)


def options_context(table: dict, kind: str) -> Callable[..., ContextManager[dict]]:
    """``speed_options(**flags)`` for one module's option table: set flags temporarily."""
    return partial(_override, table, kind)
