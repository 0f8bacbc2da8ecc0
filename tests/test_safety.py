"""Safe to run: every failure a user can cause says what to do next, and nothing finished is lost.

Each test runs the real command (``python -m deqrobust ...`` or ``snakemake``) and checks its
message, its exit code, that finished files are untouched and that no partial output looks
complete. Disk-full and read-only cases mount a small tmpfs in a user namespace
(``unshare -rm``) and are skipped where the machine does not allow one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import synthetic_batches, write_archive, write_config

import deqrobust
from deqrobust import cli, config, data
from deqrobust.checkpoint import load_checkpoint, save_checkpoint
from deqrobust.joblock import claim, lock_path
from deqrobust.models import build_model

BIN = Path(sys.executable).parent
FAST = {
    "epochs": 1,
    "batch_size": 8,
    "pretrain_iters": 0,
    "pretrain_unroll": 2,
    "eval_batch_size": 10,
    "unroll": {"k": 2},
    "adv": {"steps": 1},
    "select": {"pgd_steps": 1},
    "checkpoint_every_iters": 2,
}


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    """A config with one tiny DEQ on a prepared synthetic dataset (70 training images: 9 iterations)."""
    archive = write_archive(tmp_path / "cifar.tar.gz", synthetic_batches(per_batch=16, n_test=16))
    path = write_config(
        tmp_path / "config.yaml",
        tmp_path / "data",
        archive,
        solver={"budget": 3},
        backward_solver={"budget": 2},
        training=FAST,
        models={"deq": {"arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact"}},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataWarning)
        data.prepare(config.load(path))
    return path


def deqrobust_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "deqrobust", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def train(cfg: Path, out: Path, **kw) -> subprocess.CompletedProcess:
    return deqrobust_cli("train", "-c", cfg, "--model", "deq", "--out", out, **kw)


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the SHA-256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def finished_checkpoint(folder: Path) -> Path:
    """A checkpoint as a finished training writes it (tiny DEQ, untrained weights)."""
    spec = {"name": "deq", "arch": "mdeq", "size": "tiny", "training": "standard", "grad": "exact"}
    torch.manual_seed(0)
    save_checkpoint(folder / "checkpoint.pt", build_model(spec), spec, 1.0, {}, "test")
    return folder / "checkpoint.pt"


def in_process(capsys, *args) -> tuple[int, str]:
    """``deqrobust ARGS`` in this process (as the script runs it): exit code and last line of stderr."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


def consumers(capsys, cfg: Path, checkpoint: Path, out: Path) -> dict[str, tuple[int, str]]:
    """evaluate, select-exit and analyze on ``checkpoint``, each writing under ``out``."""
    return {
        "evaluate": in_process(
            capsys,
            "evaluate",
            "-c",
            cfg,
            "--checkpoint",
            checkpoint,
            "--estimator",
            "exact",
            "--attack",
            "pgd",
            "--state",
            "final",
            "--out",
            out / "cell.json",
        ),
        "select-exit": in_process(
            capsys, "select-exit", "-c", cfg, "--checkpoint", checkpoint, "--out", out / "exit.json"
        ),
        "analyze": in_process(capsys, "analyze", "-c", cfg, "--checkpoint", checkpoint, "--out", out / "analysis.json"),
    }


# ---- the command itself --------------------------------------------------------------------


def test_version_from_the_script_and_python_m():
    expected = f"deqrobust {deqrobust.__version__}"
    assert metadata.version("deqrobust") == deqrobust.__version__
    for cmd in ([str(BIN / "deqrobust"), "--version"], [sys.executable, "-m", "deqrobust", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr


# ---- partial training ----------------------------------------------------------------------


def test_killed_training_leaves_no_checkpoint_and_every_consumer_says_how_to_finish(setup, tmp_path, capsys):
    out = tmp_path / "models" / "deq"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    victim = subprocess.Popen(
        [sys.executable, "-m", "deqrobust", "train", "-c", str(setup), "--model", "deq", "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "resume.pt").is_file() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "training ended before it could be killed: " + victim.communicate()[1][-2000:]
    victim.kill()
    victim.wait()
    assert not (out / "checkpoint.pt").exists() and not (out / "summary.json").exists()

    # An older version wrote checkpoint.pt during training: beside resume.pt it is refused too.
    for legacy in (False, True):
        if legacy:
            finished_checkpoint(out)
        for name, (code, message) in consumers(capsys, setup, out / "checkpoint.pt", tmp_path / "consumers").items():
            assert code == 2, (name, message)
            assert "is partial" in message and "has not finished" in message, (name, message)
            assert f"deqrobust train -c CONFIG --model deq --out {out}" in message, (name, message)
        assert not (tmp_path / "consumers").exists() or not any((tmp_path / "consumers").iterdir())

    finish = train(setup, out)  # the step the message gives
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert not (out / "resume.pt").exists()
    model, meta = load_checkpoint(out / "checkpoint.pt")
    assert meta["epoch"] > 0 and meta["spec"]["name"] == "deq"


@pytest.mark.parametrize("content", [b"", b"not a torch file" * 64], ids=["empty", "garbage"])
def test_corrupt_resume_says_which_file_and_that_deleting_it_restarts(setup, tmp_path, content):
    out = tmp_path / "models" / "deq"
    out.mkdir(parents=True)
    (out / "resume.pt").write_bytes(content)
    other = finished_checkpoint(tmp_path / "models" / "other")
    before = digest(tmp_path / "models")
    proc = train(setup, out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert str(out / "resume.pt") in message and "delete it to restart this training from scratch" in message
    assert ("empty (0 bytes" in message) == (content == b"")
    assert digest(tmp_path / "models") == before and other.is_file()  # nothing deleted, no checkpoint made


@pytest.mark.parametrize("kind", ["empty", "directory", "missing"])
def test_unusable_checkpoint_messages_say_what_it_is(setup, tmp_path, capsys, kind):
    folder = tmp_path / "models" / "deq"
    folder.mkdir(parents=True)
    path = folder / "checkpoint.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        finished_checkpoint(folder)
        path = folder
    code, message = in_process(
        capsys,
        "evaluate",
        "-c",
        setup,
        "--checkpoint",
        path,
        "--estimator",
        "exact",
        "--attack",
        "pgd",
        "--state",
        "final",
        "--out",
        tmp_path / "consumers" / "cell.json",
    )
    assert code == 2
    expected = {
        "empty": "is empty (0 bytes",
        "directory": "is a directory; valid: the checkpoint.pt file of a model (it holds one: give that file)",
        "missing": "does not exist; train the model first",
    }[kind]
    assert expected in message and not message.endswith("()"), message
    assert not (tmp_path / "consumers" / "cell.json").exists()


def test_directory_given_as_the_archive(setup, tmp_path, capsys):
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(tmp_path / "cifar.tar.gz", folder / "cifar-10-python.tar.gz")
    cfg = write_config(tmp_path / "fresh.yaml", tmp_path / "fresh-data", folder)
    code, message = in_process(capsys, "data", "-c", cfg)
    assert code == 2
    assert f"archive {folder} (data.archive / --archive) is a directory" in message, message
    assert "it holds cifar-10-python.tar.gz" in message and str(folder / "cifar-10-python.tar.gz") in message
    assert not (tmp_path / "fresh-data" / data.FOLDER).exists()


# ---- one writer per output -----------------------------------------------------------------


def test_a_second_writer_of_the_same_output_is_refused(setup, tmp_path):
    out = tmp_path / "models" / "deq"
    with claim(out):
        proc = train(setup, out)
        assert lock_path(out).is_file()
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert f"{out} is being written by another process (pid {os.getpid()}" in message, message
    assert f"kill {os.getpid()}" in message and "then rerun" in message
    assert not out.exists()  # the refused job wrote nothing
    assert not lock_path(out).exists()  # released


HOLD = """
import sys, time
from pathlib import Path
from deqrobust.joblock import claim
with claim(sys.argv[1]):
    Path("started").touch()
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog needs /proc (Linux)")
def test_a_job_stops_when_the_snakemake_that_started_it_is_killed(tmp_path):
    (tmp_path / "hold.py").write_text(HOLD)
    (tmp_path / "Snakefile").write_text(
        f'rule hold:\n    output: "held.txt"\n    shell: "{sys.executable} hold.py {{output}}"\n'
    )
    log = (tmp_path / "snakemake.log").open("w")
    smk = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "started").exists(), (tmp_path / "snakemake.log").read_text()[-2000:]
    job = json.loads(lock_path(tmp_path / "held.txt").read_text())["pid"]
    smk.kill()  # kill -9 of snakemake alone: its job is orphaned
    smk.wait()
    deadline = time.monotonic() + 30
    while _alive(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    log.close()
    assert not _alive(job), "the orphaned job kept running"
    assert not lock_path(tmp_path / "held.txt").exists()
    assert "the snakemake process that started this job" in (tmp_path / "snakemake.log").read_text()
    with claim(tmp_path / "held.txt"):  # and the output is free for the rerun
        pass


# ---- refused writes: disk full, read-only --------------------------------------------------


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /tmp"]  # in the namespace only
    return subprocess.run(probe, capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount(), reason="no user namespace with tmpfs mounts on this machine")


def _in_small_disk(mount: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) in a user namespace where ``mount`` is a 64 KiB tmpfs."""
    mount.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=64k tmpfs "{mount}" && {script}'],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@needs_mounts
def test_disk_full_names_the_path_and_keeps_finished_files(setup, tmp_path):
    disk = tmp_path / "disk"
    out = disk / "models" / "deq"
    cmd = f'{sys.executable} -m deqrobust train -c "{setup}" --model deq --out "{out}"'
    proc = _in_small_disk(
        disk, f'echo finished > "{disk}/finished.txt" && {cmd}; echo "rc=$?"; cat "{disk}/finished.txt"; ls -A "{out}"'
    )
    lines = proc.stdout.splitlines()
    assert "rc=2" in lines, proc.stdout + proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert f"cannot write {out}/" in message and "(No space left on device)" in message, message
    assert "free space on that disk" in message and "rerun the same command" in message
    listing = lines[lines.index("rc=2") + 1 :]
    assert listing[0] == "finished"  # a finished file is intact
    assert "checkpoint.pt" not in listing and not any(name.endswith(".tmp") for name in listing), listing


@needs_mounts
def test_read_only_results_name_the_output(setup, tmp_path):
    disk = tmp_path / "disk"
    out = disk / "models" / "deq"
    cmd = f'{sys.executable} -m deqrobust train -c "{setup}" --model deq --out "{out}"'
    proc = _in_small_disk(
        disk,
        f'mkdir -p "{out}" && echo finished > "{out}/metrics.csv" && '
        f'mount -o remount,ro "{disk}" && {cmd}; echo "rc=$?"; cat "{out}/metrics.csv"',
    )
    assert proc.stdout.splitlines()[-2:] == ["rc=2", "finished"], proc.stdout + proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert f"cannot write {out} (Read-only file system)" in message, message
    assert "remount it writable" in message and "results" in message


# ---- the workflow --------------------------------------------------------------------------


def test_use_conda_without_conda_gives_both_routes_in_one_line(tmp_path):
    shutil.copy(Path(__file__).resolve().parents[1] / "Snakefile", tmp_path / "Snakefile")
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "conda").exists()]
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), *path])}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--use-conda"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    line = next(line for line in text.splitlines() if "--use-conda" in line)
    assert "install it" in line and "drop --use-conda" in line and "bash .ci/setup" in line, line
    assert "Error running conda info" not in text


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_unwritable_results_folder_names_the_output(setup, tmp_path):
    models = tmp_path / "models"
    finished = finished_checkpoint(models / "other")
    models.chmod(0o555)
    try:
        proc = train(setup, models / "deq")
    finally:
        models.chmod(0o755)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert f"cannot write {models / 'deq'} (Permission denied)" in message and "chmod u+w" in message, message
    assert finished.is_file() and not (models / "deq").exists()
