"""The paper profile's wall time on one GPU, per rule, from the gpu check's measurements.

Arithmetic only: counts come from ``config/config.yaml`` as the workflow plans it
(``plan.cells``, the training schedule), unit costs from the check's ``throughput`` (seconds per
training step) and ``evaluation`` (seconds per image of a PGD-10 and an APGD-CE cell batch).
Every figure that is not measured is an assumption named in ``assumptions`` with its factor,
so a reader can redo the sums. Jobs are counted one after another on one GPU.
"""

from __future__ import annotations

import math

from deqrobust import config
from deqrobust.plan import cells, deqs

from .settings import ROOT

PAPER = ROOT / "config" / "config.yaml"
XL_OVER_LARGE = 4.168 / 0.823  # GFLOP per f per image (docs/performance.md, "Cost of one f per size")
AA_STANDARD_OVER_APGD = 14.5  # APGD-CE, then APGD-T and FAB-T (9 targets each) on the ~50 % still robust
ANALYZE_OVER_PGD = 2.0  # PGD-10 inputs plus 30-step traces and gradient diagnostics, per analysed image
SEGMENTS = {"large": 1.0, "xl": XL_OVER_LARGE}

ASSUMPTIONS = {
    "xl": f"DEQ-XL costs DEQ-Large's time x {XL_OVER_LARGE:.2f} (its FLOPs per f); not measured",
    "unroll": "a model trained with grad: unroll costs what the exact-gradient one does",
    "pretraining": "an unrolled clean pretraining step costs a standard training step",
    "estimators": "every PGD-10 cell but solver_autograd costs exact's (state-n cells: an upper bound)",
    "apgd": "APGD-CE scales with iterations x restarts from the measured APGD-CE cell",
    "aa-standard": f"AutoAttack standard costs {AA_STANDARD_OVER_APGD} x APGD-CE (100 it.)",
    "baselines": "a baseline's PGD-10 cell costs its PGD-AT training step per image; APGD-CE 10x that",
    "dev": "model selection runs PGD-10 on the dev split every epoch at exact's cell cost",
    "analyze": f"analyze costs {ANALYZE_OVER_PGD} x a PGD-10 cell on its images",
    "trajectory": "a snapshot costs one PGD step on its traced images and a PGD-10 cell on the aligned ones",
}


def _deq_size(cfg: dict, model: str) -> str:
    return cfg["models"][model].get("size", "large")


def project(throughput: dict | None, evaluation: dict | None, form) -> dict:
    """Hours per rule of ``config/config.yaml`` on one GPU, per measured training precision."""
    if not throughput or not evaluation or "rows" not in throughput or "rows" not in evaluation:
        return {"status": "skipped", "reason": "needs the throughput and evaluation parts"}
    cfg = config.load(PAPER)
    rows, ev = throughput["rows"], evaluation["rows"]
    batch = throughput["batch"]
    to_pgd10 = 10 / form.pgd_steps  # the measured PGD cells ran form.pgd_steps steps
    pgd_exact = _per_image(ev, "exact", "pgd") * to_pgd10
    pgd_true = _per_image(ev, "solver_autograd", "pgd") * to_pgd10
    apgd = _per_image(ev, "exact", "apgd-ce") / form.apgd_iterations  # per image and iteration

    tc = cfg["training"]
    n_train = 50_000 - cfg["data"]["dev_size"]
    per_epoch = n_train // tc["batch_size"]
    iterations = math.ceil(tc["epochs"] * per_epoch)
    dev = cfg["data"]["dev_size"]
    test = 10_000 if cfg["evaluation"]["num_examples"] is None else cfg["evaluation"]["num_examples"]
    scale_batch = tc["batch_size"] / batch  # a step of the paper's batch, from the measured batch

    def attack_cost(attack: str, per_pgd: float, per_apgd_iteration: float) -> float:
        spec = cfg["evaluation"]["attacks"][attack]
        if spec["name"] == "pgd":
            return per_pgd * spec["steps"] / 10
        if spec["name"] == "apgd-ce":
            return per_apgd_iteration * spec.get("n_iter", 100) * spec.get("restarts", 1)
        if spec["name"] == "autoattack":
            return per_apgd_iteration * 100 * AA_STANDARD_OVER_APGD
        raise ValueError(f"no cost model for attack {attack!r}")

    measured = [r for r in rows.values() if r.get("status") == "measured"]
    precisions = sorted({r["precision"] for r in measured if r.get("model") == "deq-pgd"})
    out = {}
    for precision in precisions:
        step_pgd = rows[f"deq-pgd {precision}"]["seconds_per_step"] * scale_batch
        step_std = rows.get(f"deq-std {precision}", {}).get("seconds_per_step", step_pgd / 10) * scale_batch
        rules: dict[str, float] = {"train": 0.0, "evaluate": 0.0, "select_exit": 0.0, "analyze": 0.0, "trajectory": 0.0}
        per_model: dict[str, float] = {}
        for model in deqs(cfg):
            k = SEGMENTS[_deq_size(cfg, model)]
            spec = cfg["models"][model]
            pre = tc["pretrain_iters"]
            body = step_pgd if spec["training"] == "pgd" else step_std
            seconds = k * (pre * step_std + (iterations - pre) * body + tc["epochs"] * dev * pgd_exact)
            per_model[model] = seconds
            rules["train"] += seconds
            rules["select_exit"] += k * cfg["solver"]["budget"] * dev * pgd_exact
            rules["analyze"] += k * ANALYZE_OVER_PGD * cfg["analysis"]["num_examples"] * pgd_exact
            traj = cfg["analysis"].get("trajectory", {})
            snapshots = math.ceil(tc["epochs"] / tc["select"]["every_epochs"])
            rules["trajectory"] += (
                k
                * snapshots
                * (traj.get("num_examples", 500) * pgd_exact / 10 + traj.get("alignment_examples", 64) * pgd_exact)
            )
        baseline_step = {}
        for model, spec in cfg["models"].items():
            if spec["arch"] == "mdeq":
                continue
            prefix = "resnet18" if spec["arch"] == "preact_resnet18" else "wrn34"
            same = [r for r in measured if r.get("model", "").startswith(prefix)]
            if not same:
                continue
            step = same[0]["seconds_per_step"] * scale_batch
            baseline_step[model] = step / tc["batch_size"]
            seconds = iterations * step + tc["epochs"] * dev * baseline_step[model]
            per_model[model] = seconds
            rules["train"] += seconds
        for cell in cells(cfg):
            if cfg["models"][cell.model]["arch"] != "mdeq":
                if cell.model in baseline_step:  # else not measured: left out, and listed
                    per = baseline_step[cell.model]
                    rules["evaluate"] += test * attack_cost(cell.attack, per, per)
                continue
            k = SEGMENTS[_deq_size(cfg, cell.model)]
            per_pgd = pgd_true if cell.estimator == "solver_autograd" else pgd_exact
            rules["evaluate"] += test * k * attack_cost(cell.attack, per_pgd, apgd)
        total = sum(rules.values())
        missing = [m for m, sp in cfg["models"].items() if sp["arch"] != "mdeq" and m not in baseline_step]
        out[precision] = {
            "not_projected": missing,
            "hours_per_rule": {r: v / 3600 for r, v in rules.items()},
            "hours_per_trained_model": {m: v / 3600 for m, v in per_model.items()},
            "hours_total": total / 3600,
            "days_total": total / 86400,
        }
    return {
        "status": "computed" if form.name == "full" else "skipped",
        **({} if form.name == "full" else {"reason": "reduced form: tiny sizes, the arithmetic only"}),
        "profile": str(PAPER.relative_to(ROOT)),
        "training_iterations": iterations,
        "cells": len(cells(cfg)),
        "test_images": test,
        "per_image_s": {"pgd10 exact": pgd_exact, "pgd10 solver_autograd": pgd_true, "apgd-ce per iteration": apgd},
        "precisions": out,
        "assumptions": ASSUMPTIONS,
        "target": "DEQ-Large PGD-AT (exact) in at most 24 h: hours_per_trained_model['deq-large-pgd-exact']",
    }


def _per_image(rows: dict, estimator: str, attack: str) -> float:
    for row in rows.values():
        if row["estimator"] == estimator and row["attack"] == attack:
            return row["seconds_per_image"]
    raise KeyError(f"the evaluation part has no {estimator} {attack} cell")
