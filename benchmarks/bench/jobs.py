"""Section ``jobs``: a profile's train steps and one cell batch against the convolution."""

from __future__ import annotations

import itertools
import math
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from deqrobust import config, data
from deqrobust.attacks import build_attack
from deqrobust.evaluation import attack_batch, attacked_model, own_estimator
from deqrobust.instances import instances
from deqrobust.plan import spec_of
from deqrobust.protocol import is_deq
from deqrobust.sizes import SIZES
from deqrobust.training import Trainer

from .calibration import conv_case, reference_conv
from .common import make_batch, synthetic_archive
from .settings import Settings
from .timing import count_flops, interleaved, profile_ops


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
        conv, conv_flops = reference_conv(s, calib)
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
