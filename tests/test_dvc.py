"""DVC versions the checkpoints, and no DVC command loses work (issue 19; docs/workflow.md,
"DVC versions the checkpoints").

Every Snakemake run records its results folder in the DVC cache (workflow/rules/dvc.smk:
`dvc add --no-relink results/<profile>`, one record per profile, results/<profile>.dvc), and
.dvcignore keeps the state of unfinished jobs out of it. The fast tests check what DVC's own
commands do to such records and to that state; the slow ones run the smoke profile once, with
the workflow's own recording, and follow the four documented flows with a local-directory
remote: push, fresh clone, pull and rebuild; the checkpoints of an earlier commit; `dvc exp
run`; `dvc gc -w`. Nothing of DVC is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import synthetic_batches, write_archive

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
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    "results/.gitignore",
    "data/.gitignore",
]
BIN = str(Path(sys.executable).parent)
RECORD = ["add", "--no-relink"]  # what workflow/rules/dvc.smk runs
UNFINISHED = [  # state of unfinished jobs and this machine's own files: .dvcignore keeps DVC off them
    "models/deq-adv/resume.pt",
    "models/deq-adv/resume-other-config.pt",
    "models/deq-std/finished/0123456789abcdef/summary.json",
    "eval/deq-adv/exact/pgd2/state-final.json.partial/batch-00000.json",
    "logs/train/deq-adv.log",
    "models/deq-adv/.checkpoint.pt.lock",
]


def sh(cwd: Path, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(cwd, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args)


def clone_of_the_workflow(root: Path, profile: str = "smoke") -> Path:
    """The DVC-relevant files of the repository in a fresh git repository (no results, no data)."""
    for rel in TRACKED:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        else:
            shutil.copy2(src, dst)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "profile": profile}))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "clone")
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


def fake_results(root: Path, profile: str) -> Path:
    """Files where a profile's outputs go (DVC only needs files), with the unfinished state beside them."""
    results = root / "results" / profile
    write(results / ".profile", f"{profile}\n".encode())
    for model in ("deq-std", "deq-adv"):
        write(results / "models" / model / "checkpoint.pt", os.urandom(4096))
        write(results / "models" / model / "summary.json", f'{{"model": "{model}"}}'.encode())
    write(results / "eval" / "deq-std" / "exact" / "pgd2" / "state-final.json", b"{}")
    for name in ("table.csv", "report.md", "metrics.json", "figures/residual.png", "notebooks/evaluation_matrix.ipynb"):
        write(root / "reports" / profile / name, b"")  # the stage's outputs (not cached)
    return results


def add_unfinished(results: Path) -> None:
    for rel in UNFINISHED:
        write(results / rel, os.urandom(256))


def recorded_files(root: Path, record: Path) -> dict[str, str]:
    """relpath -> md5 of every file a directory record (<path>.dvc) holds, read from the DVC cache."""
    out = yaml.safe_load(record.read_text())["outs"][0]
    md5 = out["md5"]
    manifest = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert manifest.is_file(), f"{record}: its directory listing {md5} is not in the DVC cache"
    return {e["relpath"]: e["md5"] for e in json.loads(manifest.read_text())}


def in_cache(root: Path, md5: str) -> bool:
    return (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()


# ---- fast: DVC's commands on records as the workflow writes them -------------------------------


def test_results_are_recorded_per_profile_and_never_a_stage_output(tmp_path):
    """A stage output of results/<profile> would be one record for all profiles (a switch would
    meet a folder without one, which DVC deletes); git keeps the records, not the files."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["workflow"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]]
    assert not [o for o in outs if o.startswith("results")], outs
    root = clone_of_the_workflow(tmp_path / "clone")
    results = fake_results(root, "smoke")
    add_unfinished(results)
    ignored = dvc(root, "check-ignore", *(f"results/smoke/{rel}" for rel in UNFINISHED)).stdout.split()
    assert sorted(ignored) == sorted(f"results/smoke/{rel}" for rel in UNFINISHED)
    dvc(root, *RECORD, "results/smoke")
    status = git(root, "status", "--porcelain", "--untracked-files=all").stdout
    assert status.splitlines() == ["?? results/smoke.dvc"], status  # the record, and nothing of the folder
    assert "models/deq-std/checkpoint.pt" in recorded_files(root, root / "results" / "smoke.dvc")


def test_dvc_commands_keep_a_recorded_run_and_its_unfinished_state(tmp_path):
    root = clone_of_the_workflow(tmp_path / "clone")
    results = fake_results(root, "smoke")
    dvc(root, *RECORD, "results/smoke")  # as a run does when it starts, while it runs and when it ends
    git(root, "add", "results/smoke.dvc")
    git(root, "commit", "-qm", "record")
    add_unfinished(results)  # an interrupted job's resume state, a kept training, partial cells, logs
    kept = results / "models" / "deq-std" / "finished" / "0123456789abcdef" / "checkpoint.pt"
    os.link(results / "models" / "deq-std" / "checkpoint.pt", kept)  # as deqrobust.training keeps a training
    before = digest(root / "results")

    dvc(root, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    dvc(root, "push")
    dvc(root, "pull", "--force")
    dvc(root, "checkout", "--force")
    dvc(root, "gc", "--workspace", "--force")
    dvc(root, "exp", "run", "-S", "snakemake_args=-n")  # checks every record out with --force first
    assert digest(root / "results") == before
    assert (results / "models" / "deq-std" / "checkpoint.pt").samefile(kept)  # not even relinked
    assert "results/smoke" not in dvc(root, "status").stdout  # the record is the folder


def test_switching_profiles_keeps_every_profiles_results(tmp_path):
    """`dvc exp run -S profile=smoke` from quick: each profile keeps its own record; a folder
    without one (made before records existed) is no DVC output, so DVC leaves it alone."""
    root = clone_of_the_workflow(tmp_path / "clone", profile="quick")
    for profile in ("quick", "smoke"):
        add_unfinished(fake_results(root, profile))
        dvc(root, *RECORD, f"results/{profile}")
    fake_results(root, "cpu")  # never recorded
    git(root, "add", "results")
    git(root, "commit", "-qm", "records")
    before = digest(root / "results")
    dvc(root, "exp", "run", "-S", "profile=smoke", "-S", "snakemake_args=-n")
    assert digest(root / "results") == before
    dvc(root, "checkout", "--force")
    assert digest(root / "results") == before


# ---- slow: the four documented flows on a real smoke run ----------------------------------------


def job_stats(text: str) -> Counter:
    """The `Job stats` table of a Snakemake run, as rule -> count."""
    counts = Counter()
    if "Job stats:" not in text:
        assert "Nothing to be done" in text, text[-3000:]
        return counts
    for line in text.split("Job stats:", 1)[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def snakemake(root: Path, *args: str) -> str:
    proc = sh(root, sys.executable, "-m", "snakemake", *args, timeout=1200)
    return proc.stdout + proc.stderr


def verdicts(reports: Path) -> dict:
    return json.loads((reports / "metrics.json").read_text())["verdicts"]


REPORT_RULES = {"merge", "figures", "notebook", "report", "all"}  # what a rebuild from pulled results runs
# The adoption of restored results (README): touch every job of a rule that makes a result, so each
# records its settings, and nothing of the data every profile shares.
ADOPT = ["--touch", "--forcerun", "train", "import_checkpoint", "select_exit", "evaluate", "analyze", "trajectory"]
ADOPT += ["--omit-from", "merge"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One plain smoke run (the README's command) in a git repository with a local-directory remote."""
    tmp = tmp_path_factory.mktemp("dvc-flows")
    root = clone_of_the_workflow(tmp / "lab")
    archive = write_archive(tmp / "cifar.tar.gz", synthetic_batches(60, 60, 0))
    args = [
        "--workflow-profile",
        "workflow/profiles/default",
        "--cores",
        "2",
        "--configfile",
        "config/smoke.yaml",
        "--config",
        f"data={{archive: {archive}, allow_md5_mismatch: true}}",
    ]
    dvc(root, "remote", "add", "-d", "store", str(tmp / "remote"))
    log = snakemake(root, *args)
    assert "DVC recorded results/smoke" in log, log[-3000:]
    git(root, "add", ".dvc/config", "results/smoke.dvc")
    git(root, "commit", "-qm", "smoke run")
    return {"root": root, "args": args, "tmp": tmp, "results": digest(root / "results" / "smoke")}


@pytest.mark.slow
def test_a_run_records_every_checkpoint_in_the_cache(lab):
    """Fails when checkpoints stop being cached: every model's checkpoint and what identifies it,
    every cell and analysis, in results/smoke.dvc and in the DVC cache, byte for byte."""
    root = lab["root"]
    recorded = recorded_files(root, root / "results" / "smoke.dvc")
    results = root / "results" / "smoke"
    models = sorted(p.name for p in (results / "models").iterdir())
    assert models == ["deq-adv", "deq-std", "resnet18-adv"]
    for model in models:
        for name in ("checkpoint.pt", "summary.json", "metrics.csv", "snapshots.json"):
            rel = f"models/{model}/{name}"
            assert rel in recorded, f"{rel} is not recorded"
            assert recorded[rel] == hashlib.md5((results / rel).read_bytes()).hexdigest()
    assert {rel for rel in recorded if rel.startswith(("eval/", "analysis/", "early_exit/", "trajectory/"))}
    assert all(in_cache(root, md5) for md5 in recorded.values())
    assert not [rel for rel in recorded if "/finished/" in rel or rel.startswith("logs/") or "resume" in rel]


@pytest.mark.slow
def test_flow1_push_then_a_fresh_clone_pulls_and_rebuilds_without_training(lab):
    root, args = lab["root"], lab["args"]
    dvc(root, "push")
    clone = lab["tmp"] / "laptop"
    sh(lab["tmp"], "git", "clone", "-q", str(root), str(clone))
    assert not (clone / "results" / "smoke").exists()
    dvc(clone, "pull")
    pulled = digest(clone / "results" / "smoke")  # every recorded file, byte for byte
    assert set(pulled) == set(recorded_files(root, root / "results" / "smoke.dvc"))
    assert pulled == {rel: lab["results"][rel] for rel in pulled}
    assert {rel for rel in lab["results"] if rel.endswith("checkpoint.pt") and "/finished/" not in rel} <= set(pulled)
    # DVC restores bytes, not Snakemake's timestamps and records: adopt the pulled results once ...
    data_root = clone / "results" / "smoke" / "data"  # smoke's data.root
    data_times = {p: p.stat().st_mtime_ns for p in data_root.rglob("*") if p.is_file()}
    assert any(p.name == "cifar10-split.json" for p in data_times)  # pulled with the results
    snakemake(clone, *ADOPT, *args)
    assert {p: p.stat().st_mtime_ns for p in data_times} == data_times  # shared by every profile: untouched
    # ... then the README's command rebuilds every table, figure, notebook and report from them.
    rebuild = job_stats(snakemake(clone, *args))
    assert set(rebuild) == REPORT_RULES, rebuild  # no data, training, evaluation or analysis job
    reports, original = clone / "reports" / "smoke", root / "reports" / "smoke"
    assert (reports / "table.csv").read_bytes() == (original / "table.csv").read_bytes()
    assert verdicts(reports) == verdicts(original) and len(verdicts(original)) == 5
    assert (reports / "report.md").read_bytes() == (original / "report.md").read_bytes()  # verdicts, reasons, all
    assert {p.name for p in (reports / "figures").glob("*.png")} == {
        p.name for p in (original / "figures").glob("*.png")
    }
    assert {p.name for p in (reports / "notebooks").glob("*.ipynb")} == {
        p.name for p in (original / "notebooks").glob("*.ipynb")
    }
    # The adoption recorded every job's settings: a later change reruns what it touches, never nothing.
    longer = clone / "longer-analysis.yaml"
    longer.write_text("analysis:\n  budget: 7\n")  # smoke: 6
    changed = job_stats(snakemake(clone, "-n", *args[:6], str(longer), *args[6:]))
    assert {"analyze", "trajectory"} <= set(changed) and "train" not in changed and "evaluate" not in changed


@pytest.mark.slow
def test_flow3_dvc_exp_run_after_a_plain_snakemake_run_loses_no_file(lab):
    root = lab["root"]
    results = root / "results" / "smoke"
    add_unfinished(results)  # what an interrupted job would have left beside the finished ones
    before = digest(results)
    dvc(root, "exp", "run")  # the profile of params.yaml (smoke): Snakemake has nothing to do
    assert digest(results) == before
    dvc(root, "exp", "run", "-S", "profile=smoke")
    assert digest(results) == before
    assert "results/smoke" not in dvc(root, "status").stdout
    for rel in UNFINISHED:  # made up: a later run must not meet them
        (results / rel).unlink()


@pytest.mark.slow
def test_flow4_gc_workspace_keeps_everything_the_workspace_uses(lab):
    root = lab["root"]
    results = root / "results" / "smoke"
    before = digest(results)
    dvc(root, "gc", "--workspace", "--force")
    assert digest(results) == before
    recorded = recorded_files(root, root / "results" / "smoke.dvc")
    assert all(in_cache(root, md5) for md5 in recorded.values())
    aside = lab["tmp"] / "aside"
    shutil.move(results, aside)  # the cache alone brings the folder back
    dvc(root, "checkout", "results/smoke.dvc")
    restored = digest(results)
    assert restored == {rel: h for rel, h in before.items() if rel in recorded}
    shutil.rmtree(results)
    shutil.move(aside, results)


@pytest.mark.slow
def test_flow2_an_earlier_commits_checkpoints_come_back_and_are_reused(lab):
    root, args = lab["root"], lab["args"]
    results = root / "results" / "smoke"
    first = digest(results)
    config = root / "config" / "smoke.yaml"
    text = config.read_text()
    assert "training_overrides: {epochs: 0.5}" in text
    config.write_text(text.replace("training_overrides: {epochs: 0.5}", "training_overrides: {epochs: 0.25}"))
    assert job_stats(snakemake(root, *args))["train"] == 1  # the ResNet retrains
    second = digest(results)
    changed = {rel for rel in first if rel.startswith("models/resnet18-adv/") and second.get(rel) != first[rel]}
    assert "models/resnet18-adv/checkpoint.pt" in changed
    git(root, "commit", "-qam", "ResNet: a quarter epoch")

    git(root, "checkout", "-q", "HEAD~1")
    dvc(root, "checkout")
    back = digest(results)
    for rel in changed:
        assert back[rel] == first[rel], f"{rel} did not come back"
    # Adopt what DVC restored, then the run reuses it: no training, no evaluation.
    snakemake(root, *ADOPT, *args)
    assert set(job_stats(snakemake(root, "-n", *args))) <= REPORT_RULES
    after = digest(results)
    assert {rel: after[rel] for rel in back} == back  # the touch changed no byte
    empty = hashlib.sha256(b"").hexdigest()  # all it adds: an empty log of a job whose log was not restored
    assert all(rel.startswith("logs/") and after[rel] == empty for rel in set(after) - set(back))
