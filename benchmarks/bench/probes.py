"""Subprocess probes: a function of a section run in a fresh interpreter (this package run
again with a hidden ``--probe NAME ARGS_JSON``), so that the memory high-water mark starts
clean and OpenMP reads its environment when torch loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # ``python benchmarks/bench`` runs its __main__.py


def run_probe(name: str, args: dict, env: dict, timeout: float | None = None) -> dict:
    """The probe ``name`` (cli.PROBES) on ``args`` in a fresh interpreter with ``env``.
    A failed probe gives ``{"error": [last line of its stderr]}``."""
    try:
        proc = subprocess.run(
            [sys.executable, str(PACKAGE), "--probe", name, json.dumps(args)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": [f"probe {name} ran past {timeout} s"]}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
