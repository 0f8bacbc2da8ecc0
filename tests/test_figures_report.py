"""Results queries, figures, main table and the report command on hand-made results whose answers are known
(the verdicts themselves: tests/test_verdicts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_command

from deqrobust import analysis, errors, figures, inputs, queries, report, stats, tabular, tidy
from deqrobust.stats import wilson
from deqrobust.vocab import BASELINE_ESTIMATOR

ROOT = Path(__file__).resolve().parents[1]
STATES = (1, 2, 3, 4)
ATTACKS = {"pgd10": {"name": "pgd", "steps": 10}, "aa": {"name": "autoattack"}}
ESTIMATORS = {name: {"name": name} for name in ("exact", "unroll", "intermediate", "adjoint")}
CFG = {
    "profile": "unit",
    "training": {"epochs": 1},
    "solver": {"name": "broyden", "budget": 4, "tol": 1e-3, "coupling": "sample"},
    "backward_solver": {"name": "broyden", "budget": 4, "tol": 1e-3, "coupling": "sample"},
    "evaluation": {"batch_size": 100, "attacks": ATTACKS, "estimators": ESTIMATORS},
    "models": {
        "deq_std": {"arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact"},
        "deq_pgd": {"arch": "mdeq", "size": "tiny", "training": "pgd", "grad": "exact"},
        "resnet_pgd": {"arch": "preact_resnet18", "training": "pgd"},
    },
}
MODELS = {name: (spec["arch"], spec["training"], spec.get("grad", "")) for name, spec in CFG["models"].items()}


def row(
    model: str, estimator: str, attacked: str, attack: str, defense: str, scored: str, acc: float, n: int = 400
) -> dict:
    """One table row as merge writes it, with the spec columns of ATTACKS and ESTIMATORS."""
    arch, training, grad = MODELS[model]
    correct = round(min(max(acc, 0.0), 1.0) * n)
    low, high = wilson(correct, n)
    specs = (
        dict.fromkeys(tidy.SPEC_COLUMNS)
        if attack in tidy.PSEUDO_ATTACKS
        else {
            **tidy.attack_columns(ATTACKS[attack]),
            **tidy.estimator_columns(estimator, ESTIMATORS.get(estimator, {})),
        }
    )
    return {
        "model": model,
        "arch": arch,
        "training": training,
        "grad": grad,
        "estimator": estimator,
        "attacked_state": attacked,
        "attack": attack,
        "defense": defense,
        "scored_state": scored,
        "correct": correct,
        "n": n,
        "accuracy": correct / n,
        "ci_low": low,
        "ci_high": high,
        "coupling": "sample",
        "batch_size": 100,
        **specs,
    }


def deq_rows(model: str, final_acc: float, inter_acc: float, exit_acc: float, attacks=("pgd10", "aa")) -> list[dict]:
    """Cells of one DEQ: final-state estimators score ``final_acc`` on defense final, intermediate ones
    ``inter_acc``; early exit and ensemble score ``exit_acc`` under every attack."""
    rows = []
    cells = [
        ("exact", "final", final_acc),
        ("unroll", "final", final_acc + 0.02),
        ("intermediate", "2", inter_acc),
        ("adjoint", "3", inter_acc + 0.01),
    ]
    for attack in attacks:
        bump = 0.0 if attack == "aa" else 0.03
        for estimator, attacked, acc in cells:
            rows.append(row(model, estimator, attacked, attack, "final", "final", acc + bump))
            rows.append(row(model, estimator, attacked, attack, "early_exit", "state_2", exit_acc + bump))
            rows.append(row(model, estimator, attacked, attack, "ensemble", "ensemble", exit_acc - 0.02 + bump))
            rows += [
                row(model, estimator, attacked, attack, "state", f"state_{s}", acc + 0.02 * s + bump) for s in STATES
            ]
    worst = min(final_acc, inter_acc)
    for defense, scored, clean, adv in [
        ("final", "final", 0.8, worst),
        ("early_exit", "state_2", 0.75, exit_acc),
        ("ensemble", "ensemble", 0.77, exit_acc - 0.02),
    ]:
        rows.append(row(model, "none", "none", "clean", defense, scored, clean))
        rows.append(row(model, "any", "any", "worst-case", defense, scored, adv))
    for s in STATES:
        rows.append(row(model, "none", "none", "clean", "state", f"state_{s}", 0.6 + 0.05 * s))
        rows.append(row(model, "any", "any", "worst-case", "state", f"state_{s}", worst + 0.01 * s))
    return rows


def make_table(
    inter_stronger: bool = True, defenses_help: bool = True, autoattack: bool = True, baseline_acc: float | None = 0.22
) -> pd.DataFrame:
    attacks = ("pgd10", "aa") if autoattack else ("pgd10",)
    final_acc, inter_acc = (0.45, 0.20) if inter_stronger else (0.20, 0.45)
    rows = deq_rows("deq_pgd", final_acc, inter_acc, 0.35 if defenses_help else 0.05, attacks)
    rows += deq_rows("deq_std", 0.02, 0.0, 0.01, attacks)
    if baseline_acc is not None:
        for attack in attacks:
            rows.append(row("resnet_pgd", BASELINE_ESTIMATOR, "final", attack, "final", "final", baseline_acc + 0.02))
        rows.append(row("resnet_pgd", "none", "none", "clean", "final", "final", 0.8))
        rows.append(row("resnet_pgd", "any", "any", "worst-case", "final", "final", baseline_acc))
    return pd.DataFrame(rows)


def fake_analysis(name: str, rel: np.ndarray, seed: int = 0) -> dict:
    """An analysis record as ``deqrobust analyze`` writes it, from a given residual trace."""
    rng = np.random.default_rng(seed)
    n, budget = rel.shape
    correct = rng.random((n, budget)) < 0.6
    _, training, grad = MODELS[name]
    inputs = {
        kind: analysis.summarise(rel * scale, correct, correct[:, -1], 1e-3)
        for kind, scale in (("clean", 1.0), ("adversarial", 3.0))
    }
    return {
        "format": analysis.FORMAT,
        "model": {"name": name, "arch": "mdeq", "size": "tiny", "training": training, "grad": grad},
        "profile": "unit",
        "num_examples": n,
        "solver": {"name": "broyden", "budget": budget, "tol": 0.0},
        "tol": 1e-3,
        "deployed_budget": 4,
        "attack": "pgd10",
        "estimator": "exact",
        "inputs": inputs,
        "warnings": ["Square beats the white-box attacks"],
        **fake_diagnostics(rel, rng, training != "standard"),
    }


def fake_diagnostics(rel: np.ndarray, rng, misaligned: bool, examples: int = 8) -> dict:
    """The mechanism diagnostics of an analysis record: cosines near 1, lower at the final state
    of a ``misaligned`` model, falling with n for the state estimators."""

    def cosines(centre: float) -> list:
        return np.clip(centre + 0.05 * rng.standard_normal(examples), -1, 1).tolist()

    entries = []
    for kind in ("clean", "adversarial"):
        final = 0.4 if misaligned else 0.97
        entries += [
            {"inputs": kind, "estimator": e, "estimator_type": e, "state": "final", "cosine": cosines(final)}
            for e in ("exact", "unroll")
        ]
        entries += [
            {"inputs": kind, "estimator": e, "estimator_type": e, "state": n, "cosine": cosines(1 - 0.1 * n)}
            for e in ("intermediate", "adjoint")
            for n in STATES
        ]
    for e in entries:
        e["median"] = float(np.median(e["cosine"]))
    budget = 4
    return {
        "alignment": entries,
        "forward_residual": {"clean": rel[:, budget - 1].tolist(), "adversarial": (3 * rel[:, budget - 1]).tolist()},
        "backward_residual": {
            kind: (scale * rng.random(examples)).tolist() for kind, scale in (("clean", 1e-3), ("adversarial", 1e-1))
        },
        "batch_dependence": {
            c: {e: {"state": "final", "cosine": cosines(value), "median": value} for e in ("exact", "solver_autograd")}
            for c, value in (("sample", 1.0), ("batch", 0.7))
        },
        "diagnostics": {
            "num_examples": examples,
            "batch_size": 20,
            "coupling": "sample",
            "backward_solver": {"name": "broyden", "budget": 3, "tol": 1e-3},
            "true_gradient": "solver_autograd",
            "estimators": {},
        },
    }


def analyses(adv_slower: bool = True) -> list[dict]:
    steps = np.arange(1, 13)
    fast = np.tile(10.0 ** (-steps / 2), (20, 1)) * np.linspace(0.5, 2, 20)[:, None]
    slow = np.tile(0.3 * 0.9**steps, (20, 1)) * np.linspace(0.5, 2, 20)[:, None]
    std, adv = (fast, slow) if adv_slower else (slow, fast)
    return [fake_analysis("deq_std", std), fake_analysis("deq_pgd", adv, seed=1)]


def test_headline_metrics_and_missing_autoattack():
    metrics = queries.headline_metrics(make_table(autoattack=False))
    final = metrics["deq_pgd"]["final"]
    assert final["clean"] == pytest.approx(0.8) and final["pgd10"] == pytest.approx(0.23)
    assert final["autoattack"] is None and final["worst_case"] == pytest.approx(0.20)
    assert set(metrics["resnet_pgd"]) == {"final"}
    header, rows = tabular.main_table_rows(make_table(autoattack=False), "unit")
    assert all(r[header.index("AutoAttack")] == tabular.NOT_RUN for r in rows if r[-1].startswith("measured"))


def with_attack(table: pd.DataFrame, attack: str, spec: dict) -> pd.DataFrame:
    """The table with one attack's spec columns replaced, as if the config had given ``spec``."""
    table = table.copy()
    rows = table["attack"] == attack
    for column, value in tidy.attack_columns(spec).items():
        table.loc[rows, column] = value
    return table


@pytest.mark.parametrize(
    "spec, heading",
    [
        ({"name": "autoattack"}, "AutoAttack"),
        ({"name": "autoattack", "version": "standard", "eps_255": 8}, "AutoAttack"),
        ({"name": "autoattack", "n_iter": 20}, "AutoAttack standard (n_iter=20)"),
        ({"name": "autoattack", "version": "plus"}, "AutoAttack plus"),
        (
            {"name": "autoattack", "version": "custom", "attacks": ["apgd-ce", "square"]},
            "AutoAttack custom: APGD-CE+Square",
        ),
        ({"name": "apgd-ce", "n_iter": 20, "restarts": 1}, "APGD-CE (20 it.)"),
        (
            {"name": "apgd-t", "n_iter": 100, "n_target_classes": 9, "restarts": 5},
            "APGD-T (100 it., 9 target classes, 5 restarts)",
        ),
        ({"name": "square", "n_queries": 5000}, "Square (5000 queries)"),
    ],
)
def test_autoattack_heading_says_what_ran(spec: dict, heading: str):
    """'AutoAttack' only for the standard suite at its own settings; else the attack and its iterations."""
    table = with_attack(make_table(), "aa", spec)
    assert dict(queries.main_columns(table))["autoattack"] == heading
    header, rows = tabular.main_table_rows(table, "unit")
    column = header.index(heading)
    measured = [r for r in rows if r[-1].startswith("measured")]
    assert all(r[column] != tabular.NOT_RUN for r in measured)
    references = [r[column] for r in rows if r[-1].startswith("RobustBench")]
    assert all(r.endswith("(AutoAttack)") == (heading != "AutoAttack") for r in references)


def test_metrics_columns_name_what_ran_under_the_fixed_keys(tmp_path: Path):
    """metrics.json keeps the key `autoattack` (the metrics history) and says what ran under it."""
    from deqrobust import report

    path = tmp_path / "table.csv"
    with_attack(make_table(), "aa", {"name": "apgd-ce", "n_iter": 20, "restarts": 1}).to_csv(path, index=False)
    record = report.metrics(tidy.load_table(path), CFG, [])
    assert record["columns"] == {
        "clean": "clean",
        "pgd10": "PGD-10",
        "autoattack": "APGD-CE (20 it.)",
        "worst_case": "worst case",
    }
    assert set(record["accuracy"]["deq_pgd"]["final"]) == {*record["columns"], "n"}
    assert record["accuracy"]["deq_pgd"]["final"]["autoattack"] is not None


def test_pgd_heading_and_attacks_outside_the_main_table():
    table = with_attack(make_table(), "pgd10", {"name": "pgd", "steps": 10, "restarts": 5})
    assert queries.main_columns(table)[1] == ("pgd10", "PGD-10 (5 restarts)")
    # Another radius or step count is not the paper's PGD-10 / AutoAttack: not run, under the default heading.
    table = with_attack(
        with_attack(make_table(), "pgd10", {"name": "pgd", "steps": 20}), "aa", {"name": "autoattack", "eps_255": 4}
    )
    assert [h for _, h in queries.main_columns(table)] == ["clean", "PGD-10", "AutoAttack", "worst case"]
    assert queries.headline_metrics(table)["deq_pgd"]["final"]["pgd10"] is None
    assert (
        tidy.attack_label("autoattack", json.loads(table.loc[table["attack"] == "aa", "attack_params"].iloc[0]))
        == "AutoAttack standard (eps 4/255)"
    )


def test_heading_of_several_attacks_names_them_all():
    table = make_table()
    extra = with_attack(table[table["attack"] == "aa"], "aa", {"name": "apgd-ce", "n_iter": 20})
    extra = extra.assign(attack="apgd-ce", accuracy=extra["accuracy"] - 0.05)
    both = pd.concat([table, extra], ignore_index=True)
    assert dict(queries.main_columns(both))["autoattack"] == "strongest of AutoAttack, APGD-CE (20 it.)"
    assert queries.main_rows(both)[0]["autoattack"]["attack"] == "apgd-ce"


def test_figures_survive_missing_pieces(tmp_path: Path):
    """A profile with only a baseline and no analysis still gets every file, with notes instead of errors."""
    table = make_table(autoattack=False)
    written = figures.write_all(table[table["model"] == "resnet_pgd"], [], tmp_path, "unit")
    assert all(p.stat().st_size > 0 for p in written)
    assert "not run" in (tmp_path / "main.md").read_text()


def inside_canvas(fig) -> bool:
    """All of the figure's text lies inside its canvas (the tight box within the figure's size)."""
    fig.draw_without_rendering()
    box, (width, height) = fig.get_tightbbox(), fig.get_size_inches()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


def test_heatmap_with_long_names_is_not_clipped_and_scales_to_the_data(tmp_path: Path):
    long = {"pgd10": "pgd-10-steps-with-a-very-long-configuration-name", "aa": "autoattack-standard-reference-suite"}
    table = make_table()
    model = "deq-adversarially-trained-with-pgd-and-a-long-descriptive-name"
    table = table[table["model"] == "deq_pgd"].assign(
        model=model,
        attack=lambda d: d["attack"].replace(long),
        estimator=lambda d: d["estimator"].where(
            d["estimator"].isin(["none", "any"]), d["estimator"] + "-gradient-estimator-with-a-long-name"
        ),
    )
    fig = figures.heatmap_figure(table, model)
    assert inside_canvas(fig)
    drawn = table[table["defense"].isin(tidy.DEFENSES) & ~table["attack"].isin(tidy.PSEUDO_ATTACKS)]
    values = 100 * drawn["accuracy"]
    for ax in fig.axes[:3]:  # one panel per defense, then the colour bar
        mesh = ax.collections[0]
        assert (mesh.norm.vmin, mesh.norm.vmax) == (pytest.approx(values.min()), pytest.approx(values.max()))
    assert {t.get_text() for ax in fig.axes[:3] for t in ax.texts} == {f"{v:.1f}%" for v in values}
    figures.save_figure(fig, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 0


def test_every_figure_fits_its_canvas():
    table, records = make_table(), analyses()
    for fig in (
        figures.residual_figure(records),
        figures.convergence_figure(records),
        figures.sample_traces_figure(records),
        figures.state_accuracy_figure(records, table),
        figures.alignment_figure(records),
        figures.residual_distribution_figure(records),
        *(figures.heatmap_figure(table, m) for m in table["model"].unique()),
    ):
        assert inside_canvas(fig), fig.get_suptitle() or fig.axes[0].get_title()


def test_alignment_figure_draws_the_medians_per_state_and_final_markers():
    records = analyses()
    fig = figures.alignment_figure(records)
    assert inside_canvas(fig)
    axes = np.array(fig.axes).reshape(2, 2)  # rows clean, adversarial; columns deq_std, deq_pgd
    entries = {(e["estimator"], e["state"]): e for e in records[1]["alignment"] if e["inputs"] == "adversarial"}
    ax = axes[1, 1]
    assert "deq_pgd" in ax.get_title() and "adversarial" in ax.get_title()
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["intermediate"].get_xdata(), STATES)
    np.testing.assert_allclose(
        lines["intermediate"].get_ydata(), [entries[("intermediate", n)]["median"] for n in STATES]
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == [*map(str, STATES), "final"]
    finals = [c for c in ax.containers if c.get_label() == "exact (final)"]
    (marker,) = finals[0].lines[0].get_ydata()
    assert marker == pytest.approx(entries[("exact", "final")]["median"])


def test_residual_distribution_figure_and_records_without_diagnostics():
    records = analyses()
    fig = figures.residual_distribution_figure(records)
    assert inside_canvas(fig)
    frame = analysis.diagnostic_residual_frame(records)
    assert len(frame) == sum(
        len(v) for r in records for key in ("forward_residual", "backward_residual") for v in r[key].values()
    )
    old = [
        {
            k: v
            for k, v in r.items()
            if k not in ("alignment", "forward_residual", "backward_residual", "batch_dependence", "diagnostics")
        }
        for r in records
    ]
    for fig in (figures.alignment_figure(old), figures.residual_distribution_figure(old)):
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert any(t.startswith("no ") for t in texts), texts
        assert inside_canvas(fig)


def test_figures_are_byte_identical_across_runs(tmp_path: Path):
    """The strip plot's jitter is seeded: two runs on the same data give the same PNG bytes (DVC and
    git see no change), and the global numpy generator is left as it was."""
    import numpy as np

    state = np.random.get_state()[1].copy()
    paths = [
        figures.save_figure(figures.residual_distribution_figure(analyses()), tmp_path / f"{i}.png") for i in range(2)
    ]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert (np.random.get_state()[1] == state).all()


def test_the_report_says_where_its_data_and_models_came_from(tmp_path: Path):
    """The archive (official or not) in the scale section, the table and metrics.json; the machine
    each model was trained on, and a warning when the models came from different machines."""
    from deqrobust import report

    path = tmp_path / "table.csv"
    make_table().assign(data_md5="0123abcd", data_official=False).to_csv(path, index=False)
    table = tidy.load_table(path)
    intel = {
        "processor": "Intel Xeon",
        "architecture": "x86_64",
        "threads": 1,
        "cpu_capability": "AVX512",
        "torch": "2.14.1",
        "blas": "mkl",
        "gpu": None,
    }
    machines = {"deq_pgd": intel, "deq_std": {**intel, "processor": "AMD EPYC"}, "old": None}
    text = report.render(table, [], CFG, [], machines=machines)
    scale = text.split("## Scale", 1)[1].split("## How the verdicts were decided", 1)[0]
    assert "- data: archive MD5 0123abcd, **not the official CIFAR-10 archive**" in scale
    assert "- model `deq_pgd` trained on: Intel Xeon (x86_64, AVX512), 1 thread, torch 2.14.1, BLAS mkl" in scale
    assert "- model `old` trained on: not recorded" in scale and "trained on different machines" in scale
    record = report.metrics(table, CFG, [], machines=machines)
    assert (
        record["data"] == {"md5": "0123abcd", "official": False}
        and record["trained_on"]["deq_std"]["processor"] == "AMD EPYC"
    )
    bare = tmp_path / "bare.csv"
    make_table().to_csv(bare, index=False)  # merged without the data's split record
    assert "- data: not recorded" in report.render(tidy.load_table(bare), [], CFG, [])


def write_outputs(folder: Path) -> tuple[Path, list[Path]]:
    """A table CSV and two analysis JSONs as the workflow would leave them."""
    table = folder / "table.csv"
    folder.mkdir(parents=True, exist_ok=True)
    make_table().to_csv(table, index=False)
    paths = []
    for record in analyses():
        path = folder / "analysis" / f"{record['model']['name']}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(record))
        paths.append(path)
    return table, paths


def write_config(path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({k: v for k, v in CFG.items()}))
    return path


def test_figures_and_report_commands(tmp_path: Path):
    table, paths = write_outputs(tmp_path / "reports")
    cfg = write_config(tmp_path / "unit.yaml")
    out = tmp_path / "figures"
    assert (
        run_command(
            "figures", ["-c", str(cfg), "--table", str(table), "--analysis", *map(str, paths), "--out-dir", str(out)]
        )
        == 0
    )
    for name in (
        "residual.png",
        "convergence.png",
        "residual_samples.png",
        "state_accuracy.png",
        "heatmap_deq_pgd.png",
        "heatmap_resnet_pgd.png",
        "alignment.png",
        "residual_distribution.png",
        "main.md",
        "main.tex",
    ):
        assert (out / name).stat().st_size > 0, name
    main_md = (out / "main.md").read_text()
    for text in ("deq_pgd", "deq_std", "resnet_pgd", "early_exit", "Madry", "Rice", "Wong", "RobustBench"):
        assert text in main_md
    assert r"\toprule" in (out / "main.tex").read_text() and "deq\\_pgd" in (out / "main.tex").read_text()

    md, metrics = tmp_path / "report.md", tmp_path / "metrics.json"
    assert (
        run_command(
            "report",
            [
                "-c",
                str(cfg),
                "--table",
                str(table),
                "--analysis",
                *map(str, paths),
                "--out",
                str(md),
                "--metrics",
                str(metrics),
            ],
        )
        == 0
    )
    text = md.read_text()
    # Claim 1 reads the analyses; claims 2-5 need per-example outcomes (tests/test_verdicts.py), not given here.
    assert "profile `unit`" in text and text.count("Rule:") == 5 and "| 1 | **held** |" in text
    assert text.count("no per-example outcomes were given") >= 4
    record = json.loads(metrics.read_text())
    assert record["verdicts"] == {"1": stats.HELD, **dict.fromkeys("2345", stats.NOT_TESTED)}
    assert record["p_values"]["1"] < stats.ALPHA and record["accuracy"]["deq_pgd"]["final"]["n"] == 400
    assert record["columns"]["autoattack"] == "AutoAttack" and list(record["columns"]) == list(queries.MAIN_KEYS)


def checkout(root: Path, profile: str = "unit") -> Path:
    """A minimal checkout: Snakefile, params.yaml choosing ``profile``, its config, table and analyses."""
    import yaml

    (root / "notebooks").mkdir(parents=True)
    (root / "Snakefile").write_text("# the project root marker\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"profile": profile}))
    (root / "config").mkdir()
    (root / "config" / f"{profile}.yaml").write_text(
        yaml.safe_dump({**CFG, "profile": profile, "reports": f"reports/{profile}", "results": f"results/{profile}"})
    )
    table, paths = write_outputs(root / "reports" / profile)
    (root / "results" / profile / "analysis").mkdir(parents=True)
    for path in paths:
        path.rename(root / "results" / profile / "analysis" / path.name)
    return root


def test_notebook_inputs_found_from_another_working_directory(tmp_path: Path, monkeypatch):
    root = checkout(tmp_path / "clone")
    for name in ("DEQROBUST_PROFILE", "DEQROBUST_CONFIG", "DEQROBUST_REPORTS", "DEQROBUST_TABLE", "DEQROBUST_ANALYSIS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root / "notebooks")
    paths = inputs.notebook_inputs()
    assert paths["config"]["profile"] == "unit" and paths["table"] == root / "reports" / "unit" / "table.csv"
    assert [p.name for p in paths["analysis"]] == ["deq_pgd.json", "deq_std.json"]
    assert all(p.is_file() for p in paths["analysis"])
    assert len(tidy.load_table(paths["table"])) == len(make_table())
    # Outside any checkout: the checkout of an editable install, else a message saying what to do.
    monkeypatch.chdir(tmp_path)
    package_checkout = Path(inputs.__file__).resolve().parents[2]
    if (package_checkout / "Snakefile").is_file():
        assert inputs.project_root() == package_checkout
    else:
        with pytest.raises(errors.ConfigError, match="no Snakefile.*DEQROBUST_CONFIG"):
            inputs.project_root()


def test_notebook_inputs_read_the_runs_overrides_say_what_they_read_and_refuse_missing_ones(
    tmp_path: Path, monkeypatch
):
    """The notebooks load the config the report loaded (the run's --config overrides), print the
    profile and the files they read, and stop on a required input they cannot find."""
    root = checkout(tmp_path / "clone")
    for name in (
        "DEQROBUST_PROFILE",
        "DEQROBUST_CONFIG",
        "DEQROBUST_REPORTS",
        "DEQROBUST_TABLE",
        "DEQROBUST_ANALYSIS",
        "DEQROBUST_OUTCOMES",
        "DEQROBUST_EARLY_EXIT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(root)
    monkeypatch.setenv("DEQROBUST_OVERRIDES", '["evaluation.num_examples=7", "solver={tol: 0.5}"]')
    paths = inputs.notebook_inputs(require=("table", "analysis"))
    assert paths["config"]["evaluation"]["num_examples"] == 7 and paths["config"]["solver"]["tol"] == 0.5
    text = inputs.describe_inputs(paths)
    assert (
        text.startswith("profile 'unit' (config ") and "table: " + str(root / "reports" / "unit" / "table.csv") in text
    )
    assert "outcomes: none" in text
    for analysis_file in (root / "results" / "unit" / "analysis").glob("*.json"):
        analysis_file.unlink()
    with pytest.raises(
        errors.ConfigError,
        match="notebook input 'analysis' of profile 'unit': no file found; run the workflow for this profile first",
    ):
        inputs.notebook_inputs(require=("analysis",))


def test_the_first_screen_answers_every_claim_and_the_details_state_each_rule_once(tmp_path: Path):
    """The report's first screen (before "## Scale") holds each claim's verdict and effect and the key
    figure; the details hold each claim's rule exactly once, as templates/claims.yaml words it."""
    path = tmp_path / "table.csv"
    make_table().to_csv(path, index=False)
    comparison = stats.mcnemar(np.array([1] * 30 + [0] * 70), np.array([1] * 20 + [0] * 80), "greater")
    findings = [
        report.Finding(claim, "held" if claim == 2 else "not tested", "why", comparison if claim == 2 else None)
        for claim in range(1, 6)
    ]
    text = report.render(tidy.load_table(path), [], CFG, findings)
    first, details = text.split("## Scale", 1)
    for claim in range(1, 6):
        assert f"| {claim} | {report.SHORT[claim]} | **{findings[claim - 1].verdict}** |" in first
        assert text.count(report.RULES[claim]) == 1 and report.RULES[claim] in details
    assert report.effect_text(comparison) in first and "](figures/state_accuracy.png)" in first
    assert "{{" not in text and "{%" not in text  # every placeholder filled


@pytest.mark.parametrize("columns", [tidy.SPEC_COLUMNS, tidy.SOLVE_COLUMNS])
def test_a_table_of_an_older_deqrobust_is_refused_naming_what_it_lacks(tmp_path: Path, columns):
    old = tmp_path / "table.csv"
    make_table().drop(columns=list(columns)).to_csv(old, index=False)
    with pytest.raises(errors.ConfigError, match=f"older than 0.2 \\(no columns {columns[0]}.*rerun `deqrobust merge`"):
        tidy.load_table(old)
    new = tmp_path / "new.csv"
    tidy.write_table(make_table(), new)
    assert list(tidy.load_table(new).columns[: len(tidy.COLUMNS)]) == list(tidy.COLUMNS)


@pytest.mark.parametrize("notebook", ["evaluation_matrix.py", "fixed_point_analysis.py"])
def test_notebooks_execute(tmp_path: Path, monkeypatch, notebook: str):
    import jupytext
    from nbclient import NotebookClient

    table, paths = write_outputs(tmp_path / "reports")
    monkeypatch.setenv("DEQROBUST_TABLE", str(table))
    monkeypatch.setenv("DEQROBUST_ANALYSIS", ",".join(map(str, paths)))
    monkeypatch.setenv("DEQROBUST_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("DEQROBUST_CONFIG", str(write_config(tmp_path / "unit.yaml")))
    nb = jupytext.read(ROOT / "notebooks" / notebook)
    assert nb.metadata["language_info"]["name"] == "python"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in o.get("data", {})
    ]
    assert images, "the notebook showed no figure"


def test_notebook_runs_in_its_own_folder_without_variables(tmp_path: Path, monkeypatch):
    """As Jupyter runs it: the kernel starts in notebooks/ and no DEQROBUST_* variable is set."""
    import jupytext
    from nbclient import NotebookClient

    root = checkout(tmp_path / "clone")
    for name in ("DEQROBUST_PROFILE", "DEQROBUST_CONFIG", "DEQROBUST_REPORTS", "DEQROBUST_TABLE", "DEQROBUST_ANALYSIS"):
        monkeypatch.delenv(name, raising=False)
    nb = jupytext.read(ROOT / "notebooks" / "evaluation_matrix.py")
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(root / "notebooks")}}
    ).execute()
    text = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "reports/unit/table.csv" in text
