"""What each workflow step depends on: the slice of the config a step's output is a function of.

A slice is Snakemake's ``params`` rerun trigger of the step's jobs and, for training and
evaluation, the stamp a resumed job must match (training's ``resume.pt``, a cell's finished
batches). Torch-free: the Snakefile imports it, so the rules and the library compare the same
canonical JSON (``settings``).
"""

from __future__ import annotations

import json

from deqrobust.instances import instance_config, model_aims, model_spec
from deqrobust.plan import deqs, diagnosed, spec_of
from deqrobust.vocab import BASELINE_ESTIMATOR, FACTORY, FINAL, MDEQ

# Training keys left out of a model's slice: the backend of a data-parallel run never
# changes the result; amp only counts when on, so models trained before the key existed
# (at its neutral value) stay up to date.
NOT_RESULT_KEYS = ("distributed_backend",)
NEUTRAL_VALUES = {"amp": False}
# Keys of the training phases: they count only for an adversarially trained DEQ with
# unrolled pretraining, so the key's arrival reruns no other model.
PHASE_KEYS = ("adv_during_pretraining",)


def settings(part: dict) -> str:
    """A slice as canonical JSON (the form Snakemake and the stamps compare)."""
    return json.dumps(part, sort_keys=True)


def _solvers(cfg: dict) -> dict:
    return {"solver": cfg["solver"], "backward_solver": cfg["backward_solver"], "seed": cfg["seed"]}


def data_slice(cfg: dict) -> dict:
    return {key: cfg["data"][key] for key in ("dev_size", "split_seed")}


def train_slice(cfg: dict, model: str) -> dict:
    """One instance's spec with its merged training section, the solvers, its seed and the split."""
    cfg = instance_config(cfg, model)
    spec = model_spec(cfg, model)
    training = {
        key: value
        for key, value in spec["training_config"].items()
        if key not in NOT_RESULT_KEYS
        and not (key in NEUTRAL_VALUES and value == NEUTRAL_VALUES[key])
        and not (key in PHASE_KEYS and not _has_phases(spec))
    }
    return {
        "spec": {**spec, "training_config": training},
        "data": {key: cfg["data"][key] for key in ("dev_size", "split_seed", "train_subset")},
        **_solvers(cfg),
    }


def _has_phases(spec: dict) -> bool:
    """Whether a model's training has an adversarial pretraining phase for PHASE_KEYS to shape."""
    return spec["arch"] == MDEQ and spec["training"] != "standard" and spec["training_config"]["pretrain_iters"] > 0


def select_slice(cfg: dict) -> dict:
    """The early-exit choice: ``evaluation.early_exit`` with the specs it names."""
    choice = cfg["evaluation"]["early_exit"]
    return {
        **choice,
        **_referenced(cfg, "evaluation.early_exit", choice),
        **_solvers(cfg),
        "batch_size": cfg["evaluation"]["batch_size"],
    }


def cell_slice(cfg: dict, estimator: str, attack: str) -> dict:
    """One cell: the estimator's spec (None for the baselines' plain backprop), the attack's,
    the test images and their batches, the solvers and the seed."""
    ev = cfg["evaluation"]
    return {
        "estimator": None if estimator == BASELINE_ESTIMATOR else spec_of(cfg, "estimator", estimator),
        "attack": spec_of(cfg, "attack", attack),
        "num_examples": ev["num_examples"],
        "batch_size": ev["batch_size"],
        "test_subset": cfg["data"]["test_subset"],
        **_solvers(cfg),
    }


def analysis_slice(cfg: dict) -> dict:
    """The fixed-point analysis: the ``analysis`` section with the specs it names."""
    an = cfg["analysis"]
    return {
        **an,
        **_referenced(cfg, "analysis", an),
        "diagnosed": diagnosed(cfg),
        "test_subset": cfg["data"]["test_subset"],
        "batch_size": cfg["evaluation"]["batch_size"],
        **_solvers(cfg),
    }


def report_slice(cfg: dict) -> dict:
    """What the figures and the report read from the config beyond their input files: the aims."""
    return {"aims": model_aims(cfg)}


def trajectory_slice(cfg: dict) -> dict:
    """The training-dynamics analysis: its section, the traced budget, the final-state estimators
    it compares (the diagnostics') and what the solve of each snapshot depends on."""
    estimators = {
        name: entry["spec"] for name, entry in diagnosed(cfg)["estimators"].items() if entry["states"] == [FINAL]
    }
    return {
        **cfg["analysis"]["trajectory"],
        "budget": cfg["analysis"]["budget"],
        "estimators": estimators,
        "test_subset": cfg["data"]["test_subset"],
        "batch_size": cfg["evaluation"]["batch_size"],
        **_solvers(cfg),
    }


def import_slice(cfg: dict, model: str) -> dict:
    """An imported instance: its file (a user's DEQ: its factory, keyword arguments and weights),
    training and gradient mode, and for ``grad: unroll`` the unroll that defines its own output (a
    change re-imports it, which reruns its dependents)."""
    spec = model_spec(cfg, model)
    files = ("factory", "kwargs", "weights") if spec["arch"] == FACTORY else ("checkpoint",)
    part = {key: spec.get(key) for key in (*files, "training", "grad")}
    if spec["grad"] == "unroll":
        part["unroll"] = spec["training_config"]["unroll"]
    return part


def _referenced(cfg: dict, key: str, section: dict) -> dict:
    return {f"{kind}_spec": spec_of(cfg, kind, section[kind], f"{key}.{kind}") for kind in ("estimator", "attack")}


def check_steps(cfg: dict) -> None:
    """The references only some steps use (``evaluation.early_exit`` and ``analysis``, for the
    DEQs): the workflow checks them before any job, the steps through the same slices."""
    if deqs(cfg):
        select_slice(cfg)
        analysis_slice(cfg)
