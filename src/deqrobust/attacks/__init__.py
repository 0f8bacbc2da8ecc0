"""Attacks from config specs: ``build_attack(name, spec).run(model, x, y, seed)``.

Every attack is L-inf on [0,1] images and only calls ``model(x)`` and backpropagates,
so the DEQ gradient estimators (custom autograd in the model) apply to all of them.
A spec names its attack type with the key ``name``; eps and step are in units of 1/255.
Omitted AutoAttack settings are the reference ones of the version ("standard", or
"plus" for the single components, as pyautoattack's ``custom`` version uses them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from deqrobust.attacks.autoattack import COMPONENTS, SETTINGS, VERSIONS, autoattack
from deqrobust.attacks.pgd import LOSSES, pgd
from deqrobust.config import ConfigError


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    warnings: list[str] = field(default_factory=list)  # AutoAttack's own (obfuscation evidence)
    log: list[str] = field(default_factory=list)
    broken_by: list[str | None] | None = None  # AutoAttack: per example, "clean", component, or None


class Attack(Protocol):
    name: str

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> AttackOutput: ...


@dataclass
class PGDAttack:
    name: str
    eps: float
    step: float
    steps: int
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> AttackOutput:
        generator = torch.Generator(device=x.device).manual_seed(seed)
        x_adv = pgd(model, x, y, self.eps, self.step, self.steps, self.restarts, self.random_start,
                    generator, self.loss)
        return AttackOutput(x_adv)


@dataclass
class AutoAttackAttack:
    name: str
    eps: float
    version: str = "standard"
    attacks: list[str] | None = None  # custom version only
    settings: dict[str, int] = field(default_factory=dict)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> AttackOutput:
        res = autoattack(model, x, y, self.eps, seed, self.version, self.attacks, self.settings)
        return AttackOutput(res.x_adv, res.warnings, res.log, res.broken_by)


PGD_PARAMS = {"eps_255": 8, "step_255": 2, "steps": 10, "restarts": 1, "random_start": True, "loss": "ce"}
AUTOATTACK_PARAMS = ["eps_255", "version", "attacks", *SETTINGS]
# Single components: spec key -> AutoAttack setting.
COMPONENT_PARAMS = {
    "apgd-ce": {"restarts": "apgd_restarts", "n_iter": "n_iter"},
    "apgd-dlr": {"restarts": "apgd_restarts", "n_iter": "n_iter"},
    "apgd-t": {"restarts": "apgd_t_restarts", "n_iter": "n_iter", "n_target_classes": "n_target_classes"},
    "fab": {"restarts": "fab_restarts", "n_iter": "n_iter"},
    "fab-t": {"n_iter": "n_iter", "n_target_classes": "n_target_classes"},
    "square": {"restarts": "square_restarts", "n_queries": "n_queries"},
}
ATTACK_TYPES = ("pgd", "autoattack", *COMPONENTS)


def _check_keys(name: str, kind: str, spec: dict, valid: list[str]) -> None:
    for key in spec:
        if key != "name" and key not in valid:
            raise ConfigError(f"attack {name!r} ({kind}): unknown parameter {key!r}; "
                              f"valid parameters: {', '.join(valid)}")


def _positive(name: str, key: str, value: Any, integer: bool) -> Any:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"attack {name!r}: {key} must be {kind}, got {value!r}")
    return value


def _choice(name: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"attack {name!r}: {key} {value!r} is not valid; choose one of {', '.join(choices)}")
    return value


def _eps(name: str, spec: dict) -> float:
    return _positive(name, "eps_255", spec.get("eps_255", 8), integer=False) / 255


def _build_pgd(name: str, spec: dict) -> PGDAttack:
    _check_keys(name, "pgd", spec, list(PGD_PARAMS))
    p = {**PGD_PARAMS, **spec}
    if not isinstance(p["random_start"], bool):
        raise ConfigError(f"attack {name!r}: random_start must be true or false, got {p['random_start']!r}")
    return PGDAttack(name, _eps(name, spec), _positive(name, "step_255", p["step_255"], False) / 255,
                     _positive(name, "steps", p["steps"], True), _positive(name, "restarts", p["restarts"], True),
                     p["random_start"], _choice(name, "loss", p["loss"], tuple(LOSSES)))


def _build_autoattack(name: str, spec: dict) -> AutoAttackAttack:
    _check_keys(name, "autoattack", spec, AUTOATTACK_PARAMS)
    version = _choice(name, "version", spec.get("version", "standard"), VERSIONS)
    attacks = spec.get("attacks")
    if version == "custom":
        if not isinstance(attacks, list) or not attacks or len(set(attacks)) != len(attacks):
            raise ConfigError(f"attack {name!r}: version custom needs 'attacks', a list of distinct "
                              f"components from {', '.join(COMPONENTS)}")
        for a in attacks:
            _choice(name, "component", a, COMPONENTS)
        if "fab" in attacks and "fab-t" in attacks and attacks.index("fab") > attacks.index("fab-t"):
            raise ConfigError(f"attack {name!r}: put 'fab' before 'fab-t' (AutoAttack sets FAB to one "
                              "restart when it runs FAB-T)")
    elif attacks is not None:
        raise ConfigError(f"attack {name!r}: 'attacks' is only for version custom (version is {version!r})")
    settings = {k: _positive(name, k, spec[k], True) for k in SETTINGS if k in spec}
    return AutoAttackAttack(name, _eps(name, spec), version, attacks, settings)


def _build_component(name: str, spec: dict) -> AutoAttackAttack:
    kind = spec["name"]
    params = COMPONENT_PARAMS[kind]
    _check_keys(name, kind, spec, ["eps_255", *params])
    settings = {params[k]: _positive(name, k, spec[k], True) for k in params if k in spec}
    return AutoAttackAttack(name, _eps(name, spec), "custom", [kind], settings)


def build_attack(name: str, spec: dict) -> Attack:
    """The attack of config entry ``name``; its type is ``spec["name"]``."""
    kind = spec.get("name")
    if kind not in ATTACK_TYPES:
        raise ConfigError(f"attack {name!r}: unknown attack type {kind!r}; valid types: {', '.join(ATTACK_TYPES)}")
    if kind == "pgd":
        return _build_pgd(name, spec)
    if kind == "autoattack":
        return _build_autoattack(name, spec)
    return _build_component(name, spec)
