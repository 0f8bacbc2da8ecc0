"""Section ``training``: images/s of ``deqrobust.training.Trainer.step`` per size and mode."""

from __future__ import annotations

import itertools
import tempfile
import warnings
from pathlib import Path

import yaml

from deqrobust import config, data
from deqrobust.training import Trainer

from .common import make_batch, synthetic_archive
from .settings import Settings
from .timing import interleaved

TRAINING_MODES = ("standard", "pgd", "fgsm")


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
