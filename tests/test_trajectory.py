"""Training dynamics: the snapshots a training keeps, each analysed on the same test images, and the
paired change between snapshots (deqrobust.trajectory, stats.median_change)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_command, synthetic_batches, write_archive, write_config

from deqrobust import config, data, stats, trajectory
from deqrobust.analysis import deployed_residual
from deqrobust.checkpoint import load_checkpoint
from deqrobust.errors import ConfigError
from deqrobust.evaluation import own_estimator, score
from deqrobust.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PGD-AT DEQ trained for one epoch with a snapshot every half epoch (the first during pretraining)."""
    tmp = tmp_path_factory.mktemp("trajectory")
    archive = write_archive(tmp / "cifar.tar.gz", synthetic_batches(14, 16, 0))
    path = write_config(
        tmp / "unit.yaml",
        tmp / "data",
        archive,
        models={"deq": {"arch": "mdeq", "size": "tiny", "training": "pgd", "grad": "unroll"}},
        training={
            "epochs": 1,
            "batch_size": 10,
            "pretrain_iters": 3,
            "pretrain_unroll": 2,
            "unroll": {"lam": 0.5, "k": 2},
            "adv": {"steps": 1},
            "select": {"every_epochs": 0.5, "pgd_steps": 1, "dev_examples": 5},
        },
        evaluation={
            "batch_size": 6,
            "estimators": {"exact": {"name": "exact"}, "unroll": {"name": "unroll", "lam": 0.5, "k": 2}},
        },
        analysis={"budget": 6, "trajectory": {"num_examples": 12, "alignment_examples": 4}},
    )
    cfg = config.load([path])
    data.prepare(cfg)
    train(cfg, "deq", tmp / "deq")
    return cfg, path, tmp


def test_a_training_lists_its_snapshots_and_the_trajectory_analyses_each(trained, tmp_path):
    cfg, path, tmp = trained
    manifest = json.loads((tmp / "deq" / "snapshots.json").read_text())
    assert [s["iteration"] for s in manifest["snapshots"]] == [3, 6] and manifest["pretrain_iters"] == 3
    out = tmp_path / "trajectory.json"
    assert (
        run_command(
            "trajectory",
            ["-c", str(path), "--snapshots", str(tmp / "deq" / "snapshots.json"), "--out", str(out), "--no-progress"],
        )
        == 0
    )
    record = trajectory.load(out)
    assert [s["pretraining"] for s in record["snapshots"]] == [True, False]
    x, y = data.load_split(cfg, "test")
    x, y = x[:12], y[:12]
    for snap in record["snapshots"]:
        deq, meta = load_checkpoint(tmp / "deq" / "snapshots" / snap["file"])
        assert meta["metrics"]["iteration"] == snap["iteration"]
        # the deployed residual and correctness: the analysis' and the evaluation's own computations
        expected = torch.cat([deployed_residual(deq, x[i : i + 6], cfg["solver"]) for i in range(0, 12, 6)])
        np.testing.assert_allclose(snap["forward_residual"], expected.numpy(), rtol=1e-3)
        correct = score(deq, x, y, cfg["solver"], own_estimator(cfg, meta["spec"]))["final"]
        assert snap["correct"] == "".join(str(int(c)) for c in correct)
        assert snap["clean_accuracy"] == pytest.approx(correct.float().mean().item())
        assert set(snap["alignment"]) == {"exact", "unroll"} and len(snap["alignment"]["exact"]["cosine"]) == 4
        traced = np.array(snap["traced_residual"])
        assert (traced >= 0).all() and 0 <= snap["never_converged"] <= 1
    assert trajectory.trend(record)["residual"] is None  # one snapshot after pretraining: no change


def test_the_true_gradient_is_aligned_with_itself(trained):
    """The reference of the cosines: the deployed model's true gradient, which solver_autograd at the
    final state computes too (cosine 1 by construction); unroll, this model's own estimator, differs."""
    cfg, _, tmp = trained
    deq, meta = load_checkpoint(tmp / "deq" / "checkpoint.pt")
    x, y = data.load_split(cfg, "test")
    cosines = trajectory.deployed_alignment(
        deq,
        own_estimator(cfg, meta["spec"]),
        x[:4],
        y[:4],
        {"truth": {"name": "solver_autograd"}, "exact": {"name": "exact"}},
        cfg["solver"],
        cfg["backward_solver"],
        3,
    )
    np.testing.assert_allclose(cosines["truth"], 1.0, atol=1e-5)
    assert cosines["exact"].shape == (4,) and (np.abs(cosines["exact"]) <= 1 + 1e-6).all()


def test_a_changed_snapshot_is_refused_by_name(trained, tmp_path):
    _, _, tmp = trained
    copy = tmp_path / "deq"
    copy.mkdir()
    manifest = json.loads((tmp / "deq" / "snapshots.json").read_text())
    (copy / "snapshots").mkdir()
    for entry in manifest["snapshots"]:
        (copy / "snapshots" / entry["file"]).write_bytes((tmp / "deq" / "snapshots" / entry["file"]).read_bytes())
    (copy / "snapshots.json").write_text(json.dumps(manifest))
    trajectory.read_manifest(copy / "snapshots.json")
    (copy / "snapshots" / manifest["snapshots"][0]["file"]).write_bytes(b"retrained")
    with pytest.raises(ConfigError, match="iter-0000003.pt is missing or not the one"):
        trajectory.read_manifest(copy / "snapshots.json")


def test_trend_reads_the_first_snapshot_after_pretraining_and_the_last():
    def snap(iteration, residual, cosine, pretraining=False):
        return {
            "iteration": iteration,
            "epoch": iteration / 10,
            "pretraining": pretraining,
            "forward_residual": residual,
            "alignment": {"exact": {"cosine": cosine}},
        }

    record = {
        "snapshots": [
            snap(1, [9.0] * 4, [0.0] * 4, pretraining=True),
            snap(2, [1e-2, 1e-2, 1e-3, None], [0.9] * 4),
            snap(3, [1e-1, 1e-1, 1e-2, None], [0.8] * 4),
            snap(4, [1e-1, 1e-1, 1e-2, 1.0], [0.5] * 4),
        ]
    }
    got = trajectory.trend(record)
    assert (got["first"], got["last"]) == (0.2, 0.4)
    # three images up by one decade; the diverged image (None: +inf) gets a finite residual: -inf, a decrease
    assert (got["residual"].increased, got["residual"].decreased, got["residual"].n) == (3, 1, 4)
    assert got["residual"].estimate == pytest.approx(1.0)
    assert got["cosine"]["exact"].estimate == pytest.approx(-0.4) and got["cosine"]["exact"].decreased == 4


def test_median_change_against_known_answers():
    """Order-statistic interval and exact sign test: for n = 10 the 95 % interval is [d_(2), d_(9)]
    (P(Bin(10, 1/2) <= 1) = 0.011 <= 0.025 < P(<= 2) = 0.055); 10 of 10 up: p = 2 / 2^10."""
    got = stats.median_change(np.zeros(10), np.arange(1.0, 11.0))
    assert (got.estimate, got.ci, got.increased, got.decreased) == (5.5, (2.0, 9.0), 10, 0)
    assert got.p_value == pytest.approx(2 / 2**10)
    both_diverged = stats.median_change([np.inf, 0.0, 0.0], [np.inf, 1.0, -1.0])
    assert both_diverged.n == 2 and both_diverged.p_value == 1.0
    rng = np.random.default_rng(0)  # the interval covers the true median at least 95 % of the time
    covered = np.mean(
        [
            lo <= 0.5 <= hi
            for lo, hi in (stats.median_change(np.zeros(40), rng.normal(0.5, 1, 40)).ci for _ in range(400))
        ]
    )
    assert covered >= 0.93
    with pytest.raises(ValueError, match="one length"):
        stats.median_change([1.0], [1.0, 2.0])


def test_the_report_shows_each_snapshots_median_residual_at_the_deployed_and_the_traced_budget():
    from deqrobust.report import trend_lines

    def snap(iteration, deployed, traced):
        return {
            "iteration": iteration,
            "epoch": iteration / 2,
            "pretraining": False,
            "clean_accuracy": 0.5,
            "never_converged": 0.25,
            "forward_residual": deployed,
            "traced_residual": traced,
            "alignment": {"exact": {"cosine": [0.9, 0.95, 1.0]}},
        }

    record = {
        "model": {"name": "deq-adv.s0", "training": "pgd"},
        "solver": {"budget": 8},
        "traced_budget": 30,
        "num_examples": 3,
        "alignment_examples": 3,
        "snapshots": [snap(1, [1e-1, 1e-2, 1e-3], [1e-4, 1e-6, None]), snap(2, [1.0, 1e-1, 1e-2], [1e-5, 1e-7, 1e-9])],
    }
    text = "\n".join(trend_lines([record]))
    assert "| median residual, step 8 (deployed) | median residual, step 30 |" in text
    # medians: 1e-2, and 1e-4 of 1e-6, 1e-4 and a diverged image (None: above every finite one); then 1e-1, 1e-7
    assert "| deq-adv.s0 | pgd | 0.50 | 50.0 % | 0.01 | 0.0001 | 25.0 % | 0.95 |" in text
    assert "| deq-adv.s0 | pgd | 1.00 | 50.0 % | 0.1 | 1e-07 | 25.0 % | 0.95 |" in text
