"""Attacks from config specs: ``build_attack(name, spec).run(model, x, y, seed)``.

Every attack is L-inf on [0,1] images and only calls ``model(x)`` and backpropagates,
so the DEQ gradient estimators (custom autograd in the model) apply to all of them.
A spec names its attack type with the key ``name``; eps and step are in units of 1/255.
Omitted AutoAttack settings are the reference ones of the version ("standard", or
"plus" for the single components, as pyautoattack's ``custom`` version uses them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from deqrobust.attacks.autoattack import autoattack
from deqrobust.attacks.pgd import pgd
from deqrobust.specs import attack_params, autoattack_settings


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
        x_adv = pgd(
            model, x, y, self.eps, self.step, self.steps, self.restarts, self.random_start, generator, self.loss
        )
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


def build_attack(name: str, spec: dict) -> Attack:
    """The attack of config entry ``name``; its type is ``spec["name"]``. The spec is checked
    against deqrobust.specs (the description the config checks use)."""
    kind, p = attack_params(spec, f"attack {name!r}")
    eps = p["eps_255"] / 255
    if kind == "pgd":
        return PGDAttack(name, eps, p["step_255"] / 255, p["steps"], p["restarts"], p["random_start"], p["loss"])
    settings = autoattack_settings(kind, p)
    if kind == "autoattack":
        return AutoAttackAttack(name, eps, p["version"], p["attacks"], settings)
    return AutoAttackAttack(name, eps, "custom", [kind], settings)
