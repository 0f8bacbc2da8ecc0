"""The plan of a profile: names, the checks across sections, the cells and the instances,
the diagnosed estimators and the imported models. What each step depends on is
``deqrobust.slices``; what each job needs, ``deqrobust.jobs``.

Torch-free on purpose: the Snakefile imports this module (and ``deqrobust.config``)
directly, so every rule and check here is the one the library uses.
Each fact below is defined once; docs/architecture.md says who imports it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from deqrobust import specs
from deqrobust.errors import ConfigError
from deqrobust.instances import instances, model_spec
from deqrobust.schema import schema
from deqrobust.sizes import SIZES
from deqrobust.vocab import BASELINE_ESTIMATOR, DEQ_ARCHS, FACTORY, FINAL, MDEQ, TRUE_GRADIENT, SolveSetting, State

# Names of models, estimators and attacks become path components.
NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._+-]*"


# ----------------------------------------------------------------------------- checks
def problems(cfg: dict) -> list[str]:
    """What the schema cannot check, as ``key: what is wrong`` lines (``config.load`` runs
    it on every config): names, references across sections, states within the solver
    budget, MDEQ sizes, estimator and attack specs."""
    ev = cfg["evaluation"]
    estimators, attacks = ev["estimators"], ev["attacks"]
    found = [
        f"{section}.{name}: the name must match {NAME_RE} (it becomes a path component)"
        for section, names in (
            ("models", cfg["models"]),
            ("evaluation.estimators", estimators),
            ("evaluation.attacks", attacks),
        )
        for name in names
        if not re.fullmatch(NAME_RE, name)
    ]
    found += _instance_problems(cfg)
    found += _import_problems(cfg)
    if BASELINE_ESTIMATOR in estimators:
        found.append(
            f"evaluation.estimators.{BASELINE_ESTIMATOR}: the name is reserved for the baselines' plain backprop"
        )
    for name, spec in cfg["models"].items():
        if spec["arch"] == MDEQ and spec["size"] not in SIZES:
            found.append(f"models.{name}.size: {spec['size']!r} is not an MDEQ size; valid sizes: {', '.join(SIZES)}")
    for i, group in enumerate(ev["cells"]):
        found += _undefined(f"evaluation.cells[{i}].estimators", group["estimators"], "estimator", estimators)
        found += _undefined(f"evaluation.cells[{i}].attacks", group["attacks"], "attack", attacks)
        found += _group_model_problems(cfg, i, group)
        for state in group["states"]:
            try:
                State.parse(state, cfg["solver"]["budget"])
            except ConfigError as err:
                found.append(f"evaluation.cells[{i}].states: {err}")
    found += _undefined("evaluation.baseline_attacks", ev["baseline_attacks"], "attack", attacks)
    found += [] if found else _size_problems(cfg)  # sizes need valid models and instances
    for kind, table, check in (
        ("estimators", estimators, specs.estimator_params),
        ("attacks", attacks, specs.attack_params),
    ):
        for name, spec in table.items():
            try:
                check(spec, f"evaluation.{kind}.{name}")
            except ConfigError as err:
                found.append(str(err))
    return found


CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000  # images of the official archive's training and test batches


def _size_problems(cfg: dict) -> list[str]:
    """Batches and image counts that the splits of the official archive cannot fill: refused before
    any job (a job that refuses them would run after Snakemake removed its old outputs). Only
    trained models need a training batch."""
    data, found = cfg["data"], []
    train = min(data["train_subset"] or CIFAR_TRAIN, CIFAR_TRAIN - data["dev_size"])
    test = min(data["test_subset"] or CIFAR_TEST, CIFAR_TEST)
    too_big = [
        (name, size)
        for name in trained(cfg)
        if (size := model_spec(cfg, name)["training_config"]["batch_size"]) > train
    ]
    found += [
        f"training.batch_size: batch {size} of model {name!r} is larger than the training split ({train} "
        f"images: data.train_subset, or {CIFAR_TRAIN:,} minus data.dev_size); valid: at most {train}"
        for name, size in too_big[:1]
    ]
    wanted = cfg["evaluation"]["num_examples"]
    if wanted is not None and wanted > test:
        found.append(
            f"evaluation.num_examples: {wanted} test images asked, the test split has {test} "
            f"(data.test_subset, or {CIFAR_TEST:,}); valid: at most {test}, or null for all"
        )
    return found


def _group_model_problems(cfg: dict, i: int, group: dict) -> list[str]:
    """A cell group's ``models`` must name DEQs of the config (baselines have baseline_attacks)."""
    key, models, found = f"evaluation.cells[{i}].models", cfg["models"], []
    for name in group.get("models", ()):
        if name not in models:
            found.append(f"{key}: unknown model {name!r}; models of this config: {', '.join(models) or '(none)'}")
        elif models[name]["arch"] not in DEQ_ARCHS:
            found.append(f"{key}: {name!r} is not a DEQ; baselines are attacked with evaluation.baseline_attacks")
    return found


def _undefined(key: str | None, names: list[str], kind: str, defined: dict) -> list[str]:
    where = f"{key}: " if key else ""
    return [
        f"{where}unknown {kind} {name!r}; defined in evaluation.{kind}s: {', '.join(defined) or 'none'}"
        for name in names
        if name not in defined
    ]


def spec_of(cfg: dict, kind: str, name: str, key: str | None = None) -> dict:
    """The spec of estimator or attack ``name`` (kind 'estimator' or 'attack'); ConfigError
    naming ``key`` (the config key that refers to it) and the names defined."""
    defined = cfg["evaluation"][f"{kind}s"]
    if name not in defined:
        raise ConfigError(_undefined(key, [name], kind, defined)[0])
    return defined[name]


def require_gpu_message(cfg: dict) -> str:
    """Why a GPU-scale profile (``require_gpu: true``) stops without CUDA, and what to run instead."""
    return (
        f"profile {cfg['profile']!r} is GPU-scale (require_gpu: true) and no CUDA device is visible. "
        "Run the CPU profile instead (config/quick.yaml), or force this one onto the CPU with the "
        "override require_gpu=false (expect weeks of compute)."
    )


# ----------------------------------------------------------------------------- models, seeds and cells
def _instance_problems(cfg: dict) -> list[str]:
    """An instance ``<model>.s<seed>`` may not take the name of a model without seeds."""
    plain = {name for name, spec in cfg["models"].items() if spec.get("seeds") is None}
    return [
        f"models.{i.model}.seeds: instance {i.name!r} has the name of another model; rename one of them"
        for i in instances(cfg)
        if i.name != i.model and i.name in plain
    ]


class Cell(NamedTuple):
    """One evaluation job: a model attacked through an estimator at a state (its text form),
    under the profile's solvers and evaluation batch, or under a cell group's setting where it
    differs from the profile's."""

    model: str
    estimator: str
    attack: str
    state: str
    setting: SolveSetting = SolveSetting()


def coupling_of(cfg: dict) -> str:
    """The coupling a config's solvers run under, as records and tables carry it: 'sample' or
    'batch', or 'forward/backward' ('sample/batch') when the two solvers differ."""
    forward, backward = (cfg[key]["coupling"] for key in ("solver", "backward_solver"))
    return forward if forward == backward else f"{forward}/{backward}"


def cell_config(cfg: dict, setting: SolveSetting = SolveSetting()) -> dict:
    """The config a cell runs with: the setting's coupling for both solvers (the attack and the
    scoring) and its batch for the evaluation batch; None keeps the config's."""
    if setting == SolveSetting():
        return cfg
    solvers = {
        key: {**cfg[key], "coupling": setting.coupling} if setting.coupling is not None else cfg[key]
        for key in ("solver", "backward_solver")
    }
    evaluation = {**cfg["evaluation"], "batch_size": setting.batch_size or cfg["evaluation"]["batch_size"]}
    return {**cfg, **solvers, "evaluation": evaluation}


def _setting(cfg: dict, group: dict) -> SolveSetting:
    """The setting of a cell group's cells: the profile's (SolveSetting()) unless the group's
    differs. A group's coupling (default: the profile's solver.coupling) applies to both solvers."""
    if "coupling" not in group and "batch_size" not in group:
        return SolveSetting()
    setting = SolveSetting(
        group.get("coupling", cfg["solver"]["coupling"]), group.get("batch_size", cfg["evaluation"]["batch_size"])
    )
    own = cell_config(cfg, setting)
    same = (coupling_of(own), setting.batch_size) == (coupling_of(cfg), cfg["evaluation"]["batch_size"])
    return SolveSetting() if same else setting


def deqs(cfg: dict) -> list[str]:
    """The DEQ instances."""
    return [i.name for i in instances(cfg) if cfg["models"][i.model]["arch"] in DEQ_ARCHS]


def trained(cfg: dict) -> list[str]:
    """The instances the workflow trains (not imported): they have training summaries."""
    return [i.name for i in instances(cfg) if i.model not in imported(cfg)]


def trained_deqs(cfg: dict) -> list[str]:
    """The DEQ instances the workflow trains: they keep training snapshots."""
    return [name for name in deqs(cfg) if name in trained(cfg)]


def baselines(cfg: dict) -> list[str]:
    """The deep-network instances."""
    return [i.name for i in instances(cfg) if cfg["models"][i.model]["arch"] not in DEQ_ARCHS]


def cells(cfg: dict) -> list[Cell]:
    """Every evaluation job, in config order: each DEQ instance under every estimator x attack x
    state of each group of ``evaluation.cells`` that applies to its model (a group with ``models``
    applies to those models' instances only), under the group's ``coupling`` and ``batch_size``
    (a cell of the profile's setting whatever group lists it is one job); each baseline instance
    under ``baseline_attacks`` through plain backprop at the final state."""
    ev, budget = cfg["evaluation"], cfg["solver"]["budget"]
    found = [
        Cell(inst.name, estimator, attack, State.parse(state, budget).text, _setting(cfg, group))
        for inst in instances(cfg)
        if cfg["models"][inst.model]["arch"] in DEQ_ARCHS
        for group in ev["cells"]
        if inst.model in group.get("models", [inst.model])
        for estimator in group["estimators"]
        for attack in group["attacks"]
        for state in group["states"]
    ]
    found += [
        Cell(model, BASELINE_ESTIMATOR, attack, FINAL) for model in baselines(cfg) for attack in ev["baseline_attacks"]
    ]
    return list(dict.fromkeys(found))


# The mechanism diagnostics of the analysis compare these estimator types with the true gradient
# (TRUE_GRADIENT, autograd through the solver) of the same output: the ready-made final-state
# gradients at z*, the state-n estimators at each diagnosed state n.
DIAGNOSED_AT_FINAL = ("exact", "unroll", "neumann")
DIAGNOSED_AT_STATES = ("intermediate", "adjoint")


def diagnosed(cfg: dict) -> dict:
    """What ``analysis.diagnostics`` compares: ``estimators``, per config name its spec and
    states ('final', or the diagnosed states n), and ``true_gradient``, the config's name of a
    TRUE_GRADIENT estimator (else the type's name). Null estimators: every one of a diagnosed
    type; null states: 1..solver.budget. ConfigError names a bad name, type or state."""
    section, defined = cfg["analysis"]["diagnostics"], cfg["evaluation"]["estimators"]
    key, budget = "analysis.diagnostics", cfg["solver"]["budget"]
    types = (*DIAGNOSED_AT_FINAL, *DIAGNOSED_AT_STATES)
    names = section["estimators"]
    if names is None:
        names = [name for name, spec in defined.items() if spec["name"] in types]
    found = _undefined(f"{key}.estimators", names, "estimator", defined)
    found += [
        f"{key}.estimators: {name!r} is a {defined[name]['name']!r} estimator; diagnosed types: {', '.join(types)}"
        for name in names
        if name in defined and defined[name]["name"] not in types
    ]
    states = section["states"] if section["states"] is not None else list(range(1, budget + 1))
    for state in states:
        try:
            State.parse(state, budget)
        except ConfigError as err:
            found.append(f"{key}.states: {err}")
    if found:
        raise ConfigError(found[0])
    return {
        "estimators": {
            name: {
                "spec": defined[name],
                "states": [FINAL] if defined[name]["name"] in DIAGNOSED_AT_FINAL else list(states),
            }
            for name in names
        },
        "true_gradient": next((n for n, s in defined.items() if s["name"] == TRUE_GRADIENT), TRUE_GRADIENT),
    }


# ----------------------------------------------------------------------------- imported models
# A model with ``checkpoint:`` (a file of the authors' training code) is imported by
# ``deqrobust import`` (deqrobust.authors) instead of trained; every later step runs on it.
# Their code trains these sizes, trainings and gradient modes. The file does not say how it
# was trained, and the size decides the jobs' resources before the file is read, so each
# key is written on the model: no default fills it, nothing is guessed.
IMPORTED = {"arch": (MDEQ,), "size": ("large", "xl"), "training": ("standard", "pgd"), "grad": ("exact", "unroll")}


def imported(cfg: dict) -> list[str]:
    """The models imported instead of trained (one instance each: no seeds): the authors'
    checkpoints and users' DEQs built by their factory."""
    return [name for name, spec in cfg["models"].items() if "checkpoint" in spec or spec["arch"] == FACTORY]


# A user's DEQ (arch factory) writes these keys; other models may not.
FACTORY_KEYS = ("factory", "weights")


def unwritten_import_keys(raw: dict) -> list[str]:
    """The keys of IMPORTED a model with ``checkpoint`` leaves out, read from the config as
    written (``config.problems`` calls it before the schema's defaults are filled)."""
    models = raw.get("models") if isinstance(raw, dict) else None
    required = schema()["properties"]["models"]["additionalProperties"]["required"]  # the schema names those
    found = []
    for name, spec in models.items() if isinstance(models, dict) else ():
        missing = [
            key
            for key in IMPORTED
            if isinstance(spec, dict) and "checkpoint" in spec and key not in spec and key not in required
        ]
        if missing:
            valid = "; ".join(f"{key}: {' or '.join(IMPORTED[key])}" for key in missing)
            found.append(
                f"models.{name}: a model with a checkpoint must write {', '.join(missing)} itself (no "
                "default applies: the file does not say how the model was trained, and the size sets the "
                f"jobs' resources before the file is read); valid: {valid}"
            )
    return found


def _import_problems(cfg: dict) -> list[str]:
    found = []
    for name, spec in cfg["models"].items():
        factory = spec["arch"] == FACTORY
        found += [
            f"models.{name}.{key}: "
            + (
                "arch factory needs it (your DEQ's builder and its weights)"
                if factory
                else f"only a model of arch {FACTORY} has it"
            )
            for key in (*FACTORY_KEYS, "kwargs")
            if (factory and key in FACTORY_KEYS and key not in spec) or (not factory and key in spec)
        ]
        if factory and spec.get("seeds") is not None:
            found.append(f"models.{name}.seeds: a model of arch {FACTORY} is one instance (its weights); remove seeds")
        if "checkpoint" not in spec:
            continue
        found += [
            f"models.{name}.{key}: the authors' code trains no {key} {spec[key]!r}; valid with a "
            f"checkpoint: {', '.join(valid)}"
            for key, valid in IMPORTED.items()
            if spec[key] not in valid
        ]
        if spec.get("seeds") is not None:
            found.append(
                f"models.{name}.seeds: a model with a checkpoint is one trained instance (its file); "
                "remove seeds, or give each seed its own model and checkpoint"
            )
    return found
