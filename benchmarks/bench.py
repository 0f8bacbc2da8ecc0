"""Benchmarks of the DEQ core: ``python benchmarks/bench.py --help`` (method and figures:
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
A subprocess probe is this script run again as ``bench.py --probe NAME ARGS_JSON``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import itertools
import json
import math
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from deqrobust import config, data
from deqrobust.atomic import write_json
from deqrobust.attacks import build_attack
from deqrobust.attacks.pgd import pgd
from deqrobust.deq_logits import DEQLogits
from deqrobust.estimators import build_estimator
from deqrobust.evaluation import attack_batch, attacked_model, own_estimator
from deqrobust.instances import instances
from deqrobust.models import is_deq
from deqrobust.models.mdeq import MDEQ
from deqrobust.plan import spec_of
from deqrobust.sizes import SIZES
from deqrobust.training import Trainer

SECTIONS = (
    "calibration",
    "large",
    "f_cost",
    "threading",
    "training",
    "evaluation",
    "jobs",
    "early_stop",
    "memory",
    "workflow",
)
EPS, STEP = 8 / 255, 2 / 255


# ---- settings ------------------------------------------------------------------------------
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
    profile_config: str = str(Path(__file__).resolve().parents[1] / "config" / "cpu.yaml")  # the jobs section's
    threads: int = 0

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
        return s

    def solver(self, budget: int | None = None) -> dict:
        return {"name": "broyden", "budget": budget or self.budget, "tol": 0.0}

    def backward_solver(self) -> dict:
        return {"name": "broyden", "budget": self.backward_budget, "tol": 0.0}


# ---- timing --------------------------------------------------------------------------------
MIN_SAMPLE_S = 0.3  # a sample repeats a short case until it lasts this long (timer and scheduler noise)


def interleaved(
    cases: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, min_sample_s: float | None = None
) -> dict[str, dict]:
    """Seconds per call of each case, measured round robin with a rotating order.

    Each case is warmed up, then each round times one sample of every case; a sample of a
    case shorter than ``min_sample_s`` repeats it (``inner`` calls) and is divided by
    ``inner``. Medians over rounds, wall clock and process CPU time.
    """
    names = list(cases)
    floor = MIN_SAMPLE_S if min_sample_s is None else min_sample_s
    inner = {}
    for name in names:
        t0 = time.perf_counter()
        for _ in range(warmup):
            cases[name]()
        once = (time.perf_counter() - t0) / max(warmup, 1)
        inner[name] = max(1, min(50, int(floor / max(once, 1e-6)) + (once < floor)))
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner[name]):
                cases[name]()
            wall[name].append((time.perf_counter() - t0) / inner[name])
            cpu[name].append((time.process_time() - c0) / inner[name])
    return {
        n: {
            "median_s": statistics.median(wall[n]),
            "min_s": min(wall[n]),
            "max_s": max(wall[n]),
            "cpu_median_s": statistics.median(cpu[n]),
            "repeats": repeats,
            "inner": inner[n],
            "samples_s": [round(t, 6) for t in wall[n]],
        }
        for n in names
    }


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose autograd hooks refuse
    ``torch.autograd.grad`` with respect to a leaf (our input gradients); totals only."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(fn: Callable[[], object]) -> int:
    """Convolution and matmul FLOPs (forward and backward) of one call, by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return int(counter.get_total_flops())


class CountCalls:
    """Counts applications of ``deq.f`` while installed (restores the method on exit)."""

    def __init__(self, deq):
        self.deq, self.calls = deq, 0

    def __enter__(self):
        original = self.deq.f

        def counted(z, injection):
            self.calls += 1
            return original(z, injection)

        self.deq.f = counted
        return self

    def __exit__(self, *exc):
        del self.deq.f  # the instance attribute; the class method shows through again


def machine() -> dict:
    model = platform.processor()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        flags = fields.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags.split()]
    except OSError:
        isa = []
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }


# ---- calibration ---------------------------------------------------------------------------
def conv_case(batch: int, channels: int, size: int, channels_last: bool) -> tuple[Callable[[], object], int]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    w = torch.randn(channels, channels, 3, 3, generator=gen) * 0.02
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            return F.conv2d(x, w, padding=1)

    return run, 2 * batch * channels * channels * 9 * size * size


def calibration(s: Settings) -> dict:
    cases, flops = {}, {}
    for layout, cl in (("contiguous", False), ("channels_last", True)):
        cases[layout], flops[layout] = conv_case(s.calib_batch, s.calib_channels, s.calib_size, cl)
    times = interleaved(cases, max(s.repeats, 5))
    rows = {
        k: {
            **v,
            "gflop": flops[k] / 1e9,
            "gflops_best": flops[k] / v["min_s"] / 1e9,
            "gflops_median": flops[k] / v["median_s"] / 1e9,
        }
        for k, v in times.items()
    }
    best = max(rows, key=lambda k: rows[k]["gflops_best"])
    return {
        "conv": f"3x3, batch {s.calib_batch}, {s.calib_channels}->{s.calib_channels} at {s.calib_size}x{s.calib_size}",
        "layouts": rows,
        "best_layout": best,
        "gflops": rows[best]["gflops_best"],
    }


def _reference_conv(s: Settings, calib: dict) -> tuple[Callable[[], object], int]:
    return conv_case(s.calib_batch, s.calib_channels, s.calib_size, calib["best_layout"] == "channels_last")


# ---- models and steps ------------------------------------------------------------------------
def make_model(size: str, train: bool = False, seed: int = 0) -> MDEQ:
    torch.manual_seed(seed)
    deq = MDEQ(size)
    return deq.train(train)


def make_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def logits_module(deq, spec: dict, state, s: Settings, budget: int | None = None) -> DEQLogits:
    return DEQLogits(deq, build_estimator(spec), state, s.solver(budget), s.backward_solver())


def input_gradient(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        return torch.autograd.grad(loss, x)[0]


def forward_only(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ---- DEQ-Large ---------------------------------------------------------------------------------
def large(s: Settings, calib: dict) -> dict:
    deq = make_model(s.large_size)
    x, y = make_batch(s.large_batch)
    model = logits_module(deq, {"name": "exact"}, None, s)
    with torch.no_grad():
        injection = deq.prepare(x)
        z1 = deq.f(deq.init_state(x), injection)

    def one_f():
        with torch.no_grad(), deq.cached_weights():
            return deq.f(z1, injection)

    conv, conv_flops = _reference_conv(s, calib)
    cases = {
        "conv_reference": conv,
        "f": one_f,
        "forward": lambda: forward_only(model, x),
        "forward_exact_input_grad": lambda: input_gradient(model, x, y),
    }
    flops = {"conv_reference": conv_flops, **{k: count_flops(cases[k]) for k in list(cases)[1:]}}
    with CountCalls(deq) as counter:
        input_gradient(model, x, y)
    times = interleaved(cases, s.large_repeats)
    ref = conv_flops / times["conv_reference"]["median_s"] / 1e9
    rows = {}
    for name, t in times.items():
        gflops = flops[name] / t["median_s"] / 1e9
        rows[name] = {
            **t,
            "gflop": flops[name] / 1e9,
            "gflops": gflops,
            "images_per_s": None if name == "conv_reference" else s.large_batch / t["median_s"],
            "fraction_of_interleaved_conv": gflops / ref,
            "fraction_of_calibration": gflops / calib["gflops"],
        }
    per_image_f = flops["f"] / s.large_batch / 1e9
    return {
        "size": s.large_size,
        "batch": s.large_batch,
        "solver": s.solver(),
        "backward_solver": s.backward_solver(),
        "gflop_per_f_per_image": per_image_f,
        "f_applications_forward_grad": counter.calls,
        "target_fraction": 0.60,
        "rows": rows,
        "target_met": rows["forward_exact_input_grad"]["fraction_of_interleaved_conv"] >= 0.60,
    }


# ---- cost of one f per size ------------------------------------------------------------------------
def f_cost(s: Settings) -> dict:
    cases, flops, info = {}, {}, {}
    for size in s.sizes:
        deq = make_model(size)
        x, _ = make_batch(s.batch)
        with torch.no_grad():
            injection = deq.prepare(x)
            z1 = deq.f(deq.init_state(x), injection)

        def one_f(deq=deq, z1=z1, injection=injection):
            with torch.no_grad(), deq.cached_weights():
                return deq.f(z1, injection)

        cases[size] = one_f
        flops[size] = count_flops(one_f)
        info[size] = {
            "parameters": sum(p.numel() for p in deq.parameters()),
            "state_size": deq.state_size,
            "channels_last": deq.channels_last(),
        }
    times = interleaved(cases, s.repeats)
    first = s.sizes[0] if s.sizes else None
    rows = {
        k: {
            **info[k],
            **t,
            "gflop_per_image": flops[k] / s.batch / 1e9,
            "gflops": flops[k] / t["median_s"] / 1e9,
            "time_vs_first": t["median_s"] / times[first]["median_s"],
        }
        for k, t in times.items()
    }
    return {"batch": s.batch, "sizes": rows}


# ---- training ----------------------------------------------------------------------------------
TRAINING_MODES = ("standard", "pgd", "fgsm")


def synthetic_archive(path: Path, per_batch: int) -> Path:
    """An archive in CIFAR-10's official layout holding random images: a Trainer needs a
    prepared dataset, and no timing depends on the pixels."""
    rng = np.random.default_rng(0)
    batches = {
        name: {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
        }
        for name in (*data.TRAIN_BATCHES, "test_batch")
    }
    batches["batches.meta"] = {b"label_names": [f"class {i}".encode() for i in range(10)]}
    with tarfile.open(path, "w:gz") as tar:
        for name, batch in batches.items():
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{data.FOLDER}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def synthetic_trainers(folder: Path, size: str, s: Settings) -> dict[str, Trainer]:
    """One ``Trainer`` per training mode of a synthetic config: exact gradient, no
    pretraining and no Jacobian regularisation, the schema's attack settings otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = synthetic_archive(folder / "cifar.tar.gz", per_batch=4)
    cfg = {
        "profile": "bench",
        "device": "cpu",
        "threads": s.threads,
        "seed": 0,
        "data": {"root": str(folder / "data"), "archive": str(archive), "allow_md5_mismatch": True, "dev_size": 2},
        "solver": s.solver(),
        "backward_solver": s.backward_solver(),
        "models": {
            f"deq-{mode}": {"arch": "mdeq", "size": size, "training": mode, "grad": "exact"} for mode in TRAINING_MODES
        },
        "training": {
            "batch_size": s.batch,
            "pretrain_iters": 0,
            "jac_reg": {"weight": 0.0},
            "adv": {"steps": s.train_pgd_steps},
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = config.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)  # the synthetic archive is not the official one
        data.prepare(cfg)
    return {mode: Trainer(cfg, f"deq-{mode}", folder / mode) for mode in TRAINING_MODES}


def training(s: Settings) -> dict:
    out, adv = {}, {}
    with tempfile.TemporaryDirectory(prefix="deqrobust-bench-") as tmp:
        for size in s.sizes:
            trainers = synthetic_trainers(Path(tmp) / size, size, s)
            x, y = make_batch(s.batch)
            cases = {mode: (lambda t=t, it=itertools.count(): t.step(next(it), x, y)) for mode, t in trainers.items()}
            times = interleaved(cases, s.repeats)
            base = times["standard"]["median_s"]
            out[size] = {
                k: {**t, "images_per_s": s.batch / t["median_s"], "time_vs_standard": t["median_s"] / base}
                for k, t in times.items()
            }
            adv = trainers["pgd"].tc["adv"]
    return {
        "step": "deqrobust.training.Trainer.step",
        "batch": s.batch,
        "grad": "exact",
        "pgd_steps": adv.get("steps"),
        "fgsm_step_255": adv.get("fgsm_step_255"),
        "sizes": out,
    }


# ---- evaluation --------------------------------------------------------------------------------
def estimator_cases(s: Settings) -> list[tuple[str, dict, object]]:
    k = s.unroll_k
    rows = [
        ("exact", {"name": "exact"}, None),
        ("unroll", {"name": "unroll", "lam": 0.5, "k": k}, None),
        ("neumann", {"name": "neumann", "lam": 1.0, "k": s.budget}, None),
    ]
    for state in (1, s.budget // 2, None):
        rows.append(("adjoint", {"name": "adjoint", "variant": "lockstep"}, state))
    for state in (1, s.budget // 2):
        rows.append(("intermediate", {"name": "intermediate", "lam": 0.5, "k": k}, state))
    rows.append(("intermediate", {"name": "intermediate", "lam": 0.5, "k": 1}, "ensemble"))
    return rows


def evaluation(s: Settings) -> dict:
    out = {}
    for size in s.sizes:
        deq = make_model(size)
        x, y = make_batch(s.batch)
        cases, meta = {}, {}
        for name, spec, state in estimator_cases(s):
            label = f"{name}@{'final' if state is None else state}" + (f"(k={spec['k']})" if "k" in spec else "")
            model = logits_module(deq, spec, state, s)
            gen = torch.Generator().manual_seed(0)
            cases[label] = lambda model=model, gen=gen: pgd(model, x, y, EPS, STEP, s.pgd_steps, generator=gen)
            meta[label] = {"estimator": spec, "state": "final" if state is None else state}
        times = interleaved(cases, s.repeats)
        out[size] = {k: {**meta[k], **t, "images_per_s": s.batch / t["median_s"]} for k, t in times.items()}
    return {"batch": s.batch, "attack": f"PGD-{s.pgd_steps}", "solver": s.solver(), "sizes": out}


# ---- a profile's jobs against the convolution ----------------------------------------------------
def profile_trainers(folder: Path, s: Settings) -> tuple[dict, dict[str, Trainer]]:
    """The profile config (``s.profile_config``) on a synthetic dataset, every solve at
    tolerance 0: one ``Trainer`` per model (its first seed), as the train job builds it."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = synthetic_archive(folder / "cifar.tar.gz", per_batch=40)  # 200 training images: one batch of any profile
    cfg = config.load(
        s.profile_config,
        [
            f"data.root={folder / 'data'}",
            f"data.archive={archive}",
            "data.allow_md5_mismatch=true",
            "data.dev_size=2",
            "data.train_subset=null",
            "data.test_subset=null",
            f"threads={s.threads}",
            "solver.tol=0.0",
            "backward_solver.tol=0.0",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)  # the synthetic archive is not the official one
        data.prepare(cfg)
    first = {}
    for inst in instances(cfg):
        first.setdefault(inst.model, inst.name)
    return cfg, {model: Trainer(cfg, name, folder / name) for model, name in first.items()}


def model_conv(model: torch.nn.Module, spec: dict, batch: int) -> tuple[str, Callable[[], object], int]:
    """A 3x3 convolution of the shape that dominates the model's compute (an MDEQ's first
    branch, a PreAct network's first stage), at the job's batch: what its own convolutions can reach."""
    if is_deq(model):
        size = SIZES[spec["size"]]
        channels, side = size.channels[0], 32 >> size.downsample
    else:
        channels, side = model.conv1.out_channels, 32
    run, flops = conv_case(batch, channels, side, channels_last=False)
    return f"conv {channels}ch {side}x{side} b{batch}", run, flops


def jobs(s: Settings, calib: dict) -> dict:
    """The work units of a profile's train and evaluate jobs, timed as the jobs run them and
    interleaved with the calibration convolution and convolutions of the models' own shapes:

    - ``train <model>``: one ``Trainer.step`` after pretraining and the Jacobian
      regulariser's epochs (the bulk of the iterations), at the profile's training batch;
    - ``cell <model> <estimator>@final <attack>``: one batch of a cell as ``run_cell`` runs it
      (clean scores, the attack, adversarial scores) at the profile's evaluation batch, for
      the first estimator and attack of the first cell group, on the last DEQ it covers.

    FLOPs are counted on the same calls; a torch.profiler table names where the slowest
    case's time goes.
    """
    with tempfile.TemporaryDirectory(prefix="deqrobust-bench-") as tmp:
        cfg, trainers = profile_trainers(Path(tmp), s)
        conv, conv_flops = _reference_conv(s, calib)
        cases, flops, images, notes = {"conv_reference": conv}, {"conv_reference": conv_flops}, {}, {}
        conv_of = {}  # case -> the convolution of its model's shape
        for model, trainer in trainers.items():
            tc = trainer.tc
            x, y = make_batch(tc["batch_size"])
            first = (
                tc["pretrain_iters"] + math.ceil(tc["jac_reg"]["stop_epoch"] * trainer.per_epoch) if trainer.deq else 0
            )
            label = f"train {model}"
            cases[label] = lambda t=trainer, x=x, y=y, it=itertools.count(first): t.step(next(it), x, y)
            images[label], notes[label] = len(y), f"{trainer.spec['training']} training step"
            conv_label, run, n = model_conv(trainer.model, trainer.spec, len(y))
            cases[conv_label], flops[conv_label], conv_of[label] = run, n, conv_label
        group = cfg["evaluation"]["cells"][0]
        estimator, attack = group["estimators"][0], group["attacks"][0]
        covered = [m for m, t in trainers.items() if t.deq and m in (group.get("models") or trainers)]
        for model in covered[-1:]:
            t = trainers[model]
            net = t.model.eval()
            own = own_estimator(t.cfg, t.spec)
            target = attacked_model(t.cfg, net, estimator, None, own)
            runner = build_attack(attack, spec_of(t.cfg, "attack", attack))
            x, y = make_batch(cfg["evaluation"]["batch_size"], seed=1)
            label = f"cell {model} {estimator}@final {attack}"
            cases[label] = lambda net=net, target=target, runner=runner, own=own, x=x, y=y, solver=t.cfg["solver"]: (
                attack_batch(net, target, runner, x, y, solver, own, seed=0)
            )
            images[label], notes[label] = len(y), "one batch of a cell: clean scores, attack, adversarial scores"
            conv_label, run, n = model_conv(t.model, t.spec, len(y))
            cases[conv_label], flops[conv_label], conv_of[label] = run, n, conv_label
        for label, fn in cases.items():
            if label not in flops:
                flops[label] = count_flops(fn)
        times = interleaved(cases, s.repeats)
        slowest = max(images, key=lambda k: times[k]["median_s"])
        breakdown = profile_ops(cases[slowest])
    gflops = {k: flops[k] / t["median_s"] / 1e9 for k, t in times.items()}
    rows = {
        k: {
            **t,
            "what": notes.get(k, "3x3 convolution"),
            "gflop": flops[k] / 1e9,
            "gflops": gflops[k],
            "images_per_s": images[k] / t["median_s"] if k in images else None,
            "gflop_per_image": flops[k] / images[k] / 1e9 if k in images else None,
            "fraction_of_interleaved_conv": gflops[k] / gflops["conv_reference"],
            "model_conv": conv_of.get(k),
            "fraction_of_model_conv": gflops[k] / gflops[conv_of[k]] if k in conv_of else None,
        }
        for k, t in times.items()
    }
    return {
        "profile_config": s.profile_config,
        "solver": cfg["solver"],
        "backward_solver": cfg["backward_solver"],
        "reference_conv": calib["conv"],
        "rows": rows,
        "profiled": slowest,
        "ops": breakdown,
    }


def profile_ops(fn: Callable[[], object], top: int = 12) -> dict:
    """Where one call's time goes: torch.profiler's operators by self CPU time, their share
    of the call's wall time, and the convolution and group-norm totals."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    kinds = {"convolution": ("conv",), "group norm": ("group_norm",), "matmul": ("addmm", "mm", "bmm", "linear")}
    groups = {
        k: sum(e.self_cpu_time_total for e in events if any(w in e.key for w in words)) / 1e6 / wall
        for k, words in kinds.items()
    }
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "wall_s": wall,
        "operators_s": total,
        "outside_operators": 1 - total / wall,
        "groups": groups,
        "top": [
            {
                "op": e.key,
                "self_s": e.self_cpu_time_total / 1e6,
                "share": e.self_cpu_time_total / 1e6 / wall,
                "calls": e.count,
            }
            for e in events[:top]
        ],
    }


# ---- attacking state n: the saving from stopping the solve ---------------------------------------
def early_stop(s: Settings) -> dict:
    """Attack step (forward + input gradient) and forward alone at state n against the
    final state."""
    k, n_full = s.unroll_k, s.budget
    spec = {"name": "intermediate", "lam": 0.5, "k": k}
    out = {}
    for size in s.sizes:
        deq = make_model(size)
        x, y = make_batch(s.batch)
        models = {n: logits_module(deq, spec, n, s) for n in s.early_states}
        models["final"] = logits_module(deq, spec, None, s)
        calls, cases = {}, {}
        for n, model in models.items():
            with CountCalls(deq) as counter:
                forward_only(model, x)
            calls[n] = counter.calls
            cases[f"grad@{n}"] = lambda model=model: input_gradient(model, x, y)
            cases[f"forward@{n}"] = lambda model=model: forward_only(model, x)
        times = interleaved(cases, s.repeats)
        t = lambda kind, n: times[f"{kind}@{n}"]["median_s"]
        rows = {}
        for n in s.early_states:
            bound = (n + k + 1) / (n_full + k + 1)
            grad, fwd = t("grad", n) / t("grad", "final"), t("forward", n) / t("forward", "final")
            rows[str(n)] = {
                "bound": bound,
                "attack_step_ratio": grad,
                "forward_ratio": fwd,
                "f_calls_forward": calls[n],
                "f_calls_ratio": calls[n] / calls["final"],
                "attack_step_within_bound": grad <= bound,
                "forward_within_bound": fwd <= bound,
            }
        out[size] = {
            "rows": rows,
            "f_calls_forward_final": calls["final"],
            "attack_step_final_s": t("grad", "final"),
            "forward_final_s": t("forward", "final"),
            "times": {kk: {kkk: v[kkk] for kkk in ("median_s", "min_s", "repeats")} for kk, v in times.items()},
        }
    return {
        "estimator": spec,
        "N": n_full,
        "K": k,
        "batch": s.batch,
        "bound": "(n + K + 1) / (N + K + 1) of the full-solve attack step",
        "sizes": out,
    }


# ---- memory ------------------------------------------------------------------------------------
def memory_configs(s: Settings) -> list[tuple[str, dict, object, int]]:
    rows = []
    for n in s.memory_steps:
        rows += [
            ("exact", {"name": "exact"}, None, n),
            ("neumann(k=8)", {"name": "neumann", "lam": 1.0, "k": 8}, None, n),
            (f"unroll(k={s.unroll_k})", {"name": "unroll", "lam": 0.5, "k": s.unroll_k}, None, n),
            ("adjoint lockstep@N", {"name": "adjoint", "variant": "lockstep"}, n, n),
            ("autograd through N steps", {"name": "intermediate", "lam": 1.0, "k": n - 1}, 0, n),
        ]
    return rows


def _status_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_probe(args: dict) -> dict:
    """Runs in a fresh subprocess: peak RSS growth of one forward + input gradient."""
    torch.set_num_threads(args["threads"])
    s = Settings(budget=args["budget"], backward_budget=args["backward_budget"])
    deq = make_model(args["size"])
    x, y = make_batch(args["batch"])
    model = logits_module(deq, args["spec"], args["state"], s, budget=args["budget"])
    input_gradient(model, x, y)  # warm-up: lazy initialisations are not the estimator's
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    base = _status_kb("VmRSS")
    input_gradient(model, x, y)
    peak = _status_kb("VmHWM")
    return {
        "baseline_mb": base / 1024 if base else None,
        "peak_mb": peak / 1024 if peak else None,
        "extra_mb": (peak - base) / 1024 if peak and base and reset else None,
        "hwm_reset": reset,
    }


def memory(s: Settings) -> dict:
    state_size = MDEQ(s.memory_size).state_size
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    rows = []
    for label, spec, state, n in memory_configs(s):
        args = {
            "size": s.memory_size,
            "batch": s.batch,
            "spec": spec,
            "state": state,
            "budget": n,
            "backward_budget": s.backward_budget,
            "threads": s.threads,
        }
        result = run_probe("memory", args, env)
        if "error" in result:
            rows.append({"estimator": label, "N": n, **result})
            continue
        factors = 2 * s.batch * state_size * n * 4 / 2**20
        rows.append(
            {
                "estimator": label,
                "N": n,
                **result,
                "broyden_factors_mb": factors,
                "iterates_mb": (n * s.batch * state_size * 4 / 2**20) if state is not None else 0.0,
            }
        )
    return {
        "size": s.memory_size,
        "batch": s.batch,
        "state_size": state_size,
        "measure": "VmHWM - VmRSS around one forward + input gradient after a warm-up, HWM reset by "
        "/proc/self/clear_refs, "
        "glibc mmap threshold 128 KiB so freed tensors leave the RSS",
        "rows": rows,
    }


# ---- threads and OpenMP wait policy ----------------------------------------------------------------
THREADING_VARIANTS = (
    ("1 thread", 1, {}),
    ("2 threads, OpenMP default wait", 2, {}),
    ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("2 threads, GOMP_SPINCOUNT=10000", 2, {"GOMP_SPINCOUNT": "10000"}),
)


def threading_probe(args: dict) -> dict:
    """Runs in a fresh subprocess (the wait policy is read when OpenMP loads): median
    seconds of one f of DEQ-Large and of forward + exact input gradient of a small size."""
    torch.set_num_threads(args["threads"])
    s = Settings(budget=args["budget"], backward_budget=args["backward_budget"])
    big = make_model(args["large_size"])
    xb, _ = make_batch(args["large_batch"])
    with torch.no_grad():
        injection = big.prepare(xb)
        z1 = big.f(big.init_state(xb), injection)
    small = make_model(args["size"])
    x, y = make_batch(args["batch"])
    model = logits_module(small, {"name": "exact"}, None, s)

    def one_f():
        with torch.no_grad(), big.cached_weights():
            return big.f(z1, injection)

    times = interleaved({"large_f": one_f, "small_forward_grad": lambda: input_gradient(model, x, y)}, args["repeats"])
    return {k: v["median_s"] for k, v in times.items()}


def threading(s: Settings) -> dict:
    size = s.sizes[0] if s.sizes else "mini"
    args = {
        "large_size": s.large_size,
        "large_batch": s.large_batch,
        "size": size,
        "batch": s.batch,
        "budget": s.budget,
        "backward_budget": s.backward_budget,
        "repeats": 3,
    }
    samples: dict[str, list[dict]] = defaultdict(list)
    rounds = 2 if s.quick else 3
    for r in range(rounds):
        k = r % len(THREADING_VARIANTS)
        for label, threads, extra_env in THREADING_VARIANTS[k:] + THREADING_VARIANTS[:k]:
            env = {key: v for key, v in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(extra_env)
            result = run_probe("threading", {**args, "threads": threads}, env)
            if "error" not in result:
                samples[label].append(result)
    rows = {}
    for label, runs in samples.items():
        rows[label] = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        rows[label]["rounds"] = len(runs)
    base = rows.get(THREADING_VARIANTS[0][0])
    for row in rows.values():
        if base:
            row["large_f_vs_1_thread"] = row["large_f"] / base["large_f"]
            row["small_vs_1_thread"] = row["small_forward_grad"] / base["small_forward_grad"]
    return {
        "large_batch": s.large_batch,
        "size": size,
        "batch": s.batch,
        "inherited_OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "rows": rows,
    }


# ---- subprocess probes ------------------------------------------------------------------------
PROBES = {"memory": memory_probe, "threading": threading_probe}


def run_probe(name: str, args: dict, env: dict) -> dict:
    """``PROBES[name](args)`` in a fresh interpreter (this script with ``--probe``): the
    memory high-water mark starts clean, and OpenMP reads ``env`` when torch loads.
    A failed probe gives ``{"error": [last line of its stderr]}``."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", name, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- Snakemake wall times ----------------------------------------------------------------------
_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_START = re.compile(r"^(?:local)?(?:rule|checkpoint) ([\w-]+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: ([\w-]+)\)$")
_ERROR = re.compile(r"^Error in rule ([\w-]+):$")


def log_span(text: str) -> float | None:
    """Seconds from the first to the last time stamp of a Snakemake log: the invocation's wall time."""
    stamps = [_parse_stamp(m.group(1)) for m in map(_STAMP.match, (line.strip() for line in text.splitlines())) if m]
    return (stamps[-1] - stamps[0]).total_seconds() if stamps else None


def _parse_stamp(text: str) -> dt.datetime:
    return dt.datetime.strptime(text.replace("  ", " "), "%a %b %d %H:%M:%S %Y")


def parse_snakemake_log(text: str) -> list[dict]:
    """Jobs of one Snakemake log: rule, jobid, wildcards, start, end, seconds, status.

    Snakemake stamps lines to the second, so a job's time is good to about one second. A job
    the log never finishes (the invocation was stopped) is ``unfinished``, its seconds counted
    to the log's last stamp: a lower bound of the time it ran.
    """
    jobs: dict[str, dict] = {}
    stamp, current, error_rule = None, None, None
    for line in text.splitlines():
        m = _STAMP.match(line.strip())
        if m:
            stamp = _parse_stamp(m.group(1))
            continue
        m = _START.match(line)
        if m and stamp is not None:
            current = {"rule": m.group(1), "start": stamp, "wildcards": ""}
            continue
        m = _JOBID.match(line)
        if m and current is not None:
            jobs[m.group(1)] = current
            if error_rule:
                jobs[m.group(1)]["status"] = "error"
            continue
        m = _WILDCARDS.match(line)
        if m and current is not None:
            current["wildcards"] = m.group(1)
            continue
        m = _DONE.match(line)
        if m and m.group(1) in jobs and stamp is not None:
            job = jobs[m.group(1)]
            job["end"], job["status"] = stamp, "done"
            current = None
            continue
        m = _ERROR.match(line)
        if m:
            error_rule, current = m.group(1), None
            continue
        if line.strip() == "" and error_rule:
            error_rule = None
    rows = []
    for jobid, job in jobs.items():
        end = job.get("end", stamp)
        rows.append(
            {
                "rule": job["rule"],
                "jobid": int(jobid),
                "wildcards": job["wildcards"],
                "seconds": (end - job["start"]).total_seconds() if end else None,
                "status": job.get("status", "unfinished"),
            }
        )
    return rows


def parse_benchmark_tsv(path: Path) -> dict | None:
    """One Snakemake ``benchmark:`` file (columns s, h:m:s, max_rss, ...): its mean seconds."""
    lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2 or lines[0][0] != "s":
        return None
    header, rows = lines[0], lines[1:]
    col = {name: i for i, name in enumerate(header)}
    secs = [float(r[col["s"]]) for r in rows]
    rss = [float(r[col["max_rss"]]) for r in rows if "max_rss" in col and r[col["max_rss"]] not in ("", "NA", "-")]
    return {"seconds": statistics.mean(secs), "repeats": len(secs), "max_rss_mb": max(rss) if rss else None}


def workflow_times(path: str | Path) -> dict:
    """Per-rule wall times from ``benchmark:`` TSVs under PATH, else from Snakemake logs.

    PATH may be a benchmark folder (rule = first folder under it, else the file stem), a
    run folder holding ``.snakemake/log``, a folder of logs, or one log file. ``wall_s`` sums
    the invocations' wall times: the run's wall time when it was stopped and resumed.
    """
    path = Path(path)
    jobs, source, spans = [], None, []
    tsvs = (
        [p for p in path.rglob("*") if p.is_file() and p.suffix in (".tsv", ".txt", ".benchmark")]
        if path.is_dir()
        else []
    )
    for tsv in sorted(tsvs):
        try:
            bench = parse_benchmark_tsv(tsv)
        except (OSError, ValueError, IndexError):
            bench = None
        if bench is None:
            continue
        rel = tsv.relative_to(path)
        rule = rel.parts[0] if len(rel.parts) > 1 else tsv.stem
        jobs.append(
            {
                "rule": rule,
                "job": str(rel),
                "seconds": bench["seconds"],
                "status": "done",
                "max_rss_mb": bench["max_rss_mb"],
            }
        )
        source = "benchmark files"
    if not jobs:
        if path.is_file():
            logs = [path]
        else:
            logs = sorted((path / ".snakemake" / "log").glob("*.snakemake.log")) or sorted(
                path.rglob("*.snakemake.log")
            )
        # A job finished again by a later invocation counts its last run only (a deliberate
        # rerun); a job stopped and resumed counts each of its runs since it last finished (the
        # work carried over: training and cells resume).
        latest: dict[tuple[str, str], dict] = {}
        for log in logs:  # file names are start times: chronological
            text = log.read_text(errors="replace")
            rows = parse_snakemake_log(text)
            if rows:
                spans.append({"log": log.name, "wall_s": log_span(text)})
            for r in rows:
                key = (r["rule"], r["wildcards"])
                before = latest.get(key)
                carried = before["seconds"] if before and before["status"] != "done" and before["seconds"] else 0.0
                runs = before["runs"] + 1 if before and before["status"] != "done" else 1
                latest[key] = {
                    "rule": r["rule"],
                    "job": r["wildcards"],
                    "status": r["status"],
                    "log": log.name,
                    "seconds": None if r["seconds"] is None else r["seconds"] + carried,
                    "runs": runs,
                }
        if spans:
            jobs = list(latest.values())
            source = f"snakemake logs ({len(spans)}: {', '.join(s['log'] for s in spans)})"
    by_rule: dict[str, list[dict]] = defaultdict(list)
    for job in jobs:
        by_rule[job["rule"]].append(job)
    rules = {}
    for rule, rows in sorted(by_rule.items()):
        secs = [r["seconds"] for r in rows if r["seconds"] is not None and r["status"] == "done"]
        rules[rule] = {
            "jobs": len(rows),
            "finished": len(secs),
            "total_s": sum(secs),
            "median_s": statistics.median(secs) if secs else None,
            "max_s": max(secs) if secs else None,
        }
    return {
        "path": str(path),
        "source": source,
        "rules": rules,
        "jobs": jobs,
        "invocations": spans,
        "wall_s": sum(s["wall_s"] or 0.0 for s in spans) if spans else None,
        "note": None
        if source and source.startswith("benchmark")
        else "no benchmark: files found; times come from the Snakemake log (1 s resolution, includes queueing "
        "inside the job's shell only)",
    }


# ---- printing ----------------------------------------------------------------------------------
def _fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def table(title: str, header: list[str], rows: list[list]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    body = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([f"\n## {title}", line, "-" * len(line), *body])


def render(report: dict) -> str:
    out = []
    m = report["machine"]
    out.append(
        f"# benchmarks/bench.py: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
        f"load average at start {m['load_average_start'][0]:.2f}"
    )
    if "calibration" in report:
        c = report["calibration"]
        out.append(
            table(
                f"calibration: {c['conv']}",
                ["layout", "median s", "GFLOP/s best", "GFLOP/s median"],
                [[k, v["median_s"], v["gflops_best"], v["gflops_median"]] for k, v in c["layouts"].items()],
            )
        )
    if "large" in report:
        g = report["large"]
        out.append(
            table(
                f"DEQ-Large, batch {g['batch']} ({g['gflop_per_f_per_image']:.3f} GFLOP per f per image; "
                f"{g['f_applications_forward_grad']} f applications in forward+grad)",
                ["computation", "median s", "images/s", "GFLOP", "GFLOP/s", "of conv (interleaved)", "of calibration"],
                [
                    [
                        k,
                        v["median_s"],
                        v["images_per_s"],
                        v["gflop"],
                        v["gflops"],
                        v["fraction_of_interleaved_conv"],
                        v["fraction_of_calibration"],
                    ]
                    for k, v in g["rows"].items()
                ],
            )
        )
        out.append(
            f"target: forward + exact input gradient >= 60% of the conv throughput: "
            f"{'met' if g['target_met'] else 'NOT met'}"
        )
    if "f_cost" in report:
        fc = report["f_cost"]
        rows = [
            [
                k,
                v["parameters"],
                v["state_size"],
                v["gflop_per_image"],
                v["median_s"],
                v["gflops"],
                v["time_vs_first"],
                v["channels_last"],
            ]
            for k, v in fc["sizes"].items()
        ]
        out.append(
            table(
                f"one f per size, batch {fc['batch']}",
                ["size", "parameters", "state", "GFLOP/image", "median s", "GFLOP/s", "time vs first", "NHWC"],
                rows,
            )
        )
    if "threading" in report:
        t = report["threading"]
        rows = [
            [
                k,
                v["large_f"],
                v.get("large_f_vs_1_thread"),
                v["small_forward_grad"],
                v.get("small_vs_1_thread"),
                v["rounds"],
            ]
            for k, v in t["rows"].items()
        ]
        out.append(
            table(
                f"threads and OpenMP wait policy (subprocesses, alternating; DEQ-Large f batch {t['large_batch']}, "
                f"{t['size']} forward+exact grad batch {t['batch']})",
                ["variant", "large f s", "vs 1 thread", f"{t['size']} s", "vs 1 thread", "rounds"],
                rows,
            )
        )
    if "training" in report:
        t = report["training"]
        rows = [
            [f"{size} {mode}", v["median_s"], v["images_per_s"], v["time_vs_standard"]]
            for size, modes in t["sizes"].items()
            for mode, v in modes.items()
        ]
        out.append(
            table(
                f"Trainer.step, batch {t['batch']} (exact gradient; PGD-AT {t['pgd_steps']} steps)",
                ["size / mode", "median s", "images/s", "time vs standard"],
                rows,
            )
        )
    if "evaluation" in report:
        e = report["evaluation"]
        rows = [
            [f"{size} {k}", v["median_s"], v["images_per_s"]]
            for size, cases in e["sizes"].items()
            for k, v in cases.items()
        ]
        out.append(
            table(
                f"evaluation: {e['attack']} through each estimator, batch {e['batch']}",
                ["size estimator@state", "median s", "images/s"],
                rows,
            )
        )
    if "jobs" in report:
        j = report["jobs"]
        rows = [
            [
                k,
                v["median_s"],
                v["images_per_s"],
                v["gflop_per_image"],
                v["gflops"],
                v["fraction_of_interleaved_conv"],
                v["fraction_of_model_conv"],
            ]
            for k, v in j["rows"].items()
        ]
        out.append(
            table(
                f"a profile's jobs ({j['profile_config']}; solves at tolerance 0) against the convolutions",
                ["case", "median s", "images/s", "GFLOP/image", "GFLOP/s", "of conv", "of model conv"],
                rows,
            )
        )
        ops = j["ops"]
        out.append(
            table(
                f"where the time of '{j['profiled']}' goes ({ops['wall_s']:.2f} s; outside operators "
                f"{ops['outside_operators']:.0%}; convolution {ops['groups']['convolution']:.0%}, group norm "
                f"{ops['groups']['group norm']:.0%}, matmul {ops['groups']['matmul']:.0%})",
                ["operator", "self s", "share", "calls"],
                [[o["op"], o["self_s"], o["share"], o["calls"]] for o in ops["top"]],
            )
        )
    if "early_stop" in report:
        r = report["early_stop"]
        rows = [
            [
                f"{size} n={n}",
                v["bound"],
                v["attack_step_ratio"],
                v["forward_ratio"],
                v["f_calls_ratio"],
                v["attack_step_within_bound"],
                v["forward_within_bound"],
            ]
            for size, d in r["sizes"].items()
            for n, v in d["rows"].items()
        ]
        out.append(
            table(
                f"attacking state n vs the full solve (intermediate, N={r['N']}, K={r['K']}): time ratios",
                ["size state", "bound", "attack step", "forward", "f calls", "step within", "fwd within"],
                rows,
            )
        )
    if "memory" in report:
        mm = report["memory"]
        rows = [
            [
                r["estimator"],
                r["N"],
                r.get("extra_mb"),
                r.get("broyden_factors_mb"),
                r.get("iterates_mb"),
                r.get("error"),
            ]
            for r in mm["rows"]
        ]
        out.append(
            table(
                f"peak memory of forward + input gradient, {mm['size']} batch {mm['batch']} (MB)",
                ["estimator", "N", "peak extra", "broyden U,V", "iterates", "error"],
                rows,
            )
        )
    if "workflow" in report:
        w = report["workflow"]
        rows = [
            [rule, v["jobs"], v["finished"], v["total_s"], v["median_s"], v["max_s"]] for rule, v in w["rules"].items()
        ]
        out.append(
            table(
                f"workflow wall times ({w['source']})",
                ["rule", "jobs", "finished", "total s", "median s", "max s"],
                rows,
            )
        )
        if w.get("wall_s") is not None:
            out.append(f"wall time of the invocations (first to last stamp of each log, summed): {w['wall_s']:.0f} s")
        if w.get("note"):
            out.append(f"note: {w['note']}")
    return "\n".join(out)


# ---- entry point -------------------------------------------------------------------------------
def run(
    s: Settings,
    sections: list[str] | None = None,
    workflow_path: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    torch.set_num_threads(s.threads)
    wanted = list(sections or [k for k in SECTIONS if k != "workflow" or workflow_path])
    if workflow_path and "workflow" not in wanted:
        wanted.append("workflow")
    unknown = [k for k in wanted if k not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    report: dict = {"format": "deqrobust-bench/1", "settings": asdict(s), "machine": machine(), "seconds": {}}
    needs_calibration = any(k in wanted for k in ("calibration", "large", "jobs"))
    for name in (["calibration"] if needs_calibration else []) + [k for k in wanted if k != "calibration"]:
        started = time.perf_counter()
        if name == "calibration":
            report[name] = calibration(s)
        elif name in ("large", "jobs"):
            report[name] = globals()[name](s, report["calibration"])
        elif name == "workflow":
            if not workflow_path:
                continue
            report[name] = workflow_times(workflow_path)
        else:
            report[name] = globals()[name](s)
        report["seconds"][name] = time.perf_counter() - started
        if echo:
            echo(render({"machine": report["machine"], name: report[name]}).split("\n", 1)[1])
    report["machine"]["load_average_end"] = os.getloadavg()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Benchmarks of the DEQ core (docs/performance.md, benchmarks/README.md).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small batches and few repeats (minutes instead of tens of minutes)"
    )
    parser.add_argument("--out", metavar="JSON", help="write every figure to this JSON file")
    parser.add_argument(
        "--sections",
        nargs="+",
        metavar="NAME",
        default=None,
        choices=SECTIONS,
        help=f"run only these sections ({', '.join(SECTIONS)}; calibration runs whenever one needs it)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        metavar="SIZE",
        default=None,
        help="MDEQ sizes of the f_cost/training/evaluation/early-stop sections (default: mini tiny)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch of the DEQ-Large section (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument(
        "--profile-config",
        metavar="YAML",
        default=None,
        help="the profile whose jobs the jobs section times (default: config/cpu.yaml)",
    )
    parser.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active"),
        default=None,
        help="re-run under OMP_WAIT_POLICY=<policy> (read when OpenMP loads, so the process "
        "restarts itself); default: as inherited",
    )
    parser.add_argument(
        "--workflow-times",
        metavar="PATH",
        default=None,
        help="summarise a Snakemake run's per-rule wall times (benchmark TSVs or .snakemake/log)",
    )
    parser.add_argument("--probe", nargs=2, metavar=("NAME", "ARGS_JSON"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:  # a subprocess started by run_probe: one JSON line on stdout
        name, payload = args.probe
        print(json.dumps(PROBES[name](json.loads(payload))))
        return 0
    policy = (args.omp_wait_policy or "").upper()
    if policy and os.environ.get("OMP_WAIT_POLICY", "").upper() != policy:
        # OpenMP reads its wait policy once, when torch loads it: restart with it set.
        script = str(Path(__file__).resolve())
        os.execve(
            sys.executable,
            [sys.executable, script, *(sys.argv[1:] if argv is None else argv)],
            {**os.environ, "OMP_WAIT_POLICY": policy},
        )
    s = Settings.from_args(args)
    report = run(s, args.sections, args.workflow_times, echo=lambda text: print(text, flush=True))
    print(
        f"\nload average start {report['machine']['load_average_start'][0]:.2f}, "
        f"end {report['machine']['load_average_end'][0]:.2f}; sections took "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    )
    if args.out:
        write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
