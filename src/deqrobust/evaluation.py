"""The estimator x attack x state matrix: one cell per job and early-exit selection.

A cell attacks one checkpoint with one attack through one gradient estimator at one
state, and scores every adversarial batch under every defense and at every solver state,
so one attack run fills a whole row of the table. Batches are saved as they finish
(``<out>.partial/``), so an interrupted cell resumes where it stopped; the cell file is
written atomically at the end. ``deqrobust.tidy.merge`` turns the cells into the table.
"""

from __future__ import annotations

import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from deqrobust import seeds
from deqrobust.atomic import torch_load, torch_save, write_json, write_text
from deqrobust.attacks import build_attack
from deqrobust.checkpoint import load_checkpoint
from deqrobust.data import batches, load_split, md5_of
from deqrobust.deq_logits import DEQLogits
from deqrobust.device import resolve_device
from deqrobust.errors import ConfigError
from deqrobust.estimators import build_estimator, model_estimator
from deqrobust.instances import identity, instance_config, instance_names, model_spec
from deqrobust.plan import cell_config, coupling_of, spec_of
from deqrobust.protocol import is_deq
from deqrobust.scoring import all_state_logits
from deqrobust.slices import cell_slice, select_slice, settings
from deqrobust.solvers import SolverSpec, solvers_of
from deqrobust.vocab import BASELINE_ESTIMATOR, FINAL, MDEQ, SolveSetting, State, step_score


def attacked_model(cfg: dict, model: nn.Module, estimator: str, state: State | int | str | None, own=None) -> nn.Module:
    """The module an attack differentiates: the DEQ under an estimator at a state (``own``: the
    model's own estimator, which ``solver_autograd`` differentiates at the final state), or a baseline."""
    solver, backward_solver = solvers_of(cfg)
    state = State.parse(state, solver.budget)
    if not is_deq(model):
        if estimator != BASELINE_ESTIMATOR or not state.is_final:
            raise ConfigError(
                f"baselines are attacked with estimator {BASELINE_ESTIMATOR!r} at state {FINAL!r}, "
                f"not {estimator!r} at {state.text!r}"
            )
        return model
    return DEQLogits(
        model,
        build_estimator(spec_of(cfg, "estimator", estimator)),
        state,
        solver,
        backward_solver,
        own=own,
    )


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, solver: SolverSpec, own) -> dict[str, torch.Tensor]:
    """Per-example correctness under every defense and state (DEQs) or of the output (baselines)."""
    with torch.no_grad():
        logits = all_state_logits(model, x, solver, own) if own is not None else {FINAL: model(x)}
    return {key: (out.argmax(1) == y).cpu() for key, out in logits.items()}


def attack_batch(
    model: nn.Module, target: nn.Module, runner, x: torch.Tensor, y: torch.Tensor, solver: SolverSpec, own, seed: int
) -> dict:
    """One batch of a cell: correctness before and after ``runner`` attacks ``target`` (the
    model under the cell's estimator and state), under every defense and state, and the
    attack's warnings."""
    clean = score(model, x, y, solver, own)
    result = runner.run(target, x, y, seed=seed)
    return {
        "clean": clean,
        "adversarial": score(model, result.x_adv, y, solver, own),
        "warnings": list(result.warnings),
    }


def own_estimator(cfg: dict, spec: dict):
    """The estimator that defines a DEQ's own output, with its model's training overrides."""
    training = (
        model_spec(cfg, spec["name"])["training_config"] if spec["name"] in instance_names(cfg) else cfg["training"]
    )
    return model_estimator(spec, training)


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for pkg in ("torch", "deqrobust", "pyautoattack"):
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            found[pkg] = None
    return found


def _test_examples(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_split(cfg, "test")
    limit = cfg["evaluation"]["num_examples"]
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def _arch(spec: dict) -> str:
    return f"{MDEQ}-{spec.get('size')}" if spec["arch"] == MDEQ else spec["arch"]


def load_for_config(cfg: dict, checkpoint: str, device: torch.device) -> tuple[nn.Module, dict]:
    """Load a checkpoint, refusing one whose architecture differs from its model in the config."""
    model, meta = load_checkpoint(checkpoint, device)
    name = meta["spec"]["name"]
    expected = cfg["models"].get(identity(cfg, name)["base_model"])
    if expected is not None and _arch(expected) != _arch(meta["spec"]):
        raise ConfigError(
            f"checkpoint {checkpoint} holds a {_arch(meta['spec'])} model, but this config's "
            f"model {name!r} is a {_arch(expected)}; valid: a checkpoint trained from this config"
        )
    return model, meta


def _partial_dir(out: Path, stamp_of: dict) -> Path:
    """The folder of finished batches, emptied when it was made with other settings."""
    partial = out.with_name(out.name + ".partial")
    stamp = partial / "settings.json"
    text = settings(stamp_of)
    if partial.exists() and (not stamp.exists() or stamp.read_text() != text):
        shutil.rmtree(partial)
    if not partial.exists():
        partial.mkdir(parents=True)
        write_text(stamp, text)
    return partial


def run_cell(
    cfg: dict,
    checkpoint: str,
    estimator: str,
    attack: str,
    state: State | int | str,
    out: str | Path,
    setting: SolveSetting = SolveSetting(),
) -> dict:
    """Attack the test examples and write the cell file (format in docs/architecture.md).

    ``setting`` (both solvers' coupling, the attack's and the scoring's, and the evaluation
    batch) replaces the config's where given (plan.cell_config): a cell of the authors'
    batch-coupled solver, whose results depend on the batch."""
    device = resolve_device(cfg)
    torch.set_num_threads(cfg["threads"])
    model, meta = load_for_config(cfg, checkpoint, device)
    spec = meta["spec"]
    cfg = cell_config(instance_config(cfg, spec["name"]), setting)
    solver = solvers_of(cfg)[0]
    state = State.parse(state, solver.budget)
    deq = is_deq(model)
    own = own_estimator(cfg, spec) if deq else None
    target = attacked_model(cfg, model, estimator, state, own)
    attack_spec = spec_of(cfg, "attack", attack)
    runner = build_attack(attack, attack_spec)
    x, y = _test_examples(cfg)
    out = Path(out)
    size = cfg["evaluation"]["batch_size"]
    # finished batches count only for this checkpoint, state and test set, and the evaluate rule's slice
    stamp = md5_of(Path(checkpoint))  # the run stamp: which model made this cell
    partial = _partial_dir(
        out, {"checkpoint": stamp, "state": state.text, "examples": len(y), **cell_slice(cfg, estimator, attack)}
    )
    chunks = list(batches(x, y, size))
    for i, (xb, yb) in enumerate(tqdm(chunks, desc=f"{spec['name']} {estimator}@{state} {attack}", unit="batch")):
        done = partial / f"batch-{i:05d}.pt"
        if done.exists():
            continue
        start = time.perf_counter()
        part = attack_batch(
            model,
            target,
            runner,
            xb.to(device),
            yb.to(device),
            solver,
            own,
            seed=seeds.derive(cfg["seed"], seeds.TEST_ATTACK, i),
        )
        torch_save({**part, "seconds": time.perf_counter() - start}, done)
    parts = [torch_load(partial / f"batch-{i:05d}.pt") for i in range(len(chunks))]
    cell = {
        "model": spec["name"],
        **identity(cfg, spec["name"]),
        "checkpoint_md5": stamp,
        "arch": spec["arch"],
        "training": spec["training"],
        "grad": spec.get("grad"),
        "estimator": estimator,
        "estimator_spec": cfg["evaluation"]["estimators"].get(estimator, {}),
        "attack": attack,
        "attack_spec": attack_spec,
        "attacked_state": state.text,
        "coupling": coupling_of(cfg),
        "batch_size": size,
        "profile": cfg["profile"],
        "num_examples": len(y),
        "indices": list(range(len(y))),
        "labels": y.tolist(),
        "clean": {k: torch.cat([p["clean"][k] for p in parts]).int().tolist() for k in parts[0]["clean"]},
        "adversarial": {
            k: torch.cat([p["adversarial"][k] for p in parts]).int().tolist() for k in parts[0]["adversarial"]
        },
        "warnings": sorted({w for p in parts for w in p["warnings"]}),
        "timing": {"seconds": sum(p["seconds"] for p in parts), "batches": len(parts), "device": str(device)},
        "versions": _versions(),
    }
    write_json(out, cell)
    shutil.rmtree(partial)
    return cell


def select_exit(cfg: dict, checkpoint: str, out: str | Path) -> dict:
    """Choose on the dev split the early-exit state n and the strongest intermediate attack state.

    Each state n = 1..N is attacked once, through ``early_exit.estimator`` at n (the attack the
    early-exit defense will face), and every adversarial batch is scored at every state and at
    the final state, like a cell. From these runs: the early-exit state by
    ``early_exit.rule`` (choose_exit) and ``strongest_attack_state``, the n whose attack leaves
    the final defense least accurate (claim 3's intermediate state, chosen here so that the
    test images never choose it). Record format: docs/architecture.md.
    """
    device = resolve_device(cfg)
    torch.set_num_threads(cfg["threads"])
    model, meta = load_for_config(cfg, checkpoint, device)
    if not is_deq(model):
        raise ConfigError(f"checkpoint {checkpoint} holds a {meta['spec']['arch']} model; early exit needs a DEQ")
    name = meta["spec"]["name"]
    cfg = instance_config(cfg, name)
    choice = cfg["evaluation"]["early_exit"]
    x, y = load_split(cfg, "dev")
    if choice["num_examples"] is not None:
        x, y = x[: choice["num_examples"]], y[: choice["num_examples"]]
    runner = build_attack(choice["attack"], select_slice(cfg)["attack_spec"])
    solver = solvers_of(cfg)[0]
    own = own_estimator(cfg, meta["spec"])
    chunks = [(xb.to(device), yb.to(device)) for xb, yb in batches(x, y, cfg["evaluation"]["batch_size"])]
    clean = _accuracy([score(model, xb, yb, solver, own) for xb, yb in chunks], len(y))
    dev = {}
    for n in tqdm(range(1, solver.budget + 1), desc=f"{name} early exit", unit="state"):
        target = attacked_model(cfg, model, choice["estimator"], State(step=n), own)
        adversarial = _accuracy(
            [
                score(
                    model,
                    runner.run(target, xb, yb, seed=seeds.derive(cfg["seed"], seeds.DEV_SELECT, i)).x_adv,
                    yb,
                    solver,
                    own,
                )
                for i, (xb, yb) in enumerate(chunks)
            ],
            len(y),
        )
        dev[str(n)] = {
            "clean_acc": clean[step_score(n)],
            "robust_acc": adversarial[step_score(n)],
            "final_robust_acc": adversarial[FINAL],
        }
    state, eligible = choose_exit(dev, clean[FINAL], choice["rule"], choice["clean_margin"])
    record = {
        "model": name,
        **identity(cfg, name),
        "profile": cfg["profile"],
        "checkpoint_md5": md5_of(Path(checkpoint)),
        "state": state,
        "rule": choice["rule"],
        "clean_margin": choice["clean_margin"],
        "eligible": eligible,
        "strongest_attack_state": strongest_attack_state(dev),
        "estimator": choice["estimator"],
        "attack": choice["attack"],
        "num_examples": len(y),
        "dev": dev,
        "final_clean_acc": clean[FINAL],
        "dev_robust_accuracy": {n: d["robust_acc"] for n, d in dev.items()},
    }
    write_json(out, record)
    return record


def _accuracy(scores: list[dict[str, torch.Tensor]], count: int) -> dict[str, float]:
    """Accuracy of every defense and state over the batches' per-example scores."""
    return {key: sum(int(s[key].sum()) for s in scores) / count for key in scores[0]}


def choose_exit(dev: dict[str, dict], final_clean_acc: float, rule: str, margin: float) -> tuple[int, list[int]]:
    """The early-exit state by ``rule`` and the states it could choose from.

    ``authors``: the best dev robust accuracy of h(z_n) over every n. ``clean_guard``: the same
    among the states whose dev clean accuracy is at most ``margin`` below the final state's, so a
    state near chance is never chosen for a robust accuracy that only reflects it (if no state
    qualifies: the one with the best clean accuracy). Ties go to the smaller n (cheaper inference).
    """
    states = sorted(int(n) for n in dev)
    if rule == "authors":
        eligible = states
    elif rule == "clean_guard":
        eligible = [n for n in states if dev[str(n)]["clean_acc"] >= final_clean_acc - margin - 1e-12]
        if not eligible:
            best_clean = max(dev[str(n)]["clean_acc"] for n in states)
            eligible = [n for n in states if dev[str(n)]["clean_acc"] == best_clean]
    else:
        raise ConfigError(f"evaluation.early_exit.rule: {rule!r} is not valid; choose one of clean_guard, authors")
    return max(eligible, key=lambda n: (dev[str(n)]["robust_acc"], -n)), eligible


def strongest_attack_state(dev: dict[str, dict]) -> int:
    """The attacked state n whose attack leaves the final defense least accurate (ties: the smaller n)."""
    return min((int(n) for n in dev), key=lambda n: (dev[str(n)]["final_robust_acc"], n))
