"""Accuracy aims: what a profile's training schedule is meant to reach, written in the profile
before its run (``models.<name>.aims``), and whether each trained instance reached them.

An aim is no hypothesis test. It says whether the schedule delivered models of the strength the
claims' tests were planned for, so a missed aim is reported beside the model's learning curve,
never tuned away after the run. Measured on the test images of the evaluation cells, for the
deployed model (the final state), each robust key as the main table has it (the strongest cell
of that attack family)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from deqrobust.instances import identity, instance_names, model_aims
from deqrobust.queries import main_rows
from deqrobust.vocab import FINAL


@dataclass(frozen=True)
class AimCheck:
    """One aim of one trained instance. ``measured`` is the main table's cell (queries.strongest:
    accuracy, its 95 % interval, n), None when no cell of that key was run."""

    model: str
    metric: str
    aim: float
    measured: dict | None

    @property
    def reached(self) -> bool | None:
        """The point estimate at or above the aim; None when not measured."""
        return None if self.measured is None else self.measured["accuracy"] >= self.aim

    def text(self, heading: str) -> str:
        """'PGD-10 24.1 % [21.5, 26.9] (aim 25 %: missed)'."""
        if self.measured is None:
            return f"{heading}: not measured (aim {100 * self.aim:g} %)"
        m = self.measured
        state = "reached" if self.reached else "**missed**"
        return (
            f"{heading} {100 * m['accuracy']:.1f} % [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}] "
            f"(aim {100 * self.aim:g} %: {state})"
        )


def checks(cfg: dict, table: pd.DataFrame) -> list[AimCheck]:
    """Every aim of every trained instance against the deployed model's accuracy in ``table`` (the
    profile's solver setting), in config order."""
    aims = model_aims(cfg)
    if not aims:
        return []
    rows = {row["model"]: row for row in main_rows(table) if row["defense"] == FINAL}
    return [
        AimCheck(name, metric, float(aim), rows.get(name, {}).get(metric))
        for name in instance_names(cfg)
        for metric, aim in aims.get(identity(cfg, name)["base_model"], {}).items()
    ]


def learning_curves(paths: list[str | os.PathLike], cfg: dict) -> pd.DataFrame:
    """The development-split learning curves of trained instances (their ``metrics.csv``, in the
    instance's folder), one frame with the instance's ``model``, ``base_model``, ``seed`` and
    ``training``."""
    frames = []
    for path in paths:
        name = Path(path).parent.name
        who = identity(cfg, name)
        frame = pd.read_csv(path)
        frames.append(frame.assign(model=name, **who, training=cfg["models"][who["base_model"]]["training"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
