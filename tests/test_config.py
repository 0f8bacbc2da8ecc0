"""The torch-free configuration core: loading, overrides, validation, and the plan.

What the Snakefile imports must not import torch; every bad value is refused by name with
the valid choices; the plan's lists and slices follow the config, not the code's guesses.
The same messages through Snakemake: tests/test_workflow.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deqrobust import config, instances, jobs, plan, schema, slices, specs, vocab
from deqrobust.errors import ConfigError
from deqrobust.sizes import SIZES

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "smoke.yaml"


def load(*overrides: str, files=(SMOKE,)) -> dict:
    return config.load(list(files), list(overrides))


def refused(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    return str(err.value)


def test_every_section_gets_the_schema_defaults(tmp_path):
    """A profile that leaves out solver.budget (and every other solver key) runs with the schema's
    defaults: the later steps read a resolved config, with no default of their own."""
    raw = yaml.safe_load(SMOKE.read_text())
    del raw["solver"]["budget"]
    raw["backward_solver"] = {"tol": 0.01}
    path = tmp_path / "no-budget.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load(files=(path,))
    solver = schema.schema()["definitions"]["solver"]["properties"]
    assert cfg["solver"] == {**{k: v["default"] for k, v in solver.items()}, "tol": raw["solver"]["tol"]}
    assert cfg["backward_solver"] == {**cfg["solver"], "tol": 0.01}
    assert {c.state for c in plan.cells(cfg)} >= {"final"} and slices.cell_slice(cfg, "exact", "pgd2")["solver"][
        "budget"
    ]


def test_config_and_plan_import_no_torch():
    code = (
        "import sys; from deqrobust import codeprint, config, jobs, ownership, plan, slices; "
        "cfg = config.load('config/smoke.yaml'); plan.cells(cfg); slices.check_steps(cfg); jobs.gpus(cfg); "
        "ownership.check('results/smoke', 'smoke'); codeprint.command_fingerprint('train'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_commands_never_import_the_cli():
    """cli.py imports the commands; the commands take their helpers from deqrobust.commands."""
    names = [p.stem for p in (REPO / "src" / "deqrobust" / "commands").glob("*.py") if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module('deqrobust.commands.' + name)\n"
        "print('deqrobust.cli' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- reading -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e-3", 1e-3),
        ("1e9", 1e9),
        ("-2.5E+2", -250.0),
        ("1.0e-3", 1e-3),
        ("8", 8),
        (".nan", None),
        ("1e", "1e"),
        ("abc1e3", "abc1e3"),
    ],
)
def test_numbers_in_exponent_form_are_numbers(text, value):
    read = schema.read_yaml(text)
    if value is None:
        assert read != read  # NaN
    else:
        assert read == value and type(read) is type(value)


def test_exponent_values_reach_the_config_typed():
    cfg = load("training.lr=1e-4", "evaluation.num_examples=1e1", "data={archive: /x.tar.gz, allow_md5_mismatch: true}")
    assert cfg["training"]["lr"] == 1e-4
    assert cfg["evaluation"]["num_examples"] == 10 and type(cfg["evaluation"]["num_examples"]) is int
    assert cfg["data"]["archive"] == "/x.tar.gz" and cfg["data"]["allow_md5_mismatch"] is True
    assert cfg["data"]["dev_size"] == 50  # a mapping override is merged into its section


def test_files_merge_in_order_and_overrides_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"training": {"epochs": 3, "unroll": {"k": 4}}, "seed": 7}))
    cfg = load("seed=9", files=(SMOKE, extra))
    smoke = yaml.safe_load(SMOKE.read_text())
    assert cfg["training"]["epochs"] == 3 and cfg["training"]["unroll"] == {
        "lam": smoke["training"]["unroll"]["lam"],
        "k": 4,
    }
    assert cfg["training"]["batch_size"] == smoke["training"]["batch_size"]
    assert cfg["seed"] == 9


def test_model_spec_deep_merges_training_overrides():
    cfg = load("models.deq-std.training_overrides={unroll: {k: 7}, epochs: 2, batch_size: 1e1}")
    merged = instances.model_spec(cfg, "deq-std")["training_config"]
    assert merged["unroll"] == {"lam": cfg["training"]["unroll"]["lam"], "k": 7} and merged["epochs"] == 2
    assert merged["batch_size"] == 10 and type(merged["batch_size"]) is int
    assert instances.model_spec(cfg, "deq-adv")["training_config"] == cfg["training"]


# ---- refused, by key, with what is valid ---------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluation.num_examples=-5", "evaluation.num_examples: -5 is less than the minimum of 1"),
        ("evaluation.early_exit.num_examples=0", "evaluation.early_exit.num_examples: 0 is less than the minimum of 1"),
        ("training.adv.eps_255=1000", "training.adv.eps_255: 1000 is greater than the maximum of 255"),
        ("training.lr=.nan", "training.lr: nan is not a finite number"),
        ("training.lr=-1e-3", "training.lr: -0.001 is less than or equal to the minimum of 0"),
        ("training.batch_size=0", "training.batch_size: 0 is less than the minimum of 1"),
        (
            "models.deq-std.size=huge",
            "models.deq-std.size: 'huge' is not an MDEQ size; valid sizes: mini, tiny, small, large, xl",
        ),
        ("models.deq-std.training=sgd", "models.deq-std.training: 'sgd' is not one of ['standard', 'pgd', 'fgsm']"),
        (
            "training.epochz=3",
            "training: Additional properties are not allowed ('epochz' was unexpected); valid keys: epochs,",
        ),
        (
            "models.deq-std.training_overrides={epochz: 1}",
            "models.deq-std.training_overrides: Additional properties are not allowed ('epochz' was unexpected)",
        ),
        (
            "models.deq-std.aims={clean: 0.5, pgd: 0.2}",
            "models.deq-std.aims: Additional properties are not allowed ('pgd' was unexpected); "
            "valid keys: clean, pgd10, autoattack, worst_case",
        ),
        ("models.deq-std.aims={clean: 55}", "models.deq-std.aims.clean: 55 is greater than the maximum of 1"),
        (
            "models.deq-std.training_overrides={lr: .inf}",
            "models.deq-std.training_overrides.lr: inf is not a finite number",
        ),
        (
            "evaluation.cells=[{estimators: [exact], attacks: [pgd2], states: [4]}]",
            "evaluation.cells[0].states: state 4 is not valid for a solver budget of 3 (solver.budget); "
            "valid states: 'final', 'ensemble', 0..3",
        ),
        ("evaluation.cells=[{estimators: [exact], attacks: [pgd2], states: [middle]}]", "state 'middle' is not valid"),
        (
            "evaluation.cells=[{estimators: [exact], attacks: [pgd9], states: [final]}]",
            "evaluation.cells[0].attacks: unknown attack 'pgd9'; defined in evaluation.attacks: pgd2, apgd-ce",
        ),
        ("evaluation.baseline_attacks=[fgsm]", "evaluation.baseline_attacks: unknown attack 'fgsm'"),
        (
            "evaluation.attacks.pgd2.eps_255=1000",
            "evaluation.attacks.pgd2: eps_255 must be a number in (0, 255], got 1000",
        ),
        (
            "evaluation.attacks.pgd2.stepz=1",
            "evaluation.attacks.pgd2 (pgd): unknown parameter 'stepz'; valid parameters: "
            "eps_255, step_255, steps, restarts, random_start, loss",
        ),
        ("evaluation.estimators.unroll.lam=0", "evaluation.estimators.unroll: lam must be a number in (0, 1], got 0"),
        ("evaluation.estimators.autograd={name: exact}", "evaluation.estimators.autograd: the name is reserved"),
        ("models={'bad name': {arch: mdeq, training: standard}}", "models.bad name: the name must match"),
        # values a job could only refuse after Snakemake removed its old outputs, refused here (issue 16)
        (
            "training.batch_size=300",
            "training.batch_size: batch 300 of model 'deq-std' is larger than the training split "
            "(200 images: data.train_subset, or 50,000 minus data.dev_size); valid: at most 200",
        ),
        (
            "evaluation.num_examples=100000000",
            "evaluation.num_examples: 100000000 test images asked, the test split has 50 "
            "(data.test_subset, or 10,000); valid: at most 50, or null for all",
        ),
        ("data.dev_size=100000000", "data.dev_size: 100000000 is greater than the maximum of 49999"),
        ("solver.budget=100000000", "solver.budget: 100000000 is greater than the maximum of 1000"),
    ],
)
def test_bad_values_are_refused_by_key(override, message):
    text = refused(override)
    assert message in text, text
    assert text.startswith(f"invalid config ({SMOKE}, {override}):")


def test_errors_are_a_few_lines_not_the_schema():
    text = refused(
        "evaluation.num_examples=-1",
        "training.batch_size=0",
        "training.lr=-1",
        "training.epochs=0",
        "data.dev_size=0",
        "training.pretrain_unroll=0",
        "training.adv.steps=0",
    )
    lines = text.splitlines()
    assert len(lines) == 1 + config.MAX_LINES + 1 and lines[-1] == "  (and 2 more)"
    assert "properties" not in text and "$schema" not in text


def test_states_follow_the_one_grammar():
    cfg = load("evaluation.cells=[{estimators: [intermediate], attacks: [pgd2], states: [0, '3', final, ensemble]}]")
    states = [c.state for c in plan.cells(cfg) if c.model == "deq-std"]
    assert states == ["0", "3", "final", "ensemble"]
    assert all(re.fullmatch(vocab.STATE_RE, text) for text in states)


@pytest.mark.parametrize(
    "file, message", [("missing.yaml", "does not exist"), (".", "does not exist (it is a folder)")]
)
def test_unreadable_files_are_named(tmp_path, file, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load(tmp_path / file)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a: 1\nb:\n  c: 2\n  c: 3\n",
            "line 4, column 3, is not valid YAML: key 'c' is given twice (lines 3 and 4); keep one",
        ),
        ("a: [1, 2\nb: 3\n", "line 2, column 2, is not valid YAML: expected ',' or ']', but got ':'"),
    ],
)
def test_yaml_errors_name_the_file_and_line_and_a_key_given_twice_is_refused(tmp_path, text, message):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.read_file(path)
    assert str(err.value) == f"config file {str(path)!r}, {message}" or message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_profile_without_models_is_refused(tmp_path):
    cfg = yaml.safe_load(Path(SMOKE).read_text())
    cfg["models"] = {}
    for group in cfg["evaluation"]["cells"]:
        group.pop("models", None)
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="models: {} should be non-empty"):
        config.load(path)


def test_bad_override_syntax_is_named():
    with pytest.raises(ConfigError, match="override 'training.epochs' must look like key.sub=value"):
        load("training.epochs")
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load("seed.x=1")


# ---- the plan --------------------------------------------------------------------------------


def test_cells_follow_the_config():
    cfg = load()
    cells = plan.cells(cfg)
    assert len(cells) == len(set(cells))
    ev = cfg["evaluation"]
    expected = {
        (m, e, a, str(s), vocab.SolveSetting(g.get("coupling"), g.get("batch_size")))
        for m in ("deq-std", "deq-adv")
        for g in ev["cells"]
        if m in g.get("models", [m])
        for e in g["estimators"]
        for a in g["attacks"]
        for s in g["states"]
    }
    expected |= {
        ("resnet18-adv", vocab.BASELINE_ESTIMATOR, a, vocab.FINAL, vocab.SolveSetting()) for a in ev["baseline_attacks"]
    }
    assert set(cells) == expected
    assert plan.deqs(cfg) == ["deq-std", "deq-adv"] and plan.baselines(cfg) == ["resnet18-adv"]


def test_a_coupled_group_is_its_own_cells_with_its_own_path_and_slice():
    """smoke's batch-coupled group (batch 10, the profile's batch, under coupling batch): cells
    beside the per-sample ones of the same estimator, attack and state, a path suffix, and a
    slice with both solvers batch-coupled; the profile's cells keep their paths and slices."""
    cfg = load()
    cells = plan.cells(cfg)
    batch10 = vocab.SolveSetting("batch", 10)
    coupled = [c for c in cells if c.setting != vocab.SolveSetting()]
    assert {tuple(c) for c in coupled} == {
        ("deq-adv", e, "pgd2", "final", batch10) for e in ("exact", "solver_autograd")
    }
    assert plan.Cell("deq-adv", "exact", "pgd2", "final") in cells  # the per-sample one stays
    assert [c.setting.suffix for c in coupled] == [".batch10"] * 2
    assert vocab.SolveSetting.parse_suffix(".batch10") == batch10
    assert vocab.SolveSetting.parse_suffix("") == vocab.SolveSetting()
    assert all(c.setting.suffix == "" for c in cells if c not in coupled)
    plain = slices.cell_slice(cfg, "exact", "pgd2")
    batch = slices.cell_slice(plan.cell_config(cfg, batch10), "exact", "pgd2")
    assert plan.cell_config(cfg) is cfg and plain["solver"]["coupling"] == "sample"  # the profile's, resolved
    assert batch["solver"]["coupling"] == batch["backward_solver"]["coupling"] == "batch"
    assert {k: v for k, v in batch.items() if k not in ("solver", "backward_solver")} == {
        k: v for k, v in plain.items() if k not in ("solver", "backward_solver")
    }
    assert (
        plan.coupling_of(cfg) == "sample"
        and plan.coupling_of(plan.cell_config(cfg, vocab.SolveSetting("batch"))) == "batch"
    )


@pytest.mark.parametrize(
    "group, expected",
    [
        ({}, (None, None)),  # the profile's: no suffix
        ({"coupling": "sample"}, (None, None)),  # written but the profile's setting
        ({"batch_size": 10}, (None, None)),
        ({"coupling": "batch"}, ("batch", 10)),  # the batch defaults to evaluation.batch_size
        ({"batch_size": 4}, ("sample", 4)),  # the coupling to solver.coupling
        ({"coupling": "batch", "batch_size": 96}, ("batch", 96)),
    ],
)
def test_a_group_is_off_the_profile_only_where_its_setting_differs(group, expected):
    cfg = load()
    cfg["evaluation"]["cells"] = [{"estimators": ["exact"], "attacks": ["pgd2"], "states": ["final"], **group}]
    assert {c.setting for c in plan.cells(cfg) if c.estimator == "exact"} == {vocab.SolveSetting(*expected)}


def test_a_mixed_profile_is_named_and_a_group_coupling_sets_both_solvers():
    cfg = load("backward_solver.coupling=batch")
    assert plan.coupling_of(cfg) == "sample/batch"
    cfg["evaluation"]["cells"] = [
        {"estimators": ["exact"], "attacks": ["pgd2"], "states": ["final"], "coupling": "sample"}
    ]
    assert {c.setting for c in plan.cells(cfg) if c.estimator == "exact"} == {vocab.SolveSetting("sample", 10)}


def test_a_bad_group_coupling_or_batch_is_named():
    assert "evaluation.cells[0].coupling: 'authors' is not one of ['sample', 'batch']" in refused(
        "evaluation.cells=[{estimators: [exact], attacks: [pgd2], states: [final], coupling: authors}]"
    )
    assert "evaluation.cells[0].batch_size: 0 is less than the minimum of 1" in refused(
        "evaluation.cells=[{estimators: [exact], attacks: [pgd2], states: [final], batch_size: 0}]"
    )


def test_step_references_are_checked_by_their_slices():
    cfg = load("evaluation.early_exit.estimator=nope")  # a valid config for the steps that do not use it
    with pytest.raises(
        ConfigError,
        match="evaluation.early_exit.estimator: unknown estimator 'nope'; "
        "defined in evaluation.estimators: exact, unroll, neumann, solver_autograd, "
        "intermediate, adjoint",
    ):
        slices.check_steps(cfg)
    cfg = load("analysis.attack=nope")
    with pytest.raises(ConfigError, match="analysis.attack: unknown attack 'nope'"):
        slices.analysis_slice(cfg)


def test_train_slice_ignores_what_never_changes_a_model():
    base = slices.settings(slices.train_slice(load(), "deq-std"))
    assert slices.settings(slices.train_slice(load("training.distributed_backend=gloo"), "deq-std")) == base
    assert (
        "amp" not in slices.train_slice(load(), "deq-std")["spec"]["training_config"]
    )  # off: as before the key existed
    for change in (
        "training.amp=true",
        "training.epochs=2",
        "models.deq-std.training=pgd",
        "models.deq-std.training_overrides={unroll: {k: 3}}",
        "data.train_subset=100",
        "solver.tol=0",
    ):
        assert slices.settings(slices.train_slice(load(change), "deq-std")) != base, change
    assert slices.settings(slices.train_slice(load("evaluation.num_examples=5"), "deq-std")) == base


def test_cell_slice_holds_the_specs_of_its_cell():
    cfg = load()
    one = slices.cell_slice(cfg, "exact", "pgd2")
    assert one["estimator"] == {"name": "exact"} and one["attack"] == cfg["evaluation"]["attacks"]["pgd2"]
    assert slices.cell_slice(cfg, vocab.BASELINE_ESTIMATOR, "pgd2")["estimator"] is None
    other = load("evaluation.attacks.apgd-ce.n_iter=3")
    assert slices.cell_slice(other, "exact", "pgd2") == one and slices.cell_slice(
        other, "exact", "apgd-ce"
    ) != slices.cell_slice(cfg, "exact", "apgd-ce")


def test_every_model_has_resources():
    archs = schema.schema()["properties"]["models"]["additionalProperties"]["properties"]["arch"]["enum"]
    assert set(jobs.RESOURCES) == set(SIZES) | {a for a in archs if a != "mdeq"}
    cfg = load()
    assert jobs.resources(cfg, "deq-std") == jobs.RESOURCES["mini"] != jobs.RESOURCES["large"]
    assert jobs.resources(cfg, "resnet18-adv") == jobs.RESOURCES["preact_resnet18"]


# ---- one description of estimators and attacks, used by the builders ----------------------------


def test_builders_use_the_spec_table():
    from deqrobust.attacks import build_attack
    from deqrobust.attacks.pgd import LOSSES
    from deqrobust.estimators import ESTIMATORS, build_estimator

    assert set(specs.ESTIMATORS) == set(ESTIMATORS)
    for name, params in specs.ESTIMATORS.items():
        built = build_estimator({"name": name})
        assert built == ESTIMATORS[name](**{k: p.default for k, p in params.items()})
    assert specs.PGD_LOSSES == tuple(LOSSES)
    pgd = build_attack("a", {"name": "pgd", "steps": 1e1, "eps_255": 4})
    assert pgd.steps == 10 and type(pgd.steps) is int and pgd.eps == 4 / 255
    with pytest.raises(ConfigError, match="attack 'a': eps_255 must be a number in \\(0, 255\\], got 256"):
        build_attack("a", {"name": "square", "eps_255": 256})
