"""Accuracy aims (deqrobust.aims): checked against the deployed model's test accuracy with known
answers, reported on the first screen and in the metrics, drawn beside the learning curves, and
never part of a model (an aim added after training reruns nothing)."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
from matplotlib.colors import to_rgb
from test_figures_report import CFG, inside_canvas, make_table

from deqrobust import aims, figures, plan, queries, report, schema, slices
from deqrobust.config import load
from deqrobust.instances import model_aims

ROOT = Path(__file__).resolve().parents[1]


def with_aims(**by_model: dict) -> dict:
    cfg = copy.deepcopy({**CFG, "seed": 0})
    for name, aims_of_model in by_model.items():
        cfg["models"][name]["aims"] = aims_of_model
    return cfg


def test_the_aim_keys_are_the_main_tables():
    keys = schema.schema()["properties"]["models"]["additionalProperties"]["properties"]["aims"]["properties"]
    assert tuple(keys) == queries.MAIN_KEYS


def test_aims_are_checked_against_the_deployed_models_strongest_cell():
    """make_table's deq_pgd: clean 80 % on the final defense; its strongest PGD-10 cell on the final
    defense is the intermediate-state attack (23 %), not the exact one (48 %); deq_std's strongest
    AutoAttack cell is 0 %. An aim equal to the estimate is reached."""
    cfg = with_aims(deq_pgd={"clean": 0.8, "pgd10": 0.25}, deq_std={"autoattack": 0.5})
    found = aims.checks(cfg, make_table())
    assert [(c.model, c.metric, c.aim, c.measured["accuracy"], c.reached) for c in found] == [
        ("deq_std", "autoattack", 0.5, 0.0, False),
        ("deq_pgd", "clean", 0.8, 0.8, True),
        ("deq_pgd", "pgd10", 0.25, 0.23, False),
    ]
    assert found[2].measured["estimator"] == "intermediate"
    unmeasured = aims.checks(cfg, make_table(autoattack=False))[0]
    assert unmeasured.reached is None and unmeasured.text("AutoAttack") == "AutoAttack: not measured (aim 50 %)"


def test_seed_instances_share_their_models_aims():
    cfg = with_aims(deq_pgd={"clean": 0.5})
    cfg["models"]["deq_pgd"]["seeds"] = [0, 1]
    table = make_table()
    table = pd.concat(
        [table.assign(model=table["model"].replace("deq_pgd", f"deq_pgd.s{s}")) for s in (0, 1)], ignore_index=True
    )
    assert [(c.model, c.reached) for c in aims.checks(cfg, table)] == [("deq_pgd.s0", True), ("deq_pgd.s1", True)]


def test_the_report_states_each_aim_and_the_first_screen_counts_them():
    cfg = with_aims(deq_pgd={"clean": 0.8, "pgd10": 0.25}, deq_std={"autoattack": 0.5})
    table = make_table()
    text = report.render(table, [], cfg, [])
    first, details = text.split("## Scale", 1)
    assert "accuracy aims: 1 of 3 reached" in first
    assert "- deq_pgd: clean 80.0 % [" in details and "(aim 80 %: reached)" in details
    assert "PGD-10 23.0 % [" in details and "(aim 25 %: **missed**)" in details
    assert "figures/learning_curves.png" in details
    record = report.metrics(table, cfg, [])["aims"]
    assert [(a["model"], a["metric"], a["reached"]) for a in record] == [
        ("deq_std", "autoattack", False),
        ("deq_pgd", "clean", True),
        ("deq_pgd", "pgd10", False),
    ]
    assert "Accuracy aims" not in report.render(table, [], {**CFG, "seed": 0}, [])


def test_learning_curves_figure_draws_every_instance_and_each_aim(tmp_path: Path):
    cfg = with_aims(deq_pgd={"clean": 0.45, "pgd10": 0.25})
    paths = []
    for name, clean in (("deq_pgd", [0.3, 0.4, 0.42]), ("deq_std", [0.4, 0.5, 0.53])):
        path = tmp_path / name / "metrics.csv"
        path.parent.mkdir()
        pd.DataFrame(
            {"epoch": [0.5, 1.0, 1.5], "dev_clean_acc": clean, "dev_robust_acc": [c / 2 for c in clean]}
        ).to_csv(path, index=False)
        paths.append(path)
    curves = aims.learning_curves(paths, cfg)
    assert set(curves["model"]) == {"deq_pgd", "deq_std"} and set(curves["base_model"]) == {"deq_pgd", "deq_std"}
    fig = figures.learning_curves_figure(curves, model_aims(cfg))
    assert inside_canvas(fig)
    clean_panel, robust_panel = fig.axes[:2]
    assert len(clean_panel.lines) == 3 and len(robust_panel.lines) == 3  # two curves and one aim each
    assert 45.0 in {line.get_ydata()[0] for line in clean_panel.lines}
    written = figures.write_all(make_table(), [], tmp_path / "figures", "unit", None, curves, model_aims(cfg))
    assert tmp_path / "figures" / "learning_curves.png" in written


def test_learning_curves_take_their_trainings_colour_as_the_other_figures_do(tmp_path: Path):
    """Colour by training, marker by model: the two PGD-AT models share pgd's colour whatever their
    names, and the aim is drawn in its model's training's colour."""
    cfg = with_aims(deq_pgd={"clean": 0.45})
    paths = []
    for name in ("resnet_pgd", "deq_std", "deq_pgd"):  # an order in which neither names nor trainings sort
        path = tmp_path / name / "metrics.csv"
        path.parent.mkdir()
        pd.DataFrame({"epoch": [0.5, 1.0], "dev_clean_acc": [0.3, 0.4], "dev_robust_acc": [0.1, 0.2]}).to_csv(
            path, index=False
        )
        paths.append(path)
    curves = aims.learning_curves(paths, cfg)
    assert dict(zip(curves["model"], curves["training"])) == {
        "resnet_pgd": "pgd",
        "deq_std": "standard",
        "deq_pgd": "pgd",
    }
    clean_panel = figures.learning_curves_figure(curves, model_aims(cfg)).axes[0]
    colours = figures.training_colours(["pgd", "standard"])
    lines = {line.get_label(): line for line in clean_panel.lines}
    for name, training in (("resnet_pgd", "pgd"), ("deq_pgd", "pgd"), ("deq_std", "standard")):
        assert to_rgb(lines[name].get_color()) == to_rgb(colours[training])
    assert lines["resnet_pgd"].get_marker() != lines["deq_pgd"].get_marker()
    aim = next(line for line in clean_panel.lines if line.get_ydata()[0] == 45.0)
    assert to_rgb(aim.get_color()) == to_rgb(colours["pgd"])


def test_an_aim_is_no_part_of_the_model_so_adding_one_reruns_only_figures_and_report():
    """The settings params that decide a rerun: a model's training and cells, its analyses and
    early exit are equal with and without aims; the figures' and the report's differ."""
    plain = load([str(ROOT / "config" / "smoke.yaml")])
    aimed = load([str(ROOT / "config" / "smoke.yaml")], ["models.deq-adv.aims={clean: 0.9}"])
    for name in plan.trained(plain):
        assert slices.settings(slices.train_slice(plain, name)) == slices.settings(slices.train_slice(aimed, name))
    for slice_of in (slices.select_slice, slices.analysis_slice, slices.trajectory_slice):
        assert slices.settings(slice_of(plain)) == slices.settings(slice_of(aimed))
    assert slices.settings(slices.report_slice(plain)) != slices.settings(slices.report_slice(aimed))
