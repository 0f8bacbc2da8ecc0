"""Fixed-point analysis: summaries agree with the raw solver trace and with direct head evaluations;
the mechanism diagnostics give known answers (alignment 1 at a converged fixed point, -1 for a
reversed gradient, batch dependence 1 under per-sample decisions)."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from toy_deq import ToyDEQ

from deqrobust import analysis, plan, slices, vocab
from deqrobust.errors import ConfigError
from deqrobust.estimators import Exact, SolverAutograd, _RewriteGrad
from deqrobust.models import build_model
from deqrobust.models.mdeq import MDEQ
from deqrobust.solvers import SolverSpec, solve

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
    json.dumps(s, allow_nan=False)  # strict JSON: no NaN or Infinity


def test_analyse_matches_solver_and_head(deq, images):
    x, y = images
    traced = {"name": "broyden", "budget": BUDGET, "tol": 0.0}
    direct = analysis.trace_batch(deq, x, y, traced)  # one batch of 5
    rel = direct["rel"].numpy()
    mins = np.sort(rel.min(axis=1))
    tol = float(mins[1] + mins[2]) / 2  # some samples converge, some never do
    deployed_solver = {"name": "broyden", "budget": BUDGET - 1, "tol": tol}
    result, x_adv = analysis.analyse(
        deq, x, y, traced, tol, batch_size=2, adversary=noise_adversary, progress=False, deployed=deployed_solver
    )

    assert set(result["inputs"]) == {"clean", "adversarial"}
    torch.testing.assert_close(
        x_adv, torch.cat([noise_adversary(x[i : i + 2], y[i : i + 2], i // 2)[0] for i in (0, 2, 4)])
    )
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
    deployed = solve(
        {"name": "broyden", "budget": BUDGET, "tol": tol}, lambda z: deq.f(z, deq.prepare(x)), deq.init_state(x)
    )
    assert deployed.converged.tolist() == [s is not None for s in steps]
    assert [int(d) for d, s in zip(deployed.steps, steps) if s is not None] == [s for s in steps if s is not None]

    # forward_residual: the deployed solver's iterate, i.e. the trace's lowest residual up to the
    # step meeting the tolerance or the deployed budget
    expected = [min(row[: min(s or BUDGET - 1, BUDGET - 1)]) for row, s in zip(rel, steps)]
    np.testing.assert_allclose(result["forward_residual"]["clean"], expected, rtol=1e-3)
    assert len(result["forward_residual"]["adversarial"]) == 5

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
    estimators = {
        "exact": {"name": "exact"},
        "unroll": {"name": "unroll", "k": 2},
        "intermediate": {"name": "intermediate", "k": 1},
        "adjoint": {"name": "adjoint"},
        "truth": {"name": "solver_autograd"},
    }
    cfg_path = make_config(
        archive,
        evaluation={"batch_size": 2, "estimators": estimators, "attacks": {"pgd1": {"name": "pgd", "steps": 1}}},
        analysis={
            "budget": 5,
            "num_examples": 4,
            "attack": "pgd1",
            "estimator": "truth",  # needs the own estimator
            "diagnostics": {"num_examples": 3, "states": [1, 3], "batch_size": 4},
        },
    )
    cfg = config.load(cfg_path)
    data.prepare(cfg)
    torch.manual_seed(0)
    spec = {**cfg["models"]["deq"], "name": "deq"}
    save_checkpoint(tmp_path / "checkpoint.pt", build_model(spec), spec, epoch=1.0, metrics={}, profile="test")

    parser = argparse.ArgumentParser()
    analyze.add_arguments(parser)
    out = tmp_path / "analysis" / "deq.json"
    args = parser.parse_args(
        ["-c", str(cfg_path), "--checkpoint", str(tmp_path / "checkpoint.pt"), "--out", str(out), "--no-progress"]
    )
    assert analyze.run(args) == 0
    record = analysis.load(out)
    assert record["model"] == {"name": "deq", "arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact"}
    assert record["num_examples"] == 4 and record["solver"] == {
        "name": "broyden",
        "budget": 5,
        "tol": 0.0,
        "coupling": "sample",
    }
    assert record["tol"] == cfg["solver"]["tol"] and record["attack_spec"] == {"name": "pgd", "steps": 1}
    for kind in ("clean", "adversarial"):
        assert len(record["inputs"][kind]["per_sample"]["rel_residual"]) == 4
    assert record["seed"] == 0 and record["base_model"] == "deq"
    json.dumps(record, allow_nan=False)

    # the interface the report and the figures read
    expected = {
        ("exact", "final"),
        ("unroll", "final"),
        ("intermediate", 1),
        ("intermediate", 3),
        ("adjoint", 1),
        ("adjoint", 3),
    }
    for kind in ("clean", "adversarial"):
        entries = [e for e in record["alignment"] if e["inputs"] == kind]
        assert {(e["estimator"], e["state"]) for e in entries} == expected
        for e in entries:
            assert e["estimator_type"] == estimators[e["estimator"]]["name"] and len(e["cosine"]) == 3
            assert -1 - 1e-6 <= e["median"] <= 1 + 1e-6 and e["median"] == pytest.approx(np.median(e["cosine"]))
        assert len(record["forward_residual"][kind]) == 4 and len(record["backward_residual"][kind]) == 3
        assert all(r >= 0 for r in record["forward_residual"][kind] + record["backward_residual"][kind])
    assert set(record["batch_dependence"]) == {"sample", "batch"}
    for coupling, entries in record["batch_dependence"].items():
        assert set(entries) == {"exact", "unroll", "intermediate", "adjoint", "truth"}
        assert all(len(e["cosine"]) == 3 for e in entries.values())  # the first 3 of a batch of 4
    # Per-sample decisions make an image's gradient independent of its batch; this untrained float32
    # model never converges, so Broyden amplifies the batch-size-dependent rounding of float32
    # (worst seen: 0.9999 at other seeds and thread counts). The exact property is checked in
    # float64 below (test_batch_dependence_is_one_per_sample_and_below_one_under_batch_coupling).
    assert all(min(e["cosine"]) > 0.99 for e in record["batch_dependence"]["sample"].values())
    assert record["diagnostics"]["num_examples"] == 3 and record["diagnostics"]["batch_size"] == 4
    assert record["timing"]["alignment_per_example"] > 0


# ---------------------------------------------------------------- mechanism diagnostics
CONVERGED = {"name": "broyden", "budget": 40, "tol": 1e-12}


@pytest.fixture
def toy() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A contractive DEQ (||W|| = 0.9, slow enough that the solve's dependence on x matters)."""
    torch.manual_seed(0)
    x = torch.randn(6, 6, dtype=torch.float64) * torch.linspace(0.3, 3, 6, dtype=torch.float64)[:, None]
    return ToyDEQ(contraction=0.9), x, torch.tensor([0, 1, 2, 3, 0, 1])


def diagnosed(**estimators: tuple[dict, list]) -> dict:
    """plan.diagnosed's form: name -> (spec, states)."""
    return {
        "estimators": {name: {"spec": spec, "states": states} for name, (spec, states) in estimators.items()},
        "true_gradient": vocab.TRUE_GRADIENT,
    }


def medians(result: dict) -> dict:
    return {(e["estimator"], e["state"]): e["median"] for e in result["alignment"]}


def test_exact_is_aligned_at_a_converged_fixed_point_and_a_short_unroll_is_not(toy):
    """At z* the phantom gradient of k unrolled steps omits dz*/dx; it tends to the implicit
    gradient as k grows."""
    deq, x, y = toy
    unrolls = {f"unroll-k{k}": ({"name": "unroll", "lam": 0.5, "k": k}, ["final"]) for k in (0, 1, 5)}
    chosen = diagnosed(exact=({"name": "exact"}, ["final"]), adjoint=({"name": "adjoint"}, [40]), **unrolls)
    result = analysis.diagnose(
        deq, Exact(), {"clean": (x, y)}, chosen, CONVERGED, CONVERGED, batch_size=4, progress=False
    )
    assert analysis.deployed_residual(deq, x, CONVERGED).max() < 1e-10  # z* is the fixed point
    assert max(result["backward_residual"]["clean"]) < 1e-10  # and u solves the adjoint equation
    found = medians(result)
    exact = [e for e in result["alignment"] if e["estimator"] == "exact"][0]
    assert min(exact["cosine"]) > 1 - 1e-9  # implicit gradient = true gradient
    assert found[("adjoint", 40)] > 1 - 1e-9  # lockstep adjoint after convergence
    phantom = [found[(f"unroll-k{k}", "final")] for k in (0, 1, 5)]
    assert phantom[0] < 0.99 and phantom[0] < phantom[1] < phantom[2] and phantom[2] > 0.999, phantom
    assert all(len(e["cosine"]) == len(y) for e in result["alignment"])


@dataclass(frozen=True)
class Reversed(SolverAutograd):
    """The true gradient of the deployed output, negated: alignment must read -1."""

    name: ClassVar[str] = "reversed"

    def attach(self, z, n, ctx):
        return _RewriteGrad.apply(super().attach(z, n, ctx), lambda a: -a)


def test_alignment_reads_one_for_the_true_gradient_and_minus_one_for_its_negative(toy, monkeypatch):
    deq, x, y = toy
    from deqrobust import estimators, specs

    monkeypatch.setitem(estimators.ESTIMATORS, "reversed", Reversed)
    monkeypatch.setitem(specs.ESTIMATORS, "reversed", {})  # no parameters
    solver = {"name": "broyden", "budget": 5, "tol": 1e-3}
    chosen = diagnosed(truth=({"name": "solver_autograd"}, ["final", 3]), negative=({"name": "reversed"}, ["final", 3]))
    found = medians(
        analysis.diagnose(deq, Exact(), {"clean": (x, y)}, chosen, solver, CONVERGED, batch_size=6, progress=False)
    )
    for state in ("final", 3):
        assert found[("truth", state)] == pytest.approx(1, abs=1e-12)
        assert found[("negative", state)] == pytest.approx(-1, abs=1e-12)


def test_batch_dependence_is_one_per_sample_and_below_one_under_batch_coupling():
    """An untrained MDEQ whose solve does not converge (tolerance 0.85 met by some images only)."""
    torch.manual_seed(0)
    deq = MDEQ("mini").double().eval()
    x = (
        torch.rand(6, 3, 32, 32, dtype=torch.float64)
        * torch.tensor([0.2, 0.6, 1, 1, 0.4, 0.8], dtype=torch.float64)[:, None, None, None]
    )
    y = torch.arange(6)
    chosen = diagnosed(
        exact=({"name": "exact"}, ["final"]), intermediate=({"name": "intermediate", "lam": 0.5, "k": 2}, [1, 4])
    )
    result = analysis.batch_dependences(
        deq,
        Exact(),
        x,
        y,
        chosen,
        SolverSpec.parse({"name": "broyden", "budget": 6, "tol": 0.85}),
        SolverSpec.parse({"name": "broyden", "budget": 4, "tol": 0.5}),
        images=5,
    )
    assert set(result) == {"sample", "batch"}
    for coupling in result.values():
        assert set(coupling) == {"exact", "intermediate", vocab.TRUE_GRADIENT}
        assert coupling["intermediate"]["state"] == 4 and coupling["exact"]["state"] == "final"
        assert all(len(entry["cosine"]) == 5 for entry in coupling.values())  # the first 5 of the batch of 6
    assert all(min(entry["cosine"]) > 1 - 1e-10 for entry in result["sample"].values())
    for name in ("exact", vocab.TRUE_GRADIENT):
        assert min(result["batch"][name]["cosine"]) < 0.9, result["batch"][name]
        assert result["batch"][name]["median"] == pytest.approx(np.median(result["batch"][name]["cosine"]))


def test_diagnosed_defaults_cover_the_papers_estimators_and_bad_entries_are_named():
    from deqrobust.config import load

    cfg = load(["config/config.yaml"])
    chosen = plan.diagnosed(cfg)
    types = {name: entry["spec"]["name"] for name, entry in chosen["estimators"].items()}
    assert set(types.values()) == {"exact", "unroll", "neumann", "intermediate", "adjoint"}
    assert len([t for t in types.values() if t == "intermediate"]) == 6
    for name, entry in chosen["estimators"].items():
        budget = cfg["solver"]["budget"]
        assert entry["states"] == (["final"] if types[name] in plan.DIAGNOSED_AT_FINAL else list(range(1, budget + 1)))
    assert chosen["true_gradient"] == vocab.TRUE_GRADIENT
    assert "diagnosed" in slices.analysis_slice(cfg)  # a changed spec reruns the analysis

    def diagnostics(**section):
        return {
            **cfg,
            "analysis": {**cfg["analysis"], "diagnostics": {**cfg["analysis"]["diagnostics"], **section}},
            "evaluation": {
                **cfg["evaluation"],
                "estimators": {  # 'truth' the only true-gradient estimator
                    **{k: v for k, v in cfg["evaluation"]["estimators"].items() if v["name"] != vocab.TRUE_GRADIENT},
                    "truth": {"name": "solver_autograd"},
                },
            },
        }

    assert plan.diagnosed(diagnostics(estimators=["exact"], states=[2]))["true_gradient"] == "truth"
    for section, message in [
        (
            {"estimators": ["nope"]},
            r"analysis.diagnostics.estimators: unknown estimator 'nope'; "
            r"defined in evaluation.estimators: exact, ",
        ),
        ({"estimators": ["truth"]}, r"'truth' is a 'solver_autograd' estimator; diagnosed types"),
        ({"states": [9]}, r"analysis.diagnostics.states: state 9 is not valid .* 0..8"),
    ]:
        with pytest.raises(ConfigError, match=message):
            plan.diagnosed(diagnostics(**section))
