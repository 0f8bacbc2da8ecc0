"""The report's verdicts on constructed per-example outcomes and analysis records with known answers.

Cells are written as ``evaluation.run_cell`` writes them and go through ``tidy.merge_outcomes``
(the merge the workflow runs), so the tests cover the outcome file and the claims together.
Outcome vectors are nested prefixes (the first k examples correct), so the McNemar counts are
known: A = first(n, 150) against B = first(n, 100) gives b = 50, c = 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_command

from deqrobust import analysis, config, errors, report, stats, tidy
from deqrobust.errors import ConfigError
from deqrobust.vocab import BASELINE_ESTIMATOR

ATTACKS = {"pgd10": {"name": "pgd", "steps": 10}, "apgd": {"name": "apgd-ce", "n_iter": 20}}
ESTIMATORS = {
    "exact": {"name": "exact"},
    "unroll": {"name": "unroll"},
    "inter": {"name": "intermediate"},
    "truth": {"name": "solver_autograd"},
}
KEYS = ("final", "ensemble", "state_1", "state_2", "state_3")
MODELS = {
    "deq-std": {"arch": "mdeq", "size": "mini", "training": "standard", "grad": "exact"},
    "deq-adv": {"arch": "mdeq", "size": "mini", "training": "pgd", "grad": "exact"},
    "resnet-adv": {"arch": "preact_resnet18", "width": 8, "training": "pgd"},
}  # 176K vs the DEQ's 162K
CFG = {
    "profile": "unit",
    "models": MODELS,
    "solver": {"name": "broyden", "budget": 3, "tol": 1e-3, "coupling": "sample"},
    "backward_solver": {"name": "broyden", "budget": 3, "tol": 1e-3, "coupling": "sample"},
    "evaluation": {"num_examples": 300, "batch_size": 100, "attacks": ATTACKS, "estimators": ESTIMATORS},
}  # as resolved by config.load: every key the report reads


def first(n: int, k: int) -> list[int]:
    """k correct examples, then n - k wrong ones."""
    return [1] * k + [0] * (n - k)


def window(n: int, start: int, k: int) -> list[int]:
    """k correct examples from index ``start`` on."""
    return [1 if start <= i < start + k else 0 for i in range(n)]


class Lab:
    """Writes cells, development records and analyses into a folder, then merges and judges them."""

    def __init__(self, folder: Path):
        self.folder, self.cells, self.exits, self.analyses = folder, [], [], []
        folder.mkdir(parents=True, exist_ok=True)

    def cell(
        self,
        model: str,
        estimator: str,
        attack: str,
        state,
        final: list[int],
        clean: list[int] | None = None,
        other: dict | None = None,
        training: str | None = None,
        seed: int = 0,
    ) -> None:
        """One cell: the attack leaves ``final`` correct under every defense and state unless ``other`` says."""
        spec = MODELS[model.split("@")[0]]
        n = len(final)
        keys = KEYS if spec["arch"] == "mdeq" else ("final",)
        adversarial = {k: list(final) for k in keys} | {k: v for k, v in (other or {}).items() if k in keys}
        record = {
            "model": model,
            "base_model": model.split("@")[0],
            "arch": spec["arch"],
            "training": training or spec["training"],
            "grad": spec.get("grad"),
            "estimator": estimator,
            "estimator_spec": ESTIMATORS.get(estimator, {}),
            "attack": attack,
            "attack_spec": ATTACKS[attack],
            "attacked_state": state,
            "coupling": "sample",
            "batch_size": 100,
            "checkpoint_md5": "5eed",
            "seed": seed,
            "profile": "unit",
            "num_examples": n,
            "indices": list(range(n)),
            "labels": [0] * n,
            "clean": {k: list(clean or [1] * n) for k in keys},
            "adversarial": adversarial,
        }
        path = self.folder / f"cell-{len(self.cells):03d}.json"
        path.write_text(json.dumps(record))
        self.cells.append(path)

    def exit(self, model: str, **record) -> None:
        path = self.folder / f"exit-{model}.json"
        path.write_text(json.dumps({"model": model, **record}))
        self.exits.append(path)

    def outcomes(self):
        return tidy.merge_outcomes(self.cells, self.exits)

    def findings(self, cfg: dict = CFG) -> dict[int, report.Finding]:
        return {f.claim: f for f in report.findings(self.analyses, cfg, self.outcomes(), report.load_exits(self.exits))}


def paper_like(
    lab: Lab,
    n: int = 300,
    inter: int = 90,
    truth: int = 100,
    exact: int = 150,
    exit_acc: int = 200,
    model: str = "deq-adv",
    training: str | None = None,
) -> None:
    """An adversarially trained DEQ whose cells show the paper's effects at the chosen sizes: final-state
    attacks leave ``exact`` correct, the true gradient ``truth``, the intermediate attack at state 2
    ``inter``; early exit (state 1) and the ensemble keep ``exit_acc`` under every attack."""
    keep = {"state_1": first(n, exit_acc), "ensemble": first(n, exit_acc)}
    for attack in ATTACKS:
        for estimator, state, k in (
            ("exact", "final", exact),
            ("unroll", "final", exact),
            ("truth", "final", truth),
            ("inter", 2, inter),
            ("inter", 3, n),
        ):
            lab.cell(model, estimator, attack, state, first(n, k), other=keep, training=training)
    lab.exit(
        model,
        state=1,
        rule="clean_guard",
        strongest_attack_state=2,
        estimator="inter",
        attack="pgd10",
        num_examples=100,
        dev={},
        final_clean_acc=0.5,
    )


def baseline(lab: Lab, n: int, correct: int, training: str | None = None) -> None:
    for attack in ATTACKS:
        lab.cell("resnet-adv", BASELINE_ESTIMATOR, attack, "final", first(n, correct), training=training)


def aligned(name: str, training: str, median: float, seed: int = 0, deployed: list[float] | None = None) -> dict:
    """An analysis record with alignment entries of the final-state estimators only: cosines
    ``median`` to their own output's true gradient, ``deployed`` (default the same) to the
    deployed model's."""
    deployed = [median] * 5 if deployed is None else deployed
    return {
        "model": {"name": name, "arch": "mdeq", "size": "mini", "training": training, "grad": "exact", "seed": seed},
        "alignment": [
            {
                "inputs": kind,
                "estimator": e,
                "estimator_type": ESTIMATORS[e]["name"],
                "state": "final",
                "cosine": [median] * 5,
                "median": median,
                "deployed": {"cosine": deployed, "median": float(np.median(deployed))},
            }
            for e in ("exact", "unroll")
            for kind in ("clean", "adversarial")
        ],
    }


def residual_record(name: str, training: str, clean: np.ndarray, seed: int = 0) -> dict:
    """An analysis record as ``deqrobust analyze`` writes it, from per-sample residual traces [n, steps]."""
    correct = np.ones(clean.shape, dtype=bool)
    inputs = {
        kind: analysis.summarise(clean * scale, correct, correct[:, -1], 1e-3)
        for kind, scale in (("clean", 1.0), ("adversarial", 2.0))
    }
    return {
        "format": analysis.FORMAT,
        "model": {"name": name, "arch": "mdeq", "size": "mini", "training": training, "grad": "exact"},
        "seed": seed,
        "num_examples": len(clean),
        "solver": {"name": "broyden", "budget": clean.shape[1], "tol": 0.0},
        "tol": 1e-3,
        "deployed_budget": 4,
        "attack": "pgd10",
        "estimator": "exact",
        "inputs": inputs,
    }


def traces(level: float, n: int = 300, seed: int = 0) -> np.ndarray:
    """Residual traces that decay from ``level`` and stay above the tolerance, with per-sample spread."""
    spread = np.random.default_rng(seed).lognormal(0.0, 0.5, size=(n, 1))
    return level * spread * 0.8 ** np.arange(12)[None, :]


# ---------------------------------------------------------------- outcomes and worst case
def test_worst_case_counts_a_wrong_clean_example_as_wrong(tmp_path: Path):
    """Example 0 survives every attack but is misclassified clean: it is not robust."""
    lab = Lab(tmp_path)
    clean = [0, 1, 1, 1]
    lab.cell("deq-adv", "exact", "pgd10", "final", [1, 1, 0, 1], clean=clean)
    lab.cell("deq-adv", "inter", "apgd", 2, [1, 1, 1, 0], clean=clean)
    frame = lab.outcomes()
    worst = frame[(frame.attack == tidy.WORST_CASE) & (frame.defense == "final")].iloc[0]
    assert worst.outcomes == "0100"
    table = tidy.tabulate(frame)
    assert table.loc[(table.attack == tidy.WORST_CASE) & (table.defense == "final"), "correct"].item() == 1
    assert tidy.worst_case([json.loads(p.read_text()) for p in lab.cells])["final"] == [0, 1, 0, 0]


def test_outcomes_file_round_trip_and_table_agree(tmp_path: Path):
    lab = Lab(tmp_path / "cells")
    paper_like(lab, n=30, inter=9, truth=10, exact=15, exit_acc=20)
    frame = lab.outcomes()
    path = tmp_path / "outcomes.csv.gz"
    tidy.write_outcomes(frame, path)
    first_bytes = path.read_bytes()
    tidy.write_outcomes(frame, path)
    assert path.read_bytes() == first_bytes  # no time stamp: same outcomes, same bytes
    back = tidy.load_outcomes(path)
    assert list(back.columns) == list(tidy.OUTCOME_COLUMNS)
    assert back["outcomes"].tolist() == frame["outcomes"].tolist() and back["outcomes"].str.len().eq(30).all()
    assert (back["indices"] == "0-29").all() and back["seed"].tolist() == [0] * len(back)
    row = back[(back.estimator == "inter") & (back.attacked_state == "2") & (back.defense == "final")].iloc[0]
    assert tidy.outcome_array(row.outcomes).tolist() == first(30, 9)
    table = tidy.tabulate(back)
    assert table.correct.tolist() == [o.count("1") for o in back.outcomes]
    with pytest.raises(errors.ConfigError, match="do not exist.*merge --outcomes"):
        tidy.load_outcomes(tmp_path / "missing.csv.gz")


@pytest.mark.parametrize(
    "indices, text", [([0, 1, 2, 5], "0-2,5"), (list(range(300)), "0-299"), ([7], "7"), ([3, 5, 6, 7, 9], "3,5-7,9")]
)
def test_index_ranges_round_trip(indices, text):
    assert tidy.index_ranges(indices) == text and tidy.expand_ranges(text) == indices


# ---------------------------------------------------------------- claims 2-5 on outcomes
def test_clear_effects_hold(tmp_path: Path):
    lab = Lab(tmp_path)
    paper_like(lab)
    baseline(lab, 300, 90)  # the DEQ's worst case is 90 as well: non-inferior
    lab.analyses = [aligned("deq-adv", "pgd", 0.3)]
    got = lab.findings()
    assert {c: got[c].verdict for c in (2, 3, 4, 5)} == dict.fromkeys((2, 3, 4, 5), stats.HELD)
    # claim 2: exact and unroll under both attacks vs the true gradient, b = 50, c = 0, Holm over 4
    assert got[2].result.counts.startswith("b=50, c=0, n=300") and got[2].result.family == 4
    assert got[2].result.p == pytest.approx(min(1.0, 4 * 0.5**50))
    # claim 3: the intermediate attack at the development state n* = 2 leaves 90 against 150
    assert got[3].result.counts.startswith("b=0, c=60") and got[3].result.alternative == "less"
    # claim 4: worst case of early exit and ensemble 200 against final 90 (the intermediate attack)
    assert got[4].result.counts.startswith("b=110, c=0") and got[4].result.family == 2
    assert got[5].result.method.startswith("non-inferiority") and got[5].result.estimate == 0


def test_no_effect_does_not_hold(tmp_path: Path):
    """Equal accuracies with a few discordant pairs each way, at n = 1000 where 2 points are detectable."""
    n, lab = 1000, Lab(tmp_path)
    moved = {"state_1": window(n, 5, 290), "ensemble": window(n, 5, 290)}  # worst case 5..294 vs final's 10..299
    for attack in ATTACKS:
        for estimator, state, start in (
            ("exact", "final", 0),
            ("unroll", "final", 0),
            ("truth", "final", 10),
            ("inter", 2, 10),
        ):
            lab.cell("deq-adv", estimator, attack, state, window(n, start, 300), other=moved)
    lab.exit("deq-adv", state=1, strongest_attack_state=2, estimator="inter")
    baseline(lab, n, 400)  # 10 points above the DEQ's worst case: inferior
    got = lab.findings()
    assert {c: got[c].verdict for c in (2, 3, 4, 5)} == dict.fromkeys((2, 3, 4, 5), stats.DID_NOT_HOLD)
    assert got[2].result.mde < stats.SMALLEST_EFFECT[2] and got[4].result.mde < stats.SMALLEST_EFFECT[4]


def test_too_few_examples_are_underpowered(tmp_path: Path):
    """n = 20: a 3-example gap is not significant, and nothing below 2 points could be."""
    lab = Lab(tmp_path)
    paper_like(lab, n=20, inter=5, truth=7, exact=10, exit_acc=8)
    baseline(lab, 20, 5)
    got = lab.findings()
    assert {c: got[c].verdict for c in (2, 3, 4, 5)} == dict.fromkeys((2, 3, 4, 5), stats.UNDERPOWERED)
    assert got[2].result.p > stats.ALPHA and got[2].result.mde > stats.SMALLEST_EFFECT[2]
    assert got[2].reason.endswith(f"smallest detectable effect at this n: {100 * got[2].result.mde:.1f} points")
    assert got[2].result.mde > 0.3  # at alpha 0.05 / 4 (Holm over 2 estimators x 2 attacks)


def test_aligned_gradients_explain_a_null_result_and_never_hide_an_effect(tmp_path: Path):
    """Claim 2's precondition: the 10th percentile of the cosines to the deployed model's true
    gradient. Aligned and no over-estimate: precondition absent. Aligned and a significant
    over-estimate: held, the precondition stated beside it. A misaligned tail (2 of 10 images)
    makes it present whatever the median."""
    lab = Lab(tmp_path)
    paper_like(lab, exact=100)  # exact and unroll leave as many correct as the truth
    lab.analyses = [aligned("deq-adv", "pgd", 0.97)]
    got = lab.findings()[2]
    assert got.verdict == stats.PRECONDITION_ABSENT
    assert "10th percentile of the cosines of exact@final to it (clean inputs) 0.97 (needs < 0.9)" in got.reason
    evidence = "\n".join(got.evidence)
    assert "precondition for unroll@final absent" in evidence
    assert "exact@final against the deployed model's true gradient, clean inputs, n=5: median cosine 0.97" in evidence

    lab = Lab(tmp_path / "effect")
    paper_like(lab)  # exact over-estimates by 50 of 300
    lab.analyses = [aligned("deq-adv", "pgd", 0.97)]
    got = lab.findings()[2]
    assert got.verdict == stats.HELD and "precondition for exact@final absent" in "\n".join(got.evidence)

    tail = [0.99] * 8 + [0.2, 0.3]
    lab.analyses = [aligned("deq-adv", "pgd", 0.99, deployed=tail)]
    pre = report.alignment_precondition(lab.analyses[0], "exact", "exact")
    assert pre.present and pre.value == pytest.approx(np.quantile(tail, 0.1))
    lab.analyses = []  # without an alignment measurement the comparison alone decides
    assert lab.findings()[2].verdict == stats.HELD


def test_claim2_not_tested_without_the_true_gradient(tmp_path: Path):
    lab = Lab(tmp_path)
    for attack in ATTACKS:
        lab.cell("deq-adv", "exact", attack, "final", first(50, 30))
        lab.cell("deq-adv", "inter", attack, 2, first(50, 10))
    got = lab.findings()[2]
    assert got.verdict == stats.NOT_TESTED and "solver_autograd" in got.reason


def test_fgsm_models_leave_claim5_not_tested(tmp_path: Path):
    lab = Lab(tmp_path)
    paper_like(lab, training="fgsm")
    baseline(lab, 300, 90, training="fgsm")
    got = lab.findings()[5]
    assert got.verdict == stats.NOT_TESTED
    assert got.reason == "the adversarially trained DEQs were trained with FGSM-AT, the claim is about PGD-AT"
    assert lab.findings()[4].verdict == stats.HELD  # claims 2-4 speak of any adversarial training


def test_claim5_needs_a_baseline_of_similar_size(tmp_path: Path):
    lab = Lab(tmp_path)
    paper_like(lab)
    baseline(lab, 300, 90)
    cfg = {**CFG, "models": {**MODELS, "resnet-adv": {"arch": "preact_resnet18", "width": 64, "training": "pgd"}}}
    got = lab.findings(cfg)[5]
    assert got.verdict == stats.NOT_TESTED and "sizes differ by more than a factor 2" in "\n".join(got.evidence)


def test_claim3_uses_the_development_state_not_the_strongest_test_cell(tmp_path: Path):
    """State 3 is by far the strongest on the test images, but the development split chose state 2, where
    the intermediate attack is no stronger than the final-state ones: no winner's curse."""
    n, lab = 1000, Lab(tmp_path)
    for attack in ATTACKS:
        for estimator, state, start in (("exact", "final", 0), ("unroll", "final", 0), ("inter", 2, 10)):
            lab.cell("deq-adv", estimator, attack, state, window(n, start, 300))
        lab.cell("deq-adv", "inter", attack, 3, first(n, 100))
    lab.exit("deq-adv", state=1, strongest_attack_state=2, estimator="inter")
    got = lab.findings()[3]
    assert got.verdict == stats.DID_NOT_HOLD and "inter@2" in "\n".join(got.evidence)
    assert "inter@3" not in "\n".join(got.evidence)


def test_claim3_compares_like_with_like_and_needs_every_final_estimator_beaten(tmp_path: Path):
    """PGD-10 against PGD-10 only; beating exact but not unroll is not enough (intersection-union)."""
    n, lab = 1000, Lab(tmp_path)
    lab.cell("deq-adv", "exact", "pgd10", "final", first(n, 150))
    lab.cell("deq-adv", "unroll", "pgd10", "final", first(n, 90))
    lab.cell("deq-adv", "inter", "pgd10", 2, first(n, 90))
    lab.cell("deq-adv", "exact", "apgd", "final", first(n, 10))  # a strong APGD-CE: not compared with PGD-10
    lab.exit("deq-adv", state=1, strongest_attack_state=2, estimator="inter")
    got = lab.findings()[3]
    assert got.verdict == stats.DID_NOT_HOLD and got.result.counts.startswith("b=0, c=0")
    assert "apgd" not in "\n".join(got.evidence)


def test_claim3_not_tested_with_an_old_development_record(tmp_path: Path):
    lab = Lab(tmp_path)
    paper_like(lab)
    lab.exits = []
    lab.exit("deq-adv", state=1, dev_robust_accuracy={"1": 0.3, "2": 0.2, "3": 0.25})
    got = lab.findings()[3]
    assert got.verdict == stats.NOT_TESTED and "strongest_attack_state" in got.reason
    assert "rerun `deqrobust select-exit`" in got.reason


def test_claim4_holm_over_the_two_defenses(tmp_path: Path):
    """b = 5, c = 0: p = 1/32 alone, but Holm over early exit and ensemble doubles it past 0.05."""
    n, lab = 2000, Lab(tmp_path)
    lab.cell(
        "deq-adv",
        "exact",
        "pgd10",
        "final",
        first(n, 1000),
        other={"state_1": first(n, 1005), "ensemble": first(n, 1005)},
    )
    lab.exit("deq-adv", state=1)
    got = lab.findings()[4]
    assert got.result.p_value == pytest.approx(1 / 32) and got.result.p == pytest.approx(1 / 16)
    assert got.verdict == stats.DID_NOT_HOLD
    assert "no attack aimed at state 1 was run" in "\n".join(got.evidence)


# ---------------------------------------------------------------- claim 1 on residuals
def test_deployed_residual_is_that_of_the_returned_iterate():
    """Lowest residual up to the first step meeting the tolerance or the deployed budget (4)."""
    record = {
        "deployed_budget": 4,
        "tol": 1e-3,
        "inputs": {
            "clean": {
                "per_sample": {
                    "rel_residual": [
                        [0.5, 0.2, 0.3, 0.1, 0.01],  # never meets tol in 4 steps: best of the 4
                        [0.5, 5e-4, 1e-4, 1e-5, 1e-6],  # stops at step 2
                        [0.5, 0.6, None, 0.7, 0.8],  # diverges at step 3
                        [0.9, 0.8, 0.85, 0.95, 0.01],
                    ]
                }
            }
        },
    }  # non-monotone: the lowest, not the last
    assert report.deployed_residuals(record).tolist() == [0.1, 5e-4, 0.5, 0.8]
    record["forward_residual"] = {"clean": [0.2, None]}
    assert report.deployed_residuals(record).tolist() == [0.2, report.DIVERGED]


def runs(levels: list[tuple[float, float]]) -> list[dict]:
    """Analyses of an adversarially trained and a standard DEQ per seed, at the given residual levels."""
    records = []
    for seed, (adv, std) in enumerate(levels):
        records += [
            residual_record(f"deq-adv@{seed}", "pgd", traces(adv, seed=seed), seed),
            residual_record(f"deq-std@{seed}", "standard", traces(std, seed=10 + seed), seed),
        ]
    return records


def test_claim1_is_decided_across_training_runs():
    """Three runs a side, every adversarially trained run above every standard one: the run-level
    exact test reaches its smallest p, 1 / C(6, 3) = 0.05, and holds. One run out of line: not held,
    although every per-image test of the other pairs holds."""
    slow, fast = 0.3, 0.05
    got = report.claim1(runs([(slow, fast)] * 3))
    assert got.verdict == stats.HELD and got.reason.startswith("across training runs")
    assert (got.result.method, got.result.n, got.result.estimate) == ("Mann-Whitney U", 6, 1.0)
    assert got.result.p_value == pytest.approx(1 / 20)
    text = "\n".join(got.evidence)
    assert "median deployed residual per training run, adversarial: deq-adv@0" in text and "spread" in text
    assert "per pair of runs, deq-adv@1 vs deq-std@1 (seed 1): **held**" in text
    got = report.claim1(
        runs([(slow, fast), (slow, fast), (fast / 10, fast)])
    )  # seed 2's adversarial run converges best
    assert got.verdict != stats.HELD and got.result.estimate < 1
    assert "deq-adv@2 vs deq-std@2 (seed 2): **did not hold**" in "\n".join(got.evidence)


def test_claim1_across_two_runs_a_side_cannot_hold_and_says_so():
    """Two runs a side: the smallest exact p is 1 / C(4, 2) = 1/6 > 0.05, so the run-level test
    can only be underpowered (or refute), even where every pair holds."""
    got = report.claim1(runs([(0.3, 0.05)] * 2))
    assert got.verdict == stats.UNDERPOWERED and got.result.p_value == pytest.approx(1 / 6)
    assert got.result.mde > stats.SMALLEST_EFFECT[1]


def test_claim1_with_one_run_a_side_is_decided_by_the_pair():
    got = report.claim1(runs([(0.3, 0.05)]))
    assert got.verdict == stats.HELD and got.reason.startswith("all of 1 units must hold: 1 held")


def test_claim1_pairs_by_seed_else_any_seed_and_says_what_is_missing():
    records = [
        residual_record("deq-adv@1", "pgd", traces(0.3), 1),
        residual_record("deq-std@0", "standard", traces(0.05), 0),
    ]
    got = report.claim1(records)  # a standard DEQ trained once serves every seed of the adversarial one
    assert got.verdict == stats.HELD and "deq-adv@1 vs deq-std@0 (seed 1)" in "\n".join(got.evidence)
    records.append(residual_record("deq-std@1", "standard", traces(0.3, seed=4), 1))
    assert "deq-adv@1 vs deq-std@1 (seed 1)" in "\n".join(report.claim1(records).evidence)  # same seed first
    got = report.claim1(records[:1])
    assert got.verdict == stats.NOT_TESTED and "no standard DEQ of size mini was analysed" in got.reason
    few = [
        residual_record("deq-adv", "pgd", traces(0.3, n=5)),
        residual_record("deq-std", "standard", traces(0.28, n=5, seed=3)),
    ]
    assert report.claim1(few).verdict == stats.UNDERPOWERED
    assert report.findings([], CFG)[0].reason == "no fixed-point analysis was given"


# ---------------------------------------------------------------- inputs of one run
def stamp(paths: list[Path], md5: str) -> None:
    """Stamp cells or records with the checkpoint MD5 they were made from."""
    for path in paths:
        path.write_text(json.dumps({**json.loads(path.read_text()), "checkpoint_md5": md5}))


def test_the_report_refuses_inputs_of_different_runs(tmp_path: Path):
    """A table from another run (a committed one restored by git), or an analysis or development
    record made from another checkpoint than the cells, is refused, naming the odd one out."""
    lab = Lab(tmp_path / "run")
    paper_like(lab)
    stamp(lab.cells, "aaaa")
    stamp(lab.exits, "aaaa")
    outcomes = lab.outcomes()
    table = tidy.tabulate(outcomes)
    record = tmp_path / "analysis.json"
    analysis_record = {"model": {"name": "deq-adv"}, "checkpoint_md5": "aaaa"}
    report.check_runs(
        table, outcomes, {str(record): analysis_record, str(lab.exits[0]): json.loads(lab.exits[0].read_text())}
    )  # one run: accepted
    other = Lab(tmp_path / "other")
    paper_like(other, exact=160)  # another run's table
    with pytest.raises(ConfigError, match="the table and the per-example outcomes come from different runs"):
        report.check_runs(tidy.tabulate(other.outcomes()), outcomes, {})
    with pytest.raises(
        ConfigError,
        match=f"{record} was made from another checkpoint of 'deq-adv' "
        r"\(MD5 bbbb\) than its evaluation cells \(aaaa\)",
    ):
        report.check_runs(table, outcomes, {str(record): {**analysis_record, "checkpoint_md5": "bbbb"}})
    stamp(lab.cells[:1], "cccc")  # one stale cell
    with pytest.raises(ConfigError, match="cells of model 'deq-adv' were made from different checkpoints"):
        lab.outcomes()


# ---------------------------------------------------------------- the commands, end to end
def test_merge_and_report_commands_write_verdicts(tmp_path: Path):
    lab = Lab(tmp_path / "cells")
    paper_like(lab)
    baseline(lab, 300, 90)
    analyses = []
    for record in (
        residual_record("deq-adv", "pgd", traces(0.3)),
        residual_record("deq-std", "standard", traces(0.05, seed=1)),
    ):
        record["alignment"] = aligned(
            record["model"]["name"], record["model"]["training"], 0.3 if record["model"]["training"] == "pgd" else 0.95
        )["alignment"]
        path = tmp_path / f"{record['model']['name']}.json"
        path.write_text(json.dumps(record))
        analyses.append(str(path))
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    config.load([cfg])
    table, outcomes = tmp_path / "table.csv", tmp_path / "outcomes.csv.gz"
    exits = [str(p) for p in lab.exits]
    assert (
        run_command(
            "merge",
            [
                "-c",
                str(cfg),
                "--cells",
                *map(str, lab.cells),
                "--early-exit",
                *exits,
                "--out",
                str(table),
                "--outcomes",
                str(outcomes),
            ],
        )
        == 0
    )
    md, metrics = tmp_path / "report.md", tmp_path / "metrics.json"
    assert (
        run_command(
            "report",
            [
                "-c",
                str(cfg),
                "--table",
                str(table),
                "--outcomes",
                str(outcomes),
                "--early-exit",
                *exits,
                "--analysis",
                *analyses,
                "--out",
                str(md),
                "--metrics",
                str(metrics),
            ],
        )
        == 0
    )
    text = md.read_text()
    assert "| claim | verdict | statistic | p | effect [95 % CI] | n | MDE |" in text
    assert text.count("Rule:") == 5
    for claim in range(1, 6):
        assert f"| {claim} | **held** | " in text
    assert (
        "## Gradient alignment" in text
        and "deq-std (standard), clean" in text
        and "| exact | final | 0.3 / 0.3 (0.3) |" in text
    )
    record = json.loads(metrics.read_text())
    assert record["verdicts"] == dict.fromkeys("12345", stats.HELD)
    assert all(0 <= p <= stats.ALPHA for p in record["p_values"].values())
    assert record["claims"]["4"]["test"]["n"] == 300 and record["accuracy"]["deq-adv"]["final"]["worst_case"] == 0.3
    # without the outcomes, claims 2-5 say why they were not tested
    assert (
        run_command("report", ["-c", str(cfg), "--table", str(table), "--analysis", *analyses, "--out", str(md)]) == 0
    )
    assert md.read_text().count("no per-example outcomes were given") >= 4
