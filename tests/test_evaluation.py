"""Matrix cells (resumable, every defense and state scored), early exit, merge, bad input."""

import json

import pandas as pd
import pytest
import torch

from deqrobust import config, data, instances, tidy
from deqrobust.checkpoint import save_checkpoint
from deqrobust.errors import ConfigError
from deqrobust.evaluation import run_cell, select_exit
from deqrobust.models import build_model
from deqrobust.stats import wilson
from deqrobust.tidy import merge

EVALUATION = {
    "num_examples": 6,
    "batch_size": 3,
    "estimators": {
        "exact": {"name": "exact"},
        "inter": {"name": "intermediate", "lam": 1.0, "k": 1},
        "adjoint": {"name": "adjoint"},
    },
    "attacks": {"pgd2": {"name": "pgd", "steps": 2}, "pgd1": {"name": "pgd", "steps": 1}},
    "early_exit": {"estimator": "inter", "attack": "pgd1", "num_examples": 4},
}


@pytest.fixture
def setup(tmp_path, cifar_archive, make_config):
    archive, _ = cifar_archive(n_test=8)
    cfg_path = make_config(
        archive,
        evaluation=EVALUATION,
        solver={"name": "broyden", "budget": 3, "tol": 1e-3},
        models={"deq": {"arch": "mdeq", "size": "mini", "training": "standard", "grad": "exact"}},
    )
    cfg = config.load(cfg_path)
    data.prepare(cfg)
    torch.manual_seed(0)
    spec = {**cfg["models"]["deq"], "name": "deq"}
    save_checkpoint(tmp_path / "deq.pt", build_model(spec), spec, epoch=1.0, metrics={}, profile="test")
    return cfg, tmp_path


def test_cell_scores_every_defense_and_state_and_resumes(setup, monkeypatch):
    cfg, tmp = setup
    out = tmp / "cells" / "a.json"
    cell = run_cell(cfg, str(tmp / "deq.pt"), "inter", "pgd2", 2, out)
    keys = {"final", "ensemble", "state_1", "state_2", "state_3"}
    assert set(cell["clean"]) == keys == set(cell["adversarial"])
    assert all(len(v) == 6 for v in cell["adversarial"].values())
    assert cell["attacked_state"] == "2" and cell["num_examples"] == 6
    assert not (tmp / "cells" / "a.json.partial").exists()
    # Interrupted after the first batch: the rerun scores only the second one, same result.
    import deqrobust.evaluation as ev

    original, calls = ev.score, []

    def score_then_stop(*args):
        calls.append(1)
        if len(calls) == 3:  # clean scoring of the second batch
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(ev, "score", score_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cfg, str(tmp / "deq.pt"), "inter", "pgd2", 2, tmp / "cells" / "b.json")
    assert not (tmp / "cells" / "b.json").exists()
    monkeypatch.setattr(ev, "score", lambda *a: calls.append(1) or original(*a))
    calls.clear()
    resumed = run_cell(cfg, str(tmp / "deq.pt"), "inter", "pgd2", 2, tmp / "cells" / "b.json")
    assert len(calls) == 2  # clean + adversarial scoring of the second batch only
    assert resumed["adversarial"] == cell["adversarial"] and resumed["clean"] == cell["clean"]


def test_batches_of_other_settings_are_discarded(setup):
    cfg, tmp = setup
    out = tmp / "cells" / "c.json"
    import deqrobust.evaluation as ev

    partial = ev._partial_dir(out, {"attack": "something else"})
    (partial / "batch-00000.pt").write_text("stale")  # would fail to load if reused
    cell = run_cell(cfg, str(tmp / "deq.pt"), "inter", "pgd2", 2, out)
    assert cell["num_examples"] == 6 and not partial.exists()


def test_merge_builds_tidy_rows_and_worst_case(setup):
    cfg, tmp = setup
    paths = []
    for est, attack, state in [("exact", "pgd2", "final"), ("inter", "pgd2", 1), ("adjoint", "pgd1", 3)]:
        path = tmp / f"{est}-{attack}-{state}.json"
        run_cell(cfg, str(tmp / "deq.pt"), est, attack, state, path)
        paths.append(str(path))
    exit_file = tmp / "exit.json"
    exit_file.write_text(json.dumps({"model": "deq", "state": 2}))
    table = merge(paths, [str(exit_file)])
    cells = [json.loads(open(p).read()) for p in paths]
    adv = table[table.attack.isin(["pgd1", "pgd2"])]
    assert set(adv.defense) == {"final", "ensemble", "early_exit", "state"}
    assert (adv[adv.defense == "early_exit"].scored_state == "state_2").all()
    assert set(zip(adv.attack, adv.attack_type, adv.attack_steps)) == {("pgd2", "pgd", 2), ("pgd1", "pgd", 1)}
    assert set(zip(adv.estimator, adv.estimator_type)) == {
        ("exact", "exact"),
        ("inter", "intermediate"),
        ("adjoint", "adjoint"),
    }
    worst = table[table.attack == "worst-case"].set_index("scored_state")
    for key in cells[0]["adversarial"]:
        expected = sum(min(cells[0]["clean"][key][i], *(c["adversarial"][key][i] for c in cells)) for i in range(6))
        assert worst.loc[key if key != "state_2" else "state_2"].correct.max() == expected
    clean = table[table.attack == "clean"]
    assert len(clean[clean.defense == "final"]) == 1
    assert ((table.ci_low <= table.accuracy) & (table.accuracy <= table.ci_high)).all()


def test_wilson_interval_matches_known_values():
    low, high = wilson(50, 100)
    assert abs(low - 0.4038) < 1e-3 and abs(high - 0.5962) < 1e-3
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


PGD = {"name": "pgd", "eps_255": 8, "step_255": 4, "steps": 2, "restarts": 1}
APGD = {"name": "apgd-ce", "eps_255": 8, "n_iter": 20}


def hand_cell(path, estimator, spec, attack, attack_spec, state, adversarial, model="deq"):
    """A cell file as run_cell writes it, with given per-example scores (4 examples)."""
    clean = {"final": [1, 1, 1, 0], "ensemble": [1, 1, 0, 0], "state_1": [1, 0, 0, 0], "state_2": [1, 1, 1, 1]}
    cell = {
        "model": model,
        "arch": "mdeq",
        "training": "pgd",
        "grad": "exact",
        "estimator": estimator,
        "estimator_spec": spec,
        "attack": attack,
        "attack_spec": attack_spec,
        "attacked_state": state,
        "coupling": "sample",
        "batch_size": 4,
        "checkpoint_md5": "5eed",
        "seed": 0,
        "profile": "unit",
        "num_examples": 4,
        "indices": [0, 1, 2, 3],
        "labels": [3, 1, 4, 1],
        "clean": clean,
        "adversarial": adversarial,
    }
    path.write_text(json.dumps(cell))
    return str(path)


def test_merge_of_hand_made_cells_gives_known_counts_intervals_and_specs(tmp_path):
    a = hand_cell(
        tmp_path / "a.json",
        "exact",
        {"name": "exact"},
        "pgd2",
        PGD,
        "final",
        {"final": [1, 1, 0, 0], "ensemble": [1, 0, 0, 0], "state_1": [0, 0, 0, 0], "state_2": [1, 1, 1, 0]},
    )
    b = hand_cell(
        tmp_path / "b.json",
        "inter",
        {"name": "intermediate", "lam": 1.0, "k": 1},
        "apgd",
        APGD,
        1,
        {"final": [0, 1, 1, 0], "ensemble": [1, 1, 0, 0], "state_1": [0, 0, 0, 0], "state_2": [1, 0, 1, 1]},
    )
    exit_file = tmp_path / "exit.json"
    exit_file.write_text(json.dumps({"model": "deq", "state": 2}))
    table = merge([a, b], [exit_file])
    assert list(table.columns) == list(tidy.COLUMNS)
    # 2 cells x (final, ensemble, early exit, 2 states) + clean and worst case rows of the same 5
    assert len(table) == 4 * 5
    got = {(r.attack, r.defense, r.scored_state): r.correct for r in table.itertuples()}
    assert got[("pgd2", "final", "final")] == 2 and got[("apgd", "final", "final")] == 2
    assert got[("worst-case", "final", "final")] == 1  # only example 1 survives both
    assert got[("worst-case", "early_exit", "state_2")] == got[("worst-case", "state", "state_2")] == 2
    assert got[("clean", "ensemble", "ensemble")] == 2 and got[("clean", "early_exit", "state_2")] == 4
    row = table[(table.attack == "pgd2") & (table.defense == "final")].iloc[0]
    assert (row.n, row.accuracy) == (4, 0.5) and (row.ci_low, row.ci_high) == wilson(2, 4)
    assert wilson(2, 4) == pytest.approx((0.15, 0.85), abs=0.01)
    # The recorded specs, as columns; clean and worst-case rows have none.
    pgd = table[table.attack == "pgd2"].iloc[0]
    assert (pgd.attack_type, pgd.eps_255, pgd.attack_steps, pgd.restarts) == ("pgd", 8, 2, 1)
    assert json.loads(pgd.attack_params) == {
        "eps_255": 8,
        "step_255": 4,
        "steps": 2,
        "restarts": 1,
        "random_start": True,
        "loss": "ce",
    }
    assert (pgd.estimator_type, json.loads(pgd.estimator_params)) == ("exact", {})
    apgd = table[table.attack == "apgd"].iloc[0]
    assert (apgd.attack_type, apgd.attack_steps, apgd.attack_version) == ("apgd-ce", 20, None)
    assert pd.isna(apgd.restarts) and json.loads(apgd.attack_params) == {"eps_255": 8, "n_iter": 20}
    assert (apgd.estimator_type, json.loads(apgd.estimator_params)) == ("intermediate", {"lam": 1.0, "k": 1})
    assert table[table.attack.isin(tidy.PSEUDO_ATTACKS)][list(tidy.SPEC_COLUMNS)].isna().all().all()
    # Written and read back: integer settings stay integers, the specs stay text.
    tidy.write_table(table, tmp_path / "table.csv")
    text = (tmp_path / "table.csv").read_text()
    assert ",pgd,,8,2,1," in text and '"{""eps_255"":8,""n_iter"":20}"' in text
    back = tidy.load_table(tmp_path / "table.csv")
    assert back[list(tidy.COLUMNS[:14])].astype(str).equals(table[list(tidy.COLUMNS[:14])].astype(str))


def test_merge_refuses_cells_that_disagree_or_name_no_type(tmp_path):
    scores = {"final": [1, 0, 0, 0], "ensemble": [1, 0, 0, 0], "state_1": [0, 0, 0, 0], "state_2": [1, 0, 0, 0]}
    a = hand_cell(tmp_path / "a.json", "exact", {"name": "exact"}, "pgd2", PGD, "final", scores)
    b = hand_cell(tmp_path / "b.json", "exact", {"name": "exact"}, "apgd", APGD, "final", scores)
    cell = json.loads(open(b).read())
    cell["clean"]["final"] = [0, 0, 0, 0]
    open(b, "w").write(json.dumps(cell))
    with pytest.raises(ConfigError, match="disagree on the clean examples"):
        merge([a, b], [])
    c = hand_cell(tmp_path / "c.json", "exact", {"name": "exact"}, "cw", {"name": "cw"}, "final", scores)
    with pytest.raises(ConfigError, match="unknown attack type 'cw'"):
        merge([c], [])
    with pytest.raises(ConfigError, match="at least one evaluation cell"):
        merge([], [])


def test_merge_names_a_missing_or_foreign_file_and_a_cell_of_other_settings(tmp_path):
    scores = {"final": [1, 0, 0, 0], "ensemble": [1, 0, 0, 0], "state_1": [0, 0, 0, 0], "state_2": [1, 0, 0, 0]}
    a = hand_cell(tmp_path / "a.json", "exact", {"name": "exact"}, "pgd2", PGD, "final", scores)
    with pytest.raises(ConfigError, match=f"cell {tmp_path / 'missing.json'} does not exist; run it first"):
        merge([a, tmp_path / "missing.json"], [])
    (tmp_path / "table.csv").write_text("model,n\n")
    with pytest.raises(ConfigError, match="is not an evaluation cell \\(not JSON\\)"):
        merge([tmp_path / "table.csv"], [])
    (tmp_path / "other.json").write_text('{"model": "deq"}')
    with pytest.raises(ConfigError, match="other.json is not an evaluation cell: it has no estimator, "):
        merge([tmp_path / "other.json"], [])
    # a cell run by hand with 5 PGD steps is not the profile's pgd2 (2 steps): refused, not merged under its name
    cfg = {"evaluation": {"attacks": {"pgd2": PGD}, "estimators": {"exact": {"name": "exact"}}}}
    tidy.read_cell(a, cfg)
    b = hand_cell(tmp_path / "b.json", "exact", {"name": "exact"}, "pgd2", {**PGD, "steps": 5}, "final", scores)
    with pytest.raises(
        ConfigError,
        match="b.json ran attack 'pgd2' as .*'steps': 5.*but this profile defines 'pgd2' "
        "as .*'steps': 2.*rerun the cell with this profile",
    ):
        tidy.read_cell(b, cfg)


def test_select_exit_records_the_dev_choice(setup):
    """One attack per state gives every number of the record; the choices follow from them."""
    cfg, tmp = setup
    record = select_exit(cfg, str(tmp / "deq.pt"), tmp / "exit.json")
    assert json.loads((tmp / "exit.json").read_text()) == record  # as read back
    dev = record["dev"]
    assert set(dev) == {"1", "2", "3"} and record["num_examples"] == 4
    assert (record["model"], record["base_model"], record["seed"]) == ("deq", "deq", 0)
    assert (record["rule"], record["estimator"], record["attack"]) == ("clean_guard", "inter", "pgd1")
    for n, d in dev.items():
        assert {*d} == {"clean_acc", "robust_acc", "final_robust_acc"}
        assert all(v * 4 == round(v * 4) for v in d.values())  # counts of 4 dev images
        assert record["dev_robust_accuracy"][n] == d["robust_acc"]
    guard = record["final_clean_acc"] - record["clean_margin"] - 1e-12
    assert record["eligible"] == [int(n) for n in dev if dev[n]["clean_acc"] >= guard] or not any(
        dev[n]["clean_acc"] >= guard for n in dev
    )
    assert dev[str(record["state"])]["robust_acc"] == max(dev[str(n)]["robust_acc"] for n in record["eligible"])
    low = min(d["final_robust_acc"] for d in dev.values())
    assert record["strongest_attack_state"] == min(int(n) for n in dev if dev[n]["final_robust_acc"] == low)


def _dev(*states):
    return {str(n): {"clean_acc": c, "robust_acc": r, "final_robust_acc": f} for n, (c, r, f) in enumerate(states, 1)}


def test_clean_guard_never_exits_at_a_chance_level_state():
    """State 1 is at chance (clean 10 %) and for that reason "robust" (nothing left to flip): the
    authors' rule picks it, the clean guard does not."""
    from deqrobust.evaluation import choose_exit

    dev = _dev((0.10, 0.10, 0.30), (0.40, 0.08, 0.25), (0.44, 0.07, 0.28), (0.46, 0.06, 0.29))
    assert choose_exit(dev, 0.46, "authors", 0.05) == (1, [1, 2, 3, 4])
    assert choose_exit(dev, 0.46, "clean_guard", 0.05) == (3, [3, 4])  # 0.40 is 6 points below 0.46
    assert choose_exit(dev, 0.46, "clean_guard", 0.06) == (2, [2, 3, 4])  # the margin is inclusive
    assert choose_exit(dev, 0.46, "clean_guard", 0.0) == (4, [4])
    tied = _dev((0.46, 0.2, 0.3), (0.46, 0.2, 0.3))
    assert choose_exit(tied, 0.46, "clean_guard", 0.05)[0] == 1  # ties: the smaller n
    far = _dev((0.2, 0.1, 0.3), (0.3, 0.05, 0.3))  # no state within the margin:
    assert choose_exit(far, 0.9, "clean_guard", 0.05) == (2, [2])  # the best clean accuracy
    with pytest.raises(ConfigError, match="'best' is not valid; choose one of clean_guard, authors"):
        choose_exit(dev, 0.46, "best", 0.05)


def test_strongest_attack_state_is_the_lowest_final_defense_accuracy():
    from deqrobust.evaluation import strongest_attack_state

    assert strongest_attack_state(_dev((0.1, 0.1, 0.30), (0.4, 0.08, 0.25), (0.44, 0.07, 0.28))) == 2
    assert strongest_attack_state(_dev((0.1, 0.1, 0.25), (0.4, 0.08, 0.25))) == 1  # ties: the smaller n


def test_select_exit_follows_the_rule_key(setup):
    cfg, tmp = setup
    cfg = {
        **cfg,
        "evaluation": {**cfg["evaluation"], "early_exit": {**cfg["evaluation"]["early_exit"], "rule": "authors"}},
    }
    record = select_exit(cfg, str(tmp / "deq.pt"), tmp / "exit.json")
    assert record["rule"] == "authors" and record["eligible"] == [1, 2, 3]
    assert record["dev"][str(record["state"])]["robust_acc"] == max(d["robust_acc"] for d in record["dev"].values())


def test_records_of_a_seed_instance_carry_its_base_model_and_seed(tmp_path, cifar_archive, make_config):
    """A model with seeds is one instance per seed (<model>.s<seed>); its jobs run with its seed."""
    archive, _ = cifar_archive(n_test=8)
    model = {"arch": "mdeq", "size": "mini", "training": "standard", "grad": "exact", "seeds": [0, 2]}
    cfg = config.load(
        make_config(
            archive, evaluation=EVALUATION, models={"deq": model}, solver={"name": "broyden", "budget": 2, "tol": 1e-3}
        )
    )
    data.prepare(cfg)
    spec = instances.model_spec(cfg, "deq.s2")
    assert spec["name"] == "deq.s2" and "seeds" not in spec
    save_checkpoint(tmp_path / "deq.pt", build_model(spec), spec, epoch=1.0, metrics={}, profile="test")
    cell = run_cell(cfg, str(tmp_path / "deq.pt"), "inter", "pgd1", 1, tmp_path / "cell.json")
    exit_record = select_exit(cfg, str(tmp_path / "deq.pt"), tmp_path / "exit.json")
    for record in (cell, exit_record):
        assert (record["model"], record["base_model"], record["seed"]) == ("deq.s2", "deq", 2)
    table = tidy.merge_outcomes([str(tmp_path / "cell.json")], [str(tmp_path / "exit.json")])
    assert set(zip(table.model, table.base_model, table.seed)) == {("deq.s2", "deq", 2)}


def test_ensemble_neumann_and_true_gradient_cells_run(setup):
    """The coverage cells of the profiles: the ensemble attacked adaptively, neumann and the true
    gradient at the final state, each scored like any cell."""
    cfg, tmp = setup
    extra = {"neumann": {"name": "neumann", "lam": 0.5, "k": 3}, "true": {"name": "solver_autograd"}}
    cfg = {**cfg, "evaluation": {**cfg["evaluation"], "estimators": {**cfg["evaluation"]["estimators"], **extra}}}
    for estimator, state in [
        ("inter", "ensemble"),
        ("adjoint", "ensemble"),
        ("true", "ensemble"),
        ("neumann", "final"),
        ("true", "final"),
    ]:
        cell = run_cell(cfg, str(tmp / "deq.pt"), estimator, "pgd1", state, tmp / f"{estimator}-{state}.json")
        assert cell["attacked_state"] == state and cell["estimator_spec"] == cfg["evaluation"]["estimators"][estimator]
        assert set(cell["adversarial"]) == set(cell["clean"]) and all(len(v) == 6 for v in cell["adversarial"].values())


def test_bad_cell_inputs_name_the_value_and_the_choices(setup):
    cfg, tmp = setup
    ckpt = str(tmp / "deq.pt")
    with pytest.raises(ConfigError, match="unknown estimator 'implicit'.*adjoint, exact, inter"):
        run_cell(cfg, ckpt, "implicit", "pgd2", "final", tmp / "x.json")
    with pytest.raises(ConfigError, match="unknown attack 'cw'.*pgd1, pgd2"):
        run_cell(cfg, ckpt, "exact", "cw", "final", tmp / "x.json")
    with pytest.raises(ConfigError, match="state 9 is not valid for a solver budget of 3"):
        run_cell(cfg, ckpt, "inter", "pgd2", 9, tmp / "x.json")
    other = {"arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact", "name": "deq"}
    save_checkpoint(tmp / "other.pt", build_model(other), other, epoch=1.0, metrics={}, profile="test")
    with pytest.raises(ConfigError, match="holds a mdeq-tiny model.*'deq' is a mdeq-mini"):
        run_cell(cfg, str(tmp / "other.pt"), "exact", "pgd2", "final", tmp / "x.json")


def smoke_like_cells(folder) -> tuple[list[str], list[str]]:
    """Cells of two DEQs (4 estimators x 2 attacks) and a baseline with seeded random scores,
    in the smoke profile's attacks and estimators, and their early-exit choices."""
    import random

    rng = random.Random(0)
    attacks = {
        "pgd2": {"name": "pgd", "eps_255": 8, "step_255": 4, "steps": 2, "restarts": 1},
        "apgd-ce": {"name": "apgd-ce", "eps_255": 8, "n_iter": 2, "restarts": 1},
    }
    estimators = {
        "exact": {"name": "exact"},
        "unroll": {"name": "unroll", "lam": 0.5, "k": 2},
        "intermediate": {"name": "intermediate", "lam": 0.5, "k": 2},
        "adjoint": {"name": "adjoint", "variant": "lockstep"},
    }
    n, labels = 12, [rng.randrange(10) for _ in range(12)]
    cells = []
    for model, training, keys, runs in [
        (
            "deq-std",
            "standard",
            ["final", "ensemble", "state_1", "state_2", "state_3"],
            [("exact", "final"), ("unroll", "final"), ("intermediate", 2), ("adjoint", 1)],
        ),
        (
            "deq-adv",
            "pgd",
            ["final", "ensemble", "state_1", "state_2", "state_3"],
            [("exact", "final"), ("unroll", "final"), ("intermediate", 2), ("adjoint", 1)],
        ),
        ("resnet", "pgd", ["final"], [("autograd", "final")]),
    ]:
        clean = {k: [rng.randrange(2) for _ in range(n)] for k in keys}
        for estimator, state in runs:
            for attack, spec in attacks.items():
                cells.append(
                    {
                        "model": model,
                        "arch": "mdeq" if len(keys) > 1 else "preact_resnet18",
                        "training": training,
                        "grad": "exact" if len(keys) > 1 else None,
                        "estimator": estimator,
                        "estimator_spec": estimators.get(estimator, {}),
                        "attack": attack,
                        "attack_spec": spec,
                        "attacked_state": state,
                        "coupling": "sample",
                        "batch_size": n,
                        "checkpoint_md5": f"md5-of-{model}",
                        "seed": 0,
                        "profile": "smoke",
                        "num_examples": n,
                        "indices": list(range(n)),
                        "labels": labels,
                        "clean": clean,
                        "adversarial": {k: [c & rng.randrange(2) for c in clean[k]] for k in keys},
                    }
                )
    paths = []
    for i, cell in enumerate(cells):
        paths.append(str(folder / f"cell-{i:02d}.json"))
        open(paths[-1], "w").write(json.dumps(cell))
    exits = []
    for model, state in [("deq-std", 2), ("deq-adv", 1)]:
        exits.append(str(folder / f"exit-{model}.json"))
        open(exits[-1], "w").write(json.dumps({"model": model, "state": state}))
    return paths, exits


def test_merge_rows_are_those_of_the_merge_before_the_spec_columns(tmp_path):
    """The spec columns are new columns only: the other columns' CSV text is byte-identical to the
    table the merge of commit cb976f8 (before the results module) wrote from these cells."""
    import hashlib

    tidy.write_table(merge(*smoke_like_cells(tmp_path)), tmp_path / "table.csv")
    old = pd.read_csv(tmp_path / "table.csv", dtype=str, keep_default_na=False)[list(tidy.COLUMNS[:14])]
    text = old.to_csv(index=False)
    assert len(old) == 124
    assert hashlib.md5(text.encode()).hexdigest() == "0dc4448d1538fa9503709147f801f2ec"
