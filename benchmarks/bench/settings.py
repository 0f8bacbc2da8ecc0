"""Settings of a bench run: sizes, batches, repeats and the paper's solver budgets."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository


@dataclass
class Settings:
    quick: bool = False
    sizes: list[str] = field(default_factory=lambda: ["mini", "tiny"])
    large_batch: int = 32  # DEQ-Large section (the batch)
    batch: int = 32  # training / evaluation / early-stop / memory sections
    repeats: int = 5  # interleaved rounds for the small sizes
    large_repeats: int = 3  # interleaved rounds for DEQ-Large (about 15 s a round)
    calib_batch: int = 32
    calib_channels: int = 256
    calib_size: int = 32
    budget: int = 8  # forward Broyden steps N (paper)
    backward_budget: int = 7  # backward Broyden steps of exact (paper)
    unroll_k: int = 9  # K of unroll / intermediate (authors' evaluation)
    pgd_steps: int = 2  # attack steps in the evaluation section
    train_pgd_steps: int = 3  # PGD-AT steps in the training section
    early_states: list[int] = field(default_factory=lambda: [1, 2, 4, 6])
    memory_steps: list[int] = field(default_factory=lambda: [2, 4, 8, 16])
    memory_size: str = "tiny"
    large_size: str = "large"  # tests shrink it
    profile_config: str = str(ROOT / "config" / "cpu.yaml")  # the jobs section's
    threads: int = 0
    gpu_form: str = ""  # the gpu section's form: full, reduced, or "" (full where CUDA is available)
    gpu_deadline_s: float = 540.0  # the gpu check ends its parts by then (a 600 s call leaves a margin)
    gpu_partial_out: str | None = None  # the gpu check writes its report so far here after every part

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Settings":
        s = cls()
        if getattr(args, "quick", False):
            s = cls(
                quick=True,
                large_batch=8,
                batch=8,
                repeats=3,
                large_repeats=2,
                calib_batch=16,
                pgd_steps=1,
                train_pgd_steps=2,
                early_states=[1, 4],
                memory_steps=[2, 8],
                memory_size="mini",
            )
        if getattr(args, "sizes", None):
            s.sizes = list(args.sizes)
        if getattr(args, "batch", None):
            s.large_batch = args.batch
        if getattr(args, "repeats", None):
            s.repeats = s.large_repeats = args.repeats
        if getattr(args, "profile_config", None):
            s.profile_config = args.profile_config
        s.threads = getattr(args, "threads", None) or os.cpu_count() or 1
        s.gpu_form = getattr(args, "gpu_form", None) or ""
        if getattr(args, "deadline", None):
            s.gpu_deadline_s = args.deadline
        s.gpu_partial_out = getattr(args, "out", None)
        return s

    def solver(self, budget: int | None = None) -> dict:
        return {"name": "broyden", "budget": budget or self.budget, "tol": 0.0}

    def backward_solver(self) -> dict:
        return {"name": "broyden", "budget": self.backward_budget, "tol": 0.0}
