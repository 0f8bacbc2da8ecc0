"""Cells under the authors' batch-coupled solver beside the profile's (a cell group's ``coupling``
and ``batch_size``): the cell runs and scores under that solver at that batch, the merge keeps the
settings apart, and the report compares them without letting them into the claims.

The plan's side (cells, paths, slices) is in tests/test_config.py, the workflow's jobs in
tests/test_workflow.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deqrobust import config, data, report, seeds, solvers, stats, tidy
from deqrobust.attacks import build_attack
from deqrobust.checkpoint import save_checkpoint
from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import build_estimator, model_estimator
from deqrobust.evaluation import run_cell
from deqrobust.models import build_model
from deqrobust.scoring import all_state_logits
from deqrobust.solvers import solve
from deqrobust.vocab import SolveSetting

N_TEST = 12
SOLVER = {"name": "broyden", "budget": 3, "tol": 1e-3}  # the tolerance is set from the fixture's residuals below


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A mini MDEQ briefly trained on the synthetic images and a profile of 12 test images in one
    batch, per-sample decisions. The solver's tolerance is the median of the test images' own
    residuals at step 2, so by construction some images meet it at step 2 and some do not: the
    per-sample and the batch-coupled solvers then return other iterates for some images, whatever
    the processor's rounding."""
    from conftest import synthetic_batches, write_archive, write_config

    tmp = tmp_path_factory.mktemp("coupled")
    archive = write_archive(tmp / "cifar.tar.gz", synthetic_batches(20, N_TEST, 0))
    evaluation = {
        "num_examples": N_TEST,
        "batch_size": N_TEST,
        "estimators": {"exact": {"name": "exact"}},
        "attacks": {"pgd1": {"name": "pgd", "steps": 1}},
    }
    cfg = config.load(
        write_config(
            tmp / "unit.yaml",
            tmp / "data",
            archive,
            solver=SOLVER,
            evaluation=evaluation,
            models={"deq": {"arch": "mdeq", "size": "mini", "training": "standard", "grad": "exact"}},
        )
    )
    data.prepare(cfg)
    torch.manual_seed(0)
    spec = {**cfg["models"]["deq"], "name": "deq"}
    model = build_model(spec)
    x, y = data.load_split(cfg, "train")
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(15):  # three unrolled steps, the head on each: cheap, and enough to separate the classes
        pick = torch.randint(0, len(x), (20,))
        injection, z, loss = model.prepare(x[pick]), model.init_state(x[pick]), 0.0
        for _ in range(3):
            z = model.f(z, injection)
            loss = loss + torch.nn.functional.cross_entropy(model.head(z), y[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    x_test, _ = data.load_split(cfg, "test")
    with torch.no_grad():
        injection = model.prepare(x_test)
        traced = solve({**SOLVER, "tol": 0.0}, lambda z: model.f(z, injection), model.init_state(x_test))
    step2 = traced.rel_trace[:, 1]
    cfg["solver"]["tol"] = float(step2.median())
    assert 0 < int((step2 <= cfg["solver"]["tol"]).sum()) < N_TEST  # some meet it at step 2, some not
    save_checkpoint(tmp / "deq.pt", model, spec, epoch=1.0, metrics={}, profile="unit")
    return cfg, tmp, model


def reference(cfg: dict, model, coupling: str, size: int) -> dict:
    """Clean and adversarial correctness of a solve with ``coupling`` (both solvers) in batches of
    ``size``, and the clean logits at the final state: the attack (the cell's seeds) through exact
    at the final state, every defense scored."""
    solver, backward = ({**cfg[key], "coupling": coupling} for key in ("solver", "backward_solver"))
    own = model_estimator({"name": "exact"}, cfg["training"])
    target = DEQLogits(model, build_estimator({"name": "exact"}), None, solver, backward, own=own)
    attack = build_attack("pgd1", cfg["evaluation"]["attacks"]["pgd1"])
    x, y = data.load_split(cfg, "test")
    found, logits = {"clean": [], "adversarial": []}, []
    for i, start in enumerate(range(0, N_TEST, size)):
        xb, yb = x[start : start + size], y[start : start + size]
        x_adv = attack.run(target, xb, yb, seed=seeds.derive(cfg["seed"], seeds.TEST_ATTACK, i)).x_adv
        for kind, inputs in (("clean", xb), ("adversarial", x_adv)):
            with torch.no_grad():
                scored = all_state_logits(model, inputs, solver, own)
            found[kind].append({k: (v.argmax(1) == yb).int() for k, v in scored.items()})
            if kind == "clean":
                logits.append(scored["final"])
    outcomes = {
        kind: {k: torch.cat([part[k] for part in parts]).tolist() for k in parts[0]} for kind, parts in found.items()
    }
    return {"outcomes": outcomes, "logits": torch.cat(logits)}


@pytest.fixture
def solves(monkeypatch) -> list[tuple[str, int]]:
    """Every forward or backward solve run from now on, as (coupling, rows of the batch)."""
    seen, inner = [], solvers._solve

    def spy(spec, f, z0, *args, **kwargs):
        seen.append((solvers.SolverSpec.parse(spec).coupling, z0.shape[0]))
        return inner(spec, f, z0, *args, **kwargs)

    monkeypatch.setattr(solvers, "_solve", spy)
    return seen


def test_a_coupled_cell_attacks_and_scores_under_batch_coupling_at_its_batch(trained, solves):
    cfg, tmp, model = trained
    batch3, sample = reference(cfg, model, "batch", 3), reference(cfg, model, "sample", N_TEST)
    # The fixture tells the settings apart (by its tolerance): some image's final state differs.
    assert not torch.allclose(batch3["logits"], sample["logits"], rtol=0, atol=1e-6)
    solves.clear()
    coupled = run_cell(
        cfg, str(tmp / "deq.pt"), "exact", "pgd1", "final", tmp / "coupled.json", SolveSetting("batch", 3)
    )
    assert solves and set(solves) == {("batch", 3)}  # every solve of the cell: batch-coupled, 3 images
    solves.clear()
    plain = run_cell(cfg, str(tmp / "deq.pt"), "exact", "pgd1", "final", tmp / "plain.json")
    assert solves and set(solves) == {("sample", N_TEST)}
    assert (coupled["coupling"], coupled["batch_size"], coupled["timing"]["batches"]) == ("batch", 3, 4)
    assert (plain["coupling"], plain["batch_size"], plain["timing"]["batches"]) == ("sample", N_TEST, 1)
    assert {k: coupled[k] for k in ("clean", "adversarial")} == batch3["outcomes"]
    assert {k: plain[k] for k in ("clean", "adversarial")} == sample["outcomes"]
    assert json.loads((tmp / "coupled.json").read_text())["coupling"] == "batch"


# ---------------------------------------------------------------- merge and report on hand-made cells
N = 300
ATTACKS = {"pgd10": {"name": "pgd", "steps": 10}}
ESTIMATORS = {"exact": {"name": "exact"}, "truth": {"name": "solver_autograd"}}
KEYS = ("final", "ensemble", "state_1", "state_2")
CFG = {
    "profile": "unit",
    "training": {"epochs": 1},
    "models": {"deq-adv": {"arch": "mdeq", "size": "mini", "training": "pgd", "grad": "exact"}},
    "solver": {"name": "broyden", "budget": 2, "tol": 1e-3, "coupling": "sample"},
    "backward_solver": {"name": "broyden", "budget": 2, "tol": 1e-3, "coupling": "sample"},
    "evaluation": {"batch_size": 100, "attacks": ATTACKS, "estimators": ESTIMATORS},
}


def first(k: int) -> list[int]:
    return [1] * k + [0] * (N - k)


def write_cell(folder: Path, estimator: str, final: list[int], coupling: str | None, clean: int = 250) -> Path:
    """A cell as run_cell writes it (coupling None: as a deqrobust before 0.2 wrote it, without its setting)."""
    setting = {} if coupling is None else {"coupling": coupling, "batch_size": 96 if coupling == "batch" else 100}
    record = {
        "model": "deq-adv",
        "base_model": "deq-adv",
        "arch": "mdeq",
        "training": "pgd",
        "grad": "exact",
        "estimator": estimator,
        "estimator_spec": ESTIMATORS[estimator],
        "attack": "pgd10",
        "attack_spec": ATTACKS["pgd10"],
        "attacked_state": "final",
        **setting,
        "checkpoint_md5": "5eed",
        "seed": 0,
        "profile": "unit",
        "num_examples": N,
        "indices": list(range(N)),
        "labels": [0] * N,
        "clean": {k: first(clean) for k in KEYS},
        "adversarial": {k: list(final) for k in KEYS},
    }
    path = folder / f"{estimator}-{coupling}.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def cells(tmp_path) -> list[Path]:
    """Per sample (the profile's): exact and the true gradient both leave 100 correct (no
    over-estimate). Batch-coupled at 96: exact leaves 150, the true gradient 100 (an over-estimate
    of 50 of 300, all of it the coupling's); clean 240 instead of 250."""
    return [
        write_cell(tmp_path, "exact", first(100), "sample"),
        write_cell(tmp_path, "truth", first(100), "sample"),
        write_cell(tmp_path, "exact", first(150), "batch", clean=240),
        write_cell(tmp_path, "truth", first(100), "batch", clean=240),
    ]


def rows(frame, **equal):
    keep = True
    for column, value in equal.items():
        keep = keep & (frame[column] == value)
    return frame[keep]


def test_merge_keeps_the_settings_apart_and_builds_each_worst_case_from_one(cells):
    frame = tidy.merge_outcomes(cells, [], CFG)
    assert set(zip(frame["coupling"], frame["batch_size"])) == {("sample", 100), ("batch", 96)}
    attacked = rows(frame, attack="pgd10", defense="final", scored_state="final", estimator="exact")
    assert sorted(attacked["outcomes"].str.count("1")) == [100, 150]
    worst = rows(frame, attack=tidy.WORST_CASE, defense="final")
    assert dict(zip(worst["coupling"], worst["outcomes"].str.count("1"))) == {"sample": 100, "batch": 100}
    clean = rows(frame, attack=tidy.CLEAN, defense="final")  # one clean row per setting
    assert dict(zip(clean["coupling"], clean["outcomes"].str.count("1"))) == {"sample": 250, "batch": 240}
    profile = tidy.profile_rows(tidy.tabulate(frame), CFG)
    assert set(profile["coupling"]) == {"sample"} and len(profile) == len(frame) / 2


def test_a_worst_case_never_mixes_settings(tmp_path):
    """Example 0 falls only to the batch-coupled attack: the per-sample worst case keeps it."""
    both = [
        write_cell(tmp_path, "exact", [1, 1] + [0] * (N - 2), "sample"),
        write_cell(tmp_path, "truth", [0, 1] + [0] * (N - 2), "batch"),
    ]
    worst = rows(tidy.merge_outcomes(both, [], CFG), attack=tidy.WORST_CASE, defense="final")
    assert dict(zip(worst["coupling"], worst["outcomes"].str[:2])) == {"sample": "11", "batch": "01"}


def test_cells_of_an_older_deqrobust_are_refused_naming_what_they_lack(tmp_path):
    old = write_cell(tmp_path, "exact", first(100), None)
    with pytest.raises(ConfigError, match=r"older than 0.2 \(no coupling, batch_size\).*rerun the cell"):
        tidy.merge_outcomes([old], [], CFG)


def test_report_claims_read_the_profiles_setting_and_a_section_compares_the_couplings(cells):
    frame = tidy.merge_outcomes(cells, [], CFG)
    profile_only = tidy.merge_outcomes([c for c in cells if "sample" in c.name], [], CFG)
    both, alone = report.findings([], CFG, frame), report.findings([], CFG, profile_only)
    assert [(f.verdict, f.reason, f.evidence) for f in both] == [(f.verdict, f.reason, f.evidence) for f in alone]
    assert both[1].verdict != stats.HELD  # per sample, exact does not over-estimate ...
    assert report.claim2(frame, []).verdict == stats.HELD  # ... the batch-coupled exact cell would have held it

    pairs = report.coupling_pairs(frame, CFG)
    assert [(p["cell"], p["result"].counts) for p in pairs] == [
        ("exact@final pgd10", "b=50, c=0, n=300 (A 150/300, B 100/300)"),
        ("truth@final pgd10", "b=0, c=0, n=300 (A 100/300, B 100/300)"),
    ]
    exact = pairs[0]["result"]
    assert exact.p_adjusted == pytest.approx(min(1.0, 2 * 0.5**50)) and exact.family == 2
    [gap] = report.coupling_gaps(frame, CFG)
    assert (gap["estimator"], gap["batch_size"], gap["share"]) == ("exact", 96, 1.0)
    assert gap["under"]["batch"].estimate == pytest.approx(50 / 300) and gap["under"]["sample"].estimate == 0

    analyses = [
        {
            "model": {"name": "deq-adv", "training": "pgd", "grad": "exact"},
            "diagnostics": {"batch_size": 96},
            "batch_dependence": {
                c: {"exact": {"state": "final", "cosine": [m, m], "median": m}}
                for c, m in (("sample", 1.0), ("batch", 0.6))
            },
        }
    ]
    text = report.render(tidy.tabulate(frame), [], CFG, both, frame)
    section = "\n".join(report.coupling_lines(frame, analyses, CFG))
    assert "## Batch coupling" in text and "## Batch coupling" in section
    assert (
        "| deq-adv | exact@final pgd10 | 33.3 % (sample coupling, batch 100) | 50.0 % (batch coupling, batch 96) | "
        "+16.7 ["
    ) in section
    assert "80.0 % under batch coupling, batch 96; 83.3 % under sample coupling, batch 100" in section
    assert "| deq-adv | pgd10 | exact | +0.0 [" in section and "| 100 % |" in section
    assert "| deq-adv | exact | final | 96 | 1 | 0.6 |" in section
    main = text.split("## Main table", 1)[1]
    assert "deq-adv / final: clean 83.3 %" in main and "PGD-10 33.3 %" in main  # the profile's cells only
    assert "80.0 %" not in main and "50.0 %" not in main
    assert report.metrics(tidy.tabulate(frame), CFG, both, frame)["batch_coupling"][0]["batch"] == {
        "accuracy": 0.5,
        "coupling": "batch",
        "batch_size": 96,
    }


def test_no_section_without_coupled_cells(cells):
    frame = tidy.merge_outcomes([c for c in cells if "sample" in c.name], [], CFG)
    assert report.coupling_lines(frame, [], CFG) == [] and "Batch coupling" not in report.render(
        tidy.tabulate(frame), [], CFG, report.findings([], CFG, frame), frame
    )
    assert "batch_coupling" not in report.metrics(tidy.tabulate(frame), CFG, report.findings([], CFG, frame), frame)
