"""Section ``gpu``: the acceptance check of the paper profile on one GPU (issue 20).

One command, six parts, each written to the JSON as soon as it ends (a run stopped by its
time limit keeps what finished):

1. ``tests``: the CUDA-only tests (``tests/test_cuda.py``: skipped without CUDA), by pytest;
2. ``parity``: float64 logits and exact input gradient of one DEQ, CPU against CUDA, same weights;
3. ``throughput``: ``Trainer.step`` of a PGD-AT DEQ through the exact gradient in fp32 (IEEE),
   TF32 and bf16 autocast (``training.amp``): images/s, achieved TFLOP/s counted by
   FlopCounterMode on one step, peak memory; and the PGD-AT step of each baseline;
4. ``evaluation``: one batch of a cell (``attack_batch``: clean scores, the attack, adversarial
   scores) under PGD-10 through ``exact`` and through ``solver_autograd``, and APGD-CE;
5. ``smoke``: the smoke workflow end to end with ``device: cuda`` (``snakemake``);
6. ``projection``: the paper profile's wall time per rule on one such GPU, from 3 and 4
   (``projection.py``).

``full`` is the form for a GPU (DEQ-Large, batch 96, the paper's budgets, PGD-10, APGD-CE with
100 iterations); ``reduced`` runs every code path at tiny sizes on the CPU so that CI keeps the
check working (the CUDA-only parts are reported as skipped, with the reason; the smoke workflow
is a dry run). Figures are measured after a warm-up step, synchronised with the device.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from deqrobust import config, data
from deqrobust.atomic import write_json
from deqrobust.attacks import build_attack
from deqrobust.deq_logits import DEQLogits
from deqrobust.errors import ConfigError
from deqrobust.estimators import build_estimator
from deqrobust.evaluation import attack_batch, attacked_model, own_estimator
from deqrobust.models.mdeq import MDEQ
from deqrobust.plan import spec_of
from deqrobust.training import Trainer

from . import projection
from .common import make_batch, synthetic_archive
from .settings import ROOT, Settings
from .timing import count_flops

PRECISIONS = ("fp32", "tf32", "bf16")
CUDA_TESTS = "tests/test_cuda.py"
SMOKE = "config/smoke.yaml"
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "notebooks", "src/deqrobust/config.schema.yaml")


@dataclass
class GpuForm:
    """Sizes of one form of the check."""

    name: str
    device: str
    size: str
    batch: int
    budget: int
    backward_budget: int
    pgd_steps: int  # PGD-AT training steps and the evaluation's PGD steps
    apgd_iterations: int
    parity_size: str
    parity_batch: int
    warmup: int
    timed_steps: int
    baselines: dict = field(default_factory=dict)  # name -> model spec
    smoke_run: bool = True  # False: a dry run

    @classmethod
    def full(cls) -> GpuForm:
        return cls(
            name="full",
            device="cuda",
            size="large",
            batch=96,
            budget=8,
            backward_budget=7,
            pgd_steps=10,
            apgd_iterations=100,
            parity_size="large",
            parity_batch=4,
            warmup=1,
            timed_steps=3,
            baselines={
                "resnet18-pgd": {"arch": "preact_resnet18", "training": "pgd"},
                "wrn34-10-pgd": {"arch": "wrn34_10", "training": "pgd"},
            },
        )

    @classmethod
    def reduced(cls) -> GpuForm:
        return cls(
            name="reduced",
            device="cpu",
            size="mini",
            batch=4,
            budget=3,
            backward_budget=2,
            pgd_steps=2,
            apgd_iterations=2,
            parity_size="mini",
            parity_batch=2,
            warmup=1,
            timed_steps=1,
            baselines={"resnet18-w8-pgd": {"arch": "preact_resnet18", "width": 8, "training": "pgd"}},
            smoke_run=False,
        )


def form_of(name: str | None) -> GpuForm:
    """``full`` or ``reduced``; none given: full where CUDA is available, else reduced."""
    if not name:
        name = "full" if torch.cuda.is_available() else "reduced"
    if name not in ("full", "reduced"):
        raise ValueError(f"unknown gpu check form {name!r}; valid: full, reduced")
    return GpuForm.full() if name == "full" else GpuForm.reduced()


# ---- device helpers ----------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def fp32_mode(device: torch.device, precision: str):
    """fp32 as IEEE float32 or as TF32 on the tensor cores (convolutions and matrix products);
    torch's defaults are restored after. bf16 runs under training.amp and leaves them alone."""
    if device.type != "cuda" or precision == "bf16":
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    mode = "tf32" if precision == "tf32" else "ieee"
    conv.fp32_precision = matmul.fp32_precision = mode
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def timed(device: torch.device, fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, each synchronised with the device."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---- a synthetic config and its trainers -------------------------------------------------------------
def check_config(folder: Path, form: GpuForm, models: dict, amp: bool = False) -> dict:
    """A resolved config on a synthetic CIFAR-10: the paper's solver budgets at tolerance 0 (every
    solve runs its whole budget), PGD-AT at 8/255, no pretraining or Jacobian term (the bulk of
    the paper's iterations), and the paper's PGD-10 and APGD-CE settings for the evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "cifar.tar.gz"
    if not archive.exists():
        synthetic_archive(archive, per_batch=4)
    raw = {
        "profile": "gpu-check",
        "device": form.device,
        "threads": max(1, min(8, os.cpu_count() or 1)),
        "seed": 0,
        "data": {"root": str(folder / "data"), "archive": str(archive), "allow_md5_mismatch": True, "dev_size": 2},
        "solver": {"name": "broyden", "budget": form.budget, "tol": 0.0},
        "backward_solver": {"name": "broyden", "budget": form.backward_budget, "tol": 0.0},
        "models": models,
        "training": {
            "batch_size": form.batch,
            "pretrain_iters": 0,
            "jac_reg": {"weight": 0.0},
            "adv": {"eps_255": 8, "step_255": 2, "steps": form.pgd_steps},
            "amp": amp,
        },
        "evaluation": {
            "batch_size": form.batch,
            "estimators": {"exact": {"name": "exact"}, "solver_autograd": {"name": "solver_autograd"}},
            "attacks": {
                "pgd": {"name": "pgd", "eps_255": 8, "step_255": 2, "steps": form.pgd_steps, "restarts": 1},
                "apgd-ce": {"name": "apgd-ce", "eps_255": 8, "n_iter": form.apgd_iterations, "restarts": 1},
            },
            "cells": [{"estimators": ["exact"], "attacks": ["pgd"], "states": ["final"]}],
            "baseline_attacks": ["pgd"],
            "early_exit": {"estimator": "exact", "attack": "pgd"},
        },
        "analysis": {"attack": "pgd", "estimator": "exact"},
    }
    path = folder / ("config-amp.yaml" if amp else "config.yaml")
    path.write_text(yaml.safe_dump(raw))
    cfg = config.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)  # the synthetic archive is not the official one
        data.prepare(cfg)
    return cfg


def deq_spec(form: GpuForm, training: str) -> dict:
    return {"arch": "mdeq", "size": form.size, "training": training, "grad": "exact"}


# ---- 1. the CUDA-only tests ---------------------------------------------------------------------------
def cuda_tests(timeout: float) -> dict:
    """``pytest tests/test_cuda.py`` in a subprocess: counts, and each skip's reason."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"status": "skipped", "reason": "pytest is not installed"}
    with tempfile.TemporaryDirectory(prefix="deqrobust-gpu-tests-") as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", CUDA_TESTS]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"pytest ran past {timeout:.0f} s"}
        cases = []
        if report.exists():
            for case in ET.parse(report).getroot().iter("testcase"):
                outcome, reason = "passed", None
                for kind in ("failure", "error", "skipped"):
                    node = case.find(kind)
                    if node is not None:
                        outcome = "failed" if kind in ("failure", "error") else "skipped"
                        reason = (node.get("message") or "").strip()[:300]
                cases.append({"test": case.get("name"), "outcome": outcome, "reason": reason})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    status = "failed" if proc.returncode not in (0, 5) or counts["failed"] else "passed"
    if status == "passed" and counts["skipped"] == len(cases):
        status = "skipped"
    return {
        "status": status,
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        **counts,
        "cases": cases,
        "tail": proc.stdout.strip().splitlines()[-3:],
    }


# ---- 2. float64 parity, CPU against CUDA ----------------------------------------------------------
def parity(form: GpuForm) -> dict:
    """Logits and the exact input gradient of one float64 DEQ on the CPU and on the form's
    device, same weights and inputs. Without CUDA the comparison runs against a second CPU copy
    (the machinery only) and the part is reported as skipped."""
    torch.manual_seed(0)
    deq = MDEQ(form.parity_size).double().eval()
    x, y = make_batch(form.parity_batch, seed=3)
    x = x.double()
    solver = {"name": "broyden", "budget": form.budget, "tol": 0.0}
    backward = {"name": "broyden", "budget": form.backward_budget, "tol": 0.0}

    def logits_and_gradient(model, device):
        net = DEQLogits(model, build_estimator({"name": "exact"}), None, solver, backward)
        xd = x.to(device).requires_grad_()
        with torch.enable_grad():
            logits = net(xd)
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y.to(device), reduction="sum"), xd)
        return logits.detach().cpu(), grad.cpu()

    other = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    ref_logits, ref_grad = logits_and_gradient(deq, torch.device("cpu"))
    logits, grad = logits_and_gradient(copy.deepcopy(deq).to(other), other)

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-300))

    out = {
        "size": form.parity_size,
        "batch": form.parity_batch,
        "dtype": "float64",
        "devices": ["cpu", str(other)],
        "logits_max_abs_diff": float((logits - ref_logits).abs().max()),
        "logits_rel_diff": rel(logits, ref_logits),
        "gradient_rel_diff": rel(grad, ref_grad),
        "gradient_cosine": float(F.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)),
        "tolerance": 1e-8,
    }
    out["agree"] = out["logits_rel_diff"] < out["tolerance"] and out["gradient_rel_diff"] < out["tolerance"]
    if other.type != "cuda":
        out.update(status="skipped", reason="needs CUDA: compared against a second CPU copy (the machinery only)")
    else:
        out["status"] = "passed" if out["agree"] else "failed"
    return out


# ---- 3. training throughput -----------------------------------------------------------------------------
def step_runner(trainer: Trainer, form: GpuForm, seed: int = 0):
    """One ``Trainer.step`` per call on a fixed batch on the trainer's device, iterations counting up."""
    x, y = make_batch(form.batch, seed=seed)
    x, y = x.to(trainer.device), y.to(trainer.device)
    state = {"iteration": 0}

    def step():
        state["iteration"] += 1
        return trainer.step(state["iteration"], x, y)

    return step


def measure_steps(trainer: Trainer, form: GpuForm, precision: str, flops: int) -> dict:
    step = step_runner(trainer, form)
    device = trainer.device
    with fp32_mode(device, precision):
        for _ in range(form.warmup):
            step()
        peak_memory_reset(device)
        seconds = timed(device, step, form.timed_steps)
    return {
        "status": "measured",
        "seconds_per_step": seconds,
        "images_per_s": form.batch / seconds,
        "tflops": flops / seconds / 1e12,
        "peak_memory_gib": peak_memory_gib(device),
    }


def throughput(form: GpuForm, folder: Path) -> dict:
    """PGD-AT (and standard) training steps of the DEQ through the exact gradient per
    precision, then each baseline's PGD-AT step at the torch-default precision."""
    models = {"deq-pgd": deq_spec(form, "pgd"), "deq-std": deq_spec(form, "standard"), **form.baselines}
    cfg = check_config(folder, form, models)
    rows: dict[str, dict] = {}
    flops: dict[str, int] = {}
    for name in models:
        trainer = Trainer(cfg, name, folder / name)
        flops[name] = count_flops(step_runner(trainer, form, seed=1))  # also the first warm-up
        if name.startswith("deq-"):
            precisions = PRECISIONS
        else:
            precisions = ("default",)
        for precision in precisions:
            key = f"{name} {precision}"
            if precision == "bf16":
                try:
                    amp_cfg = check_config(folder, form, models, amp=True)
                    amp_trainer = Trainer(amp_cfg, name, folder / f"{name}-amp")
                except ConfigError as exc:
                    rows[key] = {"status": "skipped", "reason": str(exc)}
                    continue
                rows[key] = measure_steps(amp_trainer, form, precision, flops[name])
                del amp_trainer
            elif precision == "tf32" and trainer.device.type != "cuda":
                rows[key] = {"status": "skipped", "reason": "TF32 is a mode of CUDA tensor cores"}
            else:
                rows[key] = measure_steps(trainer, form, precision, flops[name])
            rows[key].update(model=name, precision=precision, gflop_per_step=flops[name] / 1e9)
        del trainer
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {
        "status": "measured",
        "size": form.size,
        "batch": form.batch,
        "pgd_steps": form.pgd_steps,
        "solver": cfg["solver"],
        "backward_solver": cfg["backward_solver"],
        "default_fp32_precision": {
            "conv": torch.backends.cudnn.conv.fp32_precision,
            "matmul": torch.backends.cuda.matmul.fp32_precision,
        },
        "rows": rows,
    }


# ---- 4. one evaluation cell ---------------------------------------------------------------------------
def evaluation_cell(form: GpuForm, folder: Path) -> dict:
    """One batch of a cell as ``run_cell`` runs it, on a randomly initialised DEQ (every solve at
    its whole budget): PGD through exact and through solver_autograd, and APGD-CE through exact."""
    cfg = check_config(folder, form, {"deq-pgd": deq_spec(form, "pgd")})
    trainer = Trainer(cfg, "deq-pgd", folder / "eval")
    device, net = trainer.device, trainer.model.eval()
    own = own_estimator(trainer.cfg, trainer.spec)
    x, y = make_batch(form.batch, seed=2)
    x, y = x.to(device), y.to(device)
    rows = {}
    for estimator, attack in (("exact", "pgd"), ("solver_autograd", "pgd"), ("exact", "apgd-ce")):
        target = attacked_model(trainer.cfg, net, estimator, None, own)
        runner = build_attack(attack, spec_of(trainer.cfg, "attack", attack))

        def cell(target=target, runner=runner):
            return attack_batch(net, target, runner, x, y, trainer.cfg["solver"], own, seed=0)

        cell()  # warm-up
        peak_memory_reset(device)
        result = {}
        seconds = timed(device, lambda cell=cell: result.update(cell()), 1)
        steps = f"-{form.pgd_steps}" if attack == "pgd" else f" ({form.apgd_iterations} it.)"
        label = f"{estimator} {attack}{steps}"
        rows[label] = {
            "estimator": estimator,
            "attack": attack,
            "seconds": seconds,
            "seconds_per_image": seconds / form.batch,
            "images": form.batch,
            "peak_memory_gib": peak_memory_gib(device),
            "clean_final": int(result["clean"]["final"].sum()),
            "adversarial_final": int(result["adversarial"]["final"].sum()),
        }
    return {"status": "measured", "size": form.size, "device": str(device), "rows": rows}


# ---- 5. the smoke workflow --------------------------------------------------------------------------------
def smoke_workflow(form: GpuForm, folder: Path, timeout: float) -> dict:
    """The smoke profile end to end with ``device`` set to the form's (a dry run in the reduced
    form), in a copy of the workflow files with a synthetic archive."""
    missing = [tool for tool in ("snakemake", "deqrobust") if not _runnable(tool)]
    if missing:
        return {"status": "skipped", "reason": f"not installed here: {', '.join(missing)} (docs/performance.md)"}
    work = folder / "repo"
    for rel in WORKFLOW_FILES:
        src, dst = ROOT / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"), dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    archive = synthetic_archive(folder / "smoke-cifar.tar.gz", per_batch=60)
    cores = str(max(2, min(8, os.cpu_count() or 2)))
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", "workflow/profiles/default"]
    cmd += ["--cores", cores, "--resources", "gpu=4", "--configfile", SMOKE]
    cmd += ["--config", f"device={form.device}", f"data={{archive: {archive}, allow_md5_mismatch: true}}"]
    if not form.smoke_run:
        cmd.append("-n")
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"snakemake ran past {timeout:.0f} s", "command": _shown(cmd)}
    text = proc.stdout + proc.stderr
    jobs = _job_total(text)
    out = {
        "command": _shown(cmd),
        "dry_run": not form.smoke_run,
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - started,
        "jobs": jobs,
        "tail": text.strip().splitlines()[-5:],
    }
    report = work / "reports" / "smoke" / "report.md"
    out["report_written"] = report.exists()
    ok = proc.returncode == 0 and (report.exists() or not form.smoke_run) and bool(jobs)
    out["status"] = "passed" if ok else "failed"
    if not form.smoke_run and ok:
        out.update(status="skipped", reason="reduced form: a dry run on the CPU (the DAG with device=cpu)")
    return out


def _runnable(tool: str) -> bool:
    if tool == "snakemake":
        return subprocess.run([sys.executable, "-c", "import snakemake"], capture_output=True).returncode == 0
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    return shutil.which(tool, path=path) is not None


def _shown(cmd: list[str]) -> str:
    return " ".join(["python", *cmd[1:]])


def _job_total(text: str) -> int | None:
    lines = text.split("Job stats:", 1)[-1].splitlines()
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


# ---- the check ----------------------------------------------------------------------------------------------
PARTS = ("tests", "parity", "throughput", "evaluation", "projection", "smoke")


def gpu(s: Settings) -> dict:
    """The check in the form of ``s.gpu_form``, within ``s.gpu_deadline_s`` seconds; the report
    so far is written to ``s.gpu_partial_out`` after every part."""
    form = form_of(s.gpu_form)
    started = time.perf_counter()
    report: dict = {"form": asdict(form), "cuda": _cuda(), "parts": {}, "seconds": {}}

    def left() -> float:
        return s.gpu_deadline_s - (time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="deqrobust-gpu-") as tmp:
        folder = Path(tmp)
        for part in PARTS:
            t0 = time.perf_counter()
            if left() < 15:
                report["parts"][part] = {"status": "skipped", "reason": "the check's deadline was reached"}
                continue
            try:
                if part == "tests":
                    result = cuda_tests(timeout=min(180.0, left() - 10))
                elif part == "parity":
                    result = parity(form)
                elif part == "throughput":
                    result = throughput(form, folder / "train")
                elif part == "evaluation":
                    result = evaluation_cell(form, folder / "train")
                elif part == "projection":
                    result = projection.project(
                        report["parts"].get("throughput"), report["parts"].get("evaluation"), form
                    )
                else:
                    result = smoke_workflow(form, folder / "smoke", timeout=left() - 10)
            except Exception as exc:  # a part that breaks is reported, and the next ones run
                result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            report["parts"][part] = result
            report["seconds"][part] = time.perf_counter() - t0
            if s.gpu_partial_out:
                write_json(s.gpu_partial_out, {"format": "deqrobust-gpu-check/1", "gpu": report})
    report["status"] = _overall(report["parts"])
    return report


def _overall(parts: dict) -> str:
    states = [p.get("status", "measured") for p in parts.values()]
    return "failed" if "failed" in states else "passed"


def _cuda() -> dict:
    if not torch.cuda.is_available():
        return {"available": False}
    props = torch.cuda.get_device_properties(0)
    return {
        "available": True,
        "device": props.name,
        "memory_gib": props.total_memory / 2**30,
        "capability": f"{props.major}.{props.minor}",
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }
