"""Benchmarks of the DEQ core: ``python benchmarks/bench --help`` (method and figures:
docs/performance.md; how to run: benchmarks/README.md). A tool beside the library: it
imports ``deqrobust`` and times the product code as the workflow runs it.

Other jobs share this machine's cores, so no figure is an absolute on its own: every
measurement is taken in the same run as its reference, interleaved with it (round robin,
the order rotated each round: A B C, B C A, ...), and the medians and their ratios are
reported. Sections:

- ``calibration``: GFLOP/s of a large 3x3 convolution (batch 32, 256->256 channels at
  32x32), contiguous and channels-last, best of the repeats: the machine's reference;
- ``large``: DEQ-Large (eval mode): one f, the paper's forward (8 Broyden steps, f(z*) and
  the head) and forward plus input gradient under ``exact`` (7 backward Broyden steps),
  with FLOPs counted by ``FlopCounterMode`` on the same computation, interleaved with the
  calibration convolution;
- ``f_cost``: one f of each size (``--sizes``), interleaved: seconds, GFLOP, GFLOP/s;
- ``training``: images/s of ``deqrobust.training.Trainer.step`` (standard, PGD-AT, FGSM-AT)
  per size, on a synthetic dataset and config;
- ``evaluation``: images/s of a PGD attack through each estimator at a few states;
- ``jobs``: a profile's work units (``--profile-config``, default config/cpu.yaml): one
  training step of each model and one batch of a cell, built from the profile as its jobs
  build them, against the calibration convolution and a convolution of each model's own
  shape, with torch.profiler's operator table for the slowest;
- ``early_stop``: the saving from running the solver only to the attacked state n,
  against the bound (n + K + 1) / (N + K + 1);
- ``memory``: peak memory of forward plus input gradient per estimator against the
  number of solver steps, one subprocess per configuration (``memory_probe``);
- ``threading``: one thread against two, with OpenMP's default (spinning) wait policy,
  with OMP_WAIT_POLICY=PASSIVE and with a short spin (GOMP_SPINCOUNT=10000), one
  subprocess per variant, alternating rounds (``threading_probe``);
- ``workflow``: per-rule wall times of a Snakemake run (``--workflow-times``).

Every solve here uses tolerance 0, so it runs its whole budget: the cost does not depend
on whether a random-weight model happens to converge (PGD-trained DEQs mostly do not).
A subprocess probe is this package run again as ``python benchmarks/bench --probe NAME ARGS_JSON``.

One module per section (named as the section; ``threads`` holds ``threading``), ``timing`` for
the shared measurement, ``render`` for the printed tables, ``cli`` for the command line.
"""

from .cli import SECTIONS, main, run
from .settings import Settings

__all__ = ["SECTIONS", "Settings", "main", "run"]
