"""The trained models of a profile: its models at their seeds (instances), and each instance's spec.

Torch-free, below the planner: the config loader merges a model's ``training_overrides`` through
``model_spec``, and every job, path and record names an instance as ``instances`` does.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

from deqrobust.errors import ConfigError
from deqrobust.schema import deep_update


class Instance(NamedTuple):
    """One trained model: a model of the config at one seed.

    A model without ``seeds`` is one instance under its own name at the profile's ``seed``
    (names and paths as before seeds existed); ``seeds: [0, 1]`` makes ``<model>.s0`` and
    ``<model>.s1``. The name is what every job, path and record calls the instance.
    """

    name: str  # path component and the "model" of every record
    model: str  # the model's name in the config ("base_model" in records)
    seed: int  # the job's `seed`: training draws, attack starts


SEED_MARK = ".s"  # <model>.s<seed>


def instances(cfg: dict) -> list[Instance]:
    """Every instance, in config order (a model's seeds in the order listed)."""
    found = []
    for name, spec in cfg["models"].items():
        seeds = spec.get("seeds")
        found += (
            [Instance(name, name, cfg["seed"])]
            if seeds is None
            else [Instance(f"{name}{SEED_MARK}{seed}", name, seed) for seed in seeds]
        )
    return found


def _by_name(cfg: dict) -> dict[str, Instance]:
    return {i.name: i for i in instances(cfg)}


def instance(cfg: dict, name: str) -> Instance:
    """The instance called ``name``; ConfigError naming the instances of the config."""
    found = _by_name(cfg)
    if name not in found:
        raise ConfigError(f"unknown model {name!r}; models of this config: {', '.join(found) or '(none)'}")
    return found[name]


def identity(cfg: dict, name: str) -> dict:
    """``base_model`` and ``seed`` of instance ``name``, as every record carries them; a name
    that is no instance of this config (a checkpoint made elsewhere) is its own base model at
    the profile's seed."""
    inst = _by_name(cfg).get(name, Instance(name, name, cfg["seed"]))
    return {"base_model": inst.model, "seed": inst.seed}


def instance_config(cfg: dict, name: str) -> dict:
    """The config a job of instance ``name`` runs with: the profile's, with the instance's seed
    (the workflow also passes it as ``--set seed=N``, see seed_override, so both agree)."""
    seed = identity(cfg, name)["seed"]
    return cfg if seed == cfg["seed"] else {**cfg, "seed": seed}


def seed_override(cfg: dict, name: str) -> str:
    """``seed=N`` for the jobs of instance ``name`` when its seed is not the profile's, else ''."""
    seed = instance(cfg, name).seed
    return "" if seed == cfg["seed"] else f"seed={seed}"


def instance_names(cfg: dict) -> list[str]:
    """The names of every instance (what the workflow trains)."""
    return [i.name for i in instances(cfg)]


def model_aims(cfg: dict) -> dict[str, dict[str, float]]:
    """The accuracy aims of each model that sets any (its seed instances share them; deqrobust.aims
    checks them): what the report and the figures say, never part of a model's spec."""
    return {name: dict(spec["aims"]) for name, spec in cfg["models"].items() if spec.get("aims")}


def model_spec(cfg: dict, name: str) -> dict:
    """The spec of one model of the config, with its ``training_overrides`` deep-merged into
    the training section as ``training_config``: the one place that merge is made. ``name`` may
    be a seed instance (``<model>.s<seed>``, instances): its model's spec under its name."""
    models = cfg.get("models", {})
    spec = copy.deepcopy(models[name] if name in models else models[instance(cfg, name).model])
    spec.pop("seeds", None)
    spec.pop("aims", None)  # what the report checks the model against, not part of the model
    training = copy.deepcopy(cfg["training"])
    deep_update(training, spec.pop("training_overrides", {}) or {})
    spec["training_config"] = training
    spec["name"] = name
    return spec
