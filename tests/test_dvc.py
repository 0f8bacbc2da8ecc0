"""DVC never deletes work: every DVC command a user is told to type keeps every file of results/<profile>.

A clone of the workflow files gets results written outside DVC (as plain ``snakemake`` writes
them) and a DVC record of an older version of them; then push, pull, checkout, status, gc and
the documented profile switch (``dvc exp run -S profile=smoke``, with a dry-run Snakemake so
that it stays cheap) run, and every file must keep its bytes. The end-to-end test in
test_workflow.py repeats the profile switch and ``dvc repro`` on a real smoke run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TRACKED = [
    "Snakefile",
    "workflow",
    "config",
    "notebooks",
    "src/deqrobust",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]
BIN = str(Path(sys.executable).parent)


def sh(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def clone_of_the_workflow(root: Path) -> Path:
    """The DVC-relevant files of the repository in a fresh git repository (no results, no data)."""
    for rel in TRACKED:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        else:
            shutil.copy2(src, dst)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "test"],
        ["git", "config", "user.email", "test@example.org"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "clone"],
    ):
        sh(root, *cmd)
    return root


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def smoke_outputs(root: Path, tag: bytes) -> None:
    """Files where the smoke profile's outputs go (DVC only needs them to exist)."""
    results, reports = root / "results" / "smoke", root / "reports" / "smoke"
    write(results / "models" / "deq-std" / "checkpoint.pt", os.urandom(4096) + tag)
    write(results / "models" / "deq-std" / "summary.json", b'{"model": "deq-std"}' + tag)
    write(results / "eval" / "deq-std" / "exact" / "pgd2" / "state-final.json", b"{}" + tag)
    for name in ("table.csv", "report.md", "metrics.json", "figures/residual.png", "notebooks/evaluation_matrix.ipynb"):
        write(reports / name, tag)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    root = clone_of_the_workflow(tmp_path / "clone")
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "profile": "smoke"}))
    sh(root, "git", "commit", "-qam", "smoke profile")
    return root


def test_dvc_commands_keep_results_made_outside_dvc(clone, tmp_path):
    smoke_outputs(clone, b"recorded")
    dvc(clone, "commit", "--force")  # DVC records this version ...
    assert (clone / "dvc.lock").is_file()
    # ... then plain snakemake retrains a model, finishes another and leaves one interrupted.
    write(clone / "results/smoke/models/deq-std/checkpoint.pt", os.urandom(4096) + b"retrained")
    write(clone / "results/smoke/models/resnet18-adv/checkpoint.pt", os.urandom(4096) + b"new")
    write(clone / "results/smoke/models/deq-adv/resume.pt", os.urandom(4096) + b"interrupted")
    before = digest(clone / "results")

    dvc(clone, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    dvc(clone, "push")
    dvc(clone, "pull", "--force")
    dvc(clone, "checkout", "--force")
    dvc(clone, "gc", "--workspace", "--force")
    status = dvc(clone, "status").stdout
    assert "results/smoke" in status  # DVC sees the change (it records results) ...
    assert digest(clone / "results") == before  # ... and changed nothing

    # The documented profile switch (a dry-run snakemake keeps it cheap): DVC checks out
    # with --force before running; results/smoke must come through it untouched.
    dvc(clone, "exp", "run", "-S", "profile=smoke", "-S", "snakemake_args=-n")
    assert digest(clone / "results") == before
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    recorded = {o["path"]: o for o in lock["stages"]["workflow"]["outs"]}
    assert recorded["results/smoke"]["nfiles"] == len(before)  # adopted: the record now holds every file


def test_switching_to_a_profile_never_recorded_keeps_its_results(clone):
    """What deleted results/smoke before: no hash recorded for it, so DVC 'won't create' it."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    (clone / "params.yaml").write_text(yaml.safe_dump({**params, "profile": "quick"}))
    sh(clone, "git", "commit", "-qam", "quick profile")
    smoke_outputs(clone, b"plain snakemake")
    before = digest(clone / "results")
    dvc(clone, "exp", "run", "-S", "profile=smoke", "-S", "snakemake_args=-n")
    assert digest(clone / "results") == before
