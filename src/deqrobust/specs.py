"""The parameters of every gradient estimator and attack type: names, defaults, ranges.

One description, torch-free: the config checks (``deqrobust.plan``, so the Snakefile too,
before any job) and the builders (``estimators.build_estimator``, ``attacks.build_attack``)
read it, so a spec is refused with the same message wherever it is used. A spec is
``{name: <type>, <parameter>: <value>, ...}``; eps and step sizes are in units of 1/255.
What each estimator computes: ``deqrobust.estimators`` and docs/estimators.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from deqrobust.errors import ConfigError
from deqrobust.schema import schema


@dataclass(frozen=True)
class Param:
    """One parameter: its default and what is valid (``default=None``: optional, left unset)."""

    default: Any = None
    kind: str = "number"  # number, integer, boolean, choice, components
    low: float | None = None
    low_open: bool = False  # low itself is not valid
    high: float | None = None
    choices: tuple[str, ...] = ()
    setting: str | None = None  # the AutoAttack setting it sets (single components)

    def describe(self) -> str:
        if self.kind == "integer":
            return "a positive integer" if self.low == 1 else f"an integer >= {self.low:g}"
        if self.high is None:
            return "a positive number" if (self.low, self.low_open) == (0, True) else f"a number >= {self.low:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, owner: str, key: str, value: Any) -> Any:
        """The value, read as this parameter (1e3 is the integer 1000); else a ConfigError
        naming the owner, the key, the value and what is valid."""
        if value is None and self.default is None:
            return None
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise ConfigError(f"{owner}: {key} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"{owner}: {key} {value!r} is not valid; choose one of {', '.join(self.choices)}")
            return value
        if self.kind == "components":
            if not isinstance(value, list):
                raise ConfigError(f"{owner}: {key} must be a list of components from {', '.join(self.choices)}")
            for item in value:
                if item not in self.choices:
                    raise ConfigError(
                        f"{owner}: component {item!r} is not valid; choose one of {', '.join(self.choices)}"
                    )
            return value
        if self.kind == "integer" and isinstance(value, float) and value.is_integer():
            value = int(value)
        number = isinstance(value, int) if self.kind == "integer" else isinstance(value, (int, float))
        if isinstance(value, bool) or not number or not math.isfinite(value) or not self._in_range(value):
            raise ConfigError(f"{owner}: {key} must be {self.describe()}, got {value!r}")
        return value

    def _in_range(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def _positive(default: Any = None, setting: str | None = None) -> Param:
    return Param(default, "integer", low=1, setting=setting)


def _step(default: float) -> Param:
    return Param(default, "number", low=0, low_open=True)


# The L-inf radius of attacks, with the range of the schema's eps (which training.adv uses).
_EPS = schema()["definitions"]["eps"]
EPS_255 = Param(8, "number", low=_EPS["exclusiveMinimum"], low_open=True, high=_EPS["maximum"])
_LAM = Param(0.5, "number", low=0, low_open=True, high=1)
_UNROLL = {"lam": _LAM, "k": Param(9, "integer", low=0)}

ESTIMATORS: dict[str, dict[str, Param]] = {
    "exact": {},
    "unroll": _UNROLL,
    "intermediate": _UNROLL,
    "neumann": {"lam": replace(_LAM, default=1.0), "k": _positive(8)},
    "adjoint": {"variant": Param("lockstep", "choice", choices=("lockstep", "quasi_newton"))},
    "solver_autograd": {},  # autograd through the solver: the deployed model's true gradient
}

# AutoAttack (the reference code through pyautoattack): its components, versions, and the
# settings a spec may give over the version's own: name -> the (component, attribute)
# pairs it sets on the AutoAttack object.
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS = ("standard", "plus", "custom")
AUTOATTACK_SETTINGS: dict[str, tuple[tuple[str, str], ...]] = {
    "apgd_restarts": (("apgd", "n_restarts"),),  # APGD-CE and APGD-DLR
    "apgd_t_restarts": (("apgd_targeted", "n_restarts"),),
    "fab_restarts": (("fab", "n_restarts"),),  # untargeted FAB only: AutoAttack runs FAB-T with 1
    "square_restarts": (("square", "n_restarts"),),
    "n_queries": (("square", "n_queries"),),
    "n_target_classes": (("apgd_targeted", "n_target_classes"), ("fab", "n_target_classes")),
    "n_iter": (("fab", "n_iter"),),  # APGD objects are rebuilt, see attacks.autoattack.configure
}
PGD_LOSSES = ("ce", "cw")


def _component(**settings: str) -> dict[str, Param]:
    """A single AutoAttack component: spec key -> the AutoAttack setting it sets."""
    return {"eps_255": EPS_255, **{key: _positive(setting=target) for key, target in settings.items()}}


ATTACKS: dict[str, dict[str, Param]] = {
    "pgd": {
        "eps_255": EPS_255,
        "step_255": _step(2),
        "steps": _positive(10),
        "restarts": _positive(1),
        "random_start": Param(True, "boolean"),
        "loss": Param("ce", "choice", choices=PGD_LOSSES),
    },
    "autoattack": {
        "eps_255": EPS_255,
        "version": Param("standard", "choice", choices=VERSIONS),
        "attacks": Param(None, "components", choices=COMPONENTS),
        **{name: _positive(setting=name) for name in AUTOATTACK_SETTINGS},
    },
    "apgd-ce": _component(restarts="apgd_restarts", n_iter="n_iter"),
    "apgd-dlr": _component(restarts="apgd_restarts", n_iter="n_iter"),
    "apgd-t": _component(restarts="apgd_t_restarts", n_iter="n_iter", n_target_classes="n_target_classes"),
    "fab": _component(restarts="fab_restarts", n_iter="n_iter"),
    "fab-t": _component(n_iter="n_iter", n_target_classes="n_target_classes"),
    "square": _component(restarts="square_restarts", n_queries="n_queries"),
}


def _params(owner: str, label: str, spec: dict, table: dict[str, Param]) -> dict:
    unknown = [key for key in spec if key != "name" and key not in table]
    if unknown:
        raise ConfigError(
            f"{label}: unknown parameter {unknown[0]!r}; valid parameters: {', '.join(table) or '(none)'}"
        )
    return {key: param.check(owner, key, spec.get(key, param.default)) for key, param in table.items()}


def estimator_params(spec: dict, owner: str | None = None) -> tuple[str, dict]:
    """(type, every parameter with defaults filled) of an estimator spec; ConfigError names
    ``owner`` (the config key, or the estimator) and the valid choices."""
    name = spec.get("name")
    if name not in ESTIMATORS:
        where = f"{owner}: " if owner else ""
        raise ConfigError(f"{where}unknown gradient estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}")
    label = f"{owner} ({name})" if owner else f"estimator {name!r}"
    return name, _params(owner or label, label, spec, ESTIMATORS[name])


def attack_params(spec: dict, owner: str) -> tuple[str, dict]:
    """(type, every parameter with defaults filled) of an attack spec, checked as above."""
    kind = spec.get("name")
    if kind not in ATTACKS:
        raise ConfigError(f"{owner}: unknown attack type {kind!r}; valid types: {', '.join(ATTACKS)}")
    params = _params(owner, f"{owner} ({kind})", spec, ATTACKS[kind])
    if kind == "autoattack":
        _check_autoattack(owner, params["version"], params["attacks"])
    return kind, params


def _check_autoattack(owner: str, version: str, attacks: list[str] | None) -> None:
    if version != "custom":
        if attacks is not None:
            raise ConfigError(f"{owner}: 'attacks' is only for version custom (version is {version!r})")
        return
    if not attacks or len(set(attacks)) != len(attacks):
        raise ConfigError(
            f"{owner}: version custom needs 'attacks', a list of distinct components from {', '.join(COMPONENTS)}"
        )
    if "fab" in attacks and "fab-t" in attacks and attacks.index("fab") > attacks.index("fab-t"):
        raise ConfigError(f"{owner}: put 'fab' before 'fab-t' (AutoAttack sets FAB to one restart when it runs FAB-T)")


def autoattack_settings(kind: str, params: dict) -> dict[str, int]:
    """The AutoAttack settings a checked attack spec gives (those left unset keep the version's)."""
    table = ATTACKS[kind]
    return {
        table[key].setting: value
        for key, value in params.items()
        if table[key].setting is not None and value is not None
    }
