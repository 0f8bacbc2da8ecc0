"""Fixed-point analysis: summaries agree with the raw solver trace and with direct head evaluations."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

from deqrobust import analysis
from deqrobust.models import build_model
from deqrobust.solvers import solve

BUDGET = 6


@pytest.fixture(scope="module")
def deq() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"arch": "mdeq", "size": "tiny"}).eval()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(5, 3, 32, 32, generator=gen), torch.randint(0, 10, (5,), generator=gen)


def noise_adversary(x: torch.Tensor, y: torch.Tensor, index: int) -> tuple[torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(index)
    step = torch.randint(0, 2, x.shape, generator=gen) * 2 - 1
    return (x + 8 / 255 * step).clamp(0, 1), [f"batch {index} warning", "shared warning"]


def test_summarise_known_trace():
    inf = math.inf
    rel = np.array([[1.0, 1e-4, 1e-5], [1.0, 0.5, 0.2], [inf, 0.1, 1e-4]])
    correct = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=bool)
    s = analysis.summarise(rel, correct, np.array([1, 0, 0], dtype=bool), tol=1e-3)
    assert s["per_sample"]["steps_to_tol"] == [2, None, 3]
    assert s["steps_to_tol"]["counts"] == [0, 1, 1] and s["steps_to_tol"]["never"] == 1
    assert s["steps_to_tol"]["mean_converged"] == 2.5 and s["steps_to_tol"]["mean_capped"] == pytest.approx(8 / 3)
    assert s["share_never_converged"] == pytest.approx(1 / 3)
    assert s["residual"]["nonfinite"] == [1, 0, 0] and s["residual"]["median"][0] == 1.0
    assert s["accuracy"] == pytest.approx([2 / 3, 1 / 3, 2 / 3]) and s["accuracy_fixed_point"] == pytest.approx(1 / 3)
    assert s["per_sample"]["rel_residual"][2][0] is None
    json.dumps(s, allow_nan=False)   # strict JSON: no NaN or Infinity


def test_analyse_matches_solver_and_head(deq, images):
    x, y = images
    traced = {"name": "broyden", "budget": BUDGET, "tol": 0.0}
    direct = analysis.trace_batch(deq, x, y, traced)             # one batch of 5
    rel = direct["rel"].numpy()
    mins = np.sort(rel.min(axis=1))
    tol = float(mins[1] + mins[2]) / 2                            # some samples converge, some never do
    result = analysis.analyse(deq, x, y, traced, tol, batch_size=2, adversary=noise_adversary, progress=False)

    assert set(result["inputs"]) == {"clean", "adversarial"}
    assert result["warnings"] == ["batch 0 warning", "shared warning", "batch 1 warning", "batch 2 warning"]
    clean = result["inputs"]["clean"]
    assert clean["n"] == 5 and len(clean["accuracy"]) == BUDGET
    assert all(len(clean["residual"][k]) == BUDGET for k in ("median", "q25", "q75", "mean", "nonfinite"))
    for summary in result["inputs"].values():
        assert all(0.0 <= a <= 1.0 for a in summary["accuracy"] + [summary["accuracy_fixed_point"]])

    # batches of 2 give the per-sample traces of one batch of 5 (per-sample solver)
    np.testing.assert_allclose(np.array(clean["per_sample"]["rel_residual"]), rel, rtol=5e-3)
    steps = clean["per_sample"]["steps_to_tol"]
    assert steps == analysis.steps_to_tolerance(rel, tol)
    assert 0 < sum(s is None for s in steps) < 5
    for row, s in zip(rel, steps):
        if s is None:
            assert (row > tol).all()
        else:
            assert row[s - 1] <= tol and (row[: s - 1] > tol).all()

    # the deployed solver with this tolerance stops exactly where the trace first meets it
    deployed = solve({"name": "broyden", "budget": BUDGET, "tol": tol}, lambda z: deq.f(z, deq.prepare(x)),
                     deq.init_state(x))
    assert deployed.converged.tolist() == [s is not None for s in steps]
    assert [int(d) for d, s in zip(deployed.steps, steps) if s is not None] == [s for s in steps if s is not None]

    # accuracy of h(z_n) at n = 3 equals a direct evaluation of the head on the third iterate
    with torch.no_grad():
        res = solve(traced, lambda z: deq.f(z, deq.prepare(x)), deq.init_state(x), keep_iterates=True)
        direct_acc = (deq.head(res.iterates[2]).argmax(dim=1) == y).float().mean().item()
    assert clean["accuracy"][2] == pytest.approx(direct_acc)


def test_analyze_command(tmp_path, cifar_archive, make_config):
    from deqrobust import config, data
    from deqrobust.checkpoint import save_checkpoint
    from deqrobust.commands import analyze

    archive, _ = cifar_archive(n_test=6)
    cfg_path = make_config(
        archive, evaluation={"batch_size": 2, "estimators": {"exact": {"name": "exact"}},
                             "attacks": {"pgd1": {"name": "pgd", "steps": 1}}},
        analysis={"budget": 5, "num_examples": 4, "attack": "pgd1", "estimator": "exact"})
    cfg = config.load(cfg_path)
    data.prepare(cfg)
    torch.manual_seed(0)
    spec = {**cfg["models"]["deq"], "name": "deq"}
    save_checkpoint(tmp_path / "checkpoint.pt", build_model(spec), spec, epoch=1.0, metrics={}, profile="test")

    parser = argparse.ArgumentParser()
    analyze.add_arguments(parser)
    out = tmp_path / "analysis" / "deq.json"
    args = parser.parse_args(["-c", str(cfg_path), "--checkpoint", str(tmp_path / "checkpoint.pt"),
                              "--out", str(out), "--no-progress"])
    assert analyze.run(args) == 0
    record = analysis.load(out)
    assert record["model"] == {"name": "deq", "arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact"}
    assert record["num_examples"] == 4 and record["solver"] == {"name": "broyden", "budget": 5, "tol": 0.0}
    assert record["tol"] == cfg["solver"]["tol"] and record["attack_spec"] == {"name": "pgd", "steps": 1}
    for kind in ("clean", "adversarial"):
        assert len(record["inputs"][kind]["per_sample"]["rel_residual"]) == 4
