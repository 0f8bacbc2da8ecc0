"""The Snakemake workflow and the DVC stage around it.

Every test works on a copy of the workflow files in a temporary folder (no results, no
data), so it neither sees nor touches the results of a real run in the repository.
The end-to-end test runs the smoke profile on a synthetic CIFAR-10 archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = {
    "paper": "config/config.yaml",
    "quick": "config/quick.yaml",
    "cpu": "config/cpu.yaml",
    "smoke": "config/smoke.yaml",
}
# What the workflow needs, relative to the repository root.
WORKFLOW_FILES = [
    "Snakefile",
    "workflow",
    "config",
    "notebooks",
    "src/deqrobust/config.schema.yaml",
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
]
BIN = str(Path(sys.executable).parent)  # deqrobust, jupytext, dvc of this environment


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def snakemake(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd, timeout)


def output_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def job_stats(text: str) -> Counter:
    """The `Job stats` table of a Snakemake run or dry run, as rule -> count."""
    block = text.split("Job stats:", 1)
    if len(block) < 2:
        return Counter()
    counts = Counter()
    for line in block[1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def planned_outputs(text: str) -> set[str]:
    """Every output file named by the jobs of a dry run."""
    files = set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("output:"):
            files.update(p.strip() for p in line[len("output:") :].split(","))
    return files


def finished_outputs(log: str) -> set[str]:
    """Outputs of the jobs a Snakemake log reports as finished ("Finished jobid: N")."""
    outputs, jobid, current = {}, None, []
    for line in log.splitlines():
        line = line.strip()
        if re.match(r"(local)?rule \S+:$", line):
            jobid, current = None, []
        elif line.startswith("output:"):
            current = [p.strip() for p in line[len("output:") :].split(",")]
        elif line.startswith("jobid:"):
            jobid = int(line.split()[1])
            outputs[jobid] = current
    done = {int(m) for m in re.findall(r"Finished jobid: (\d+)", log)}
    return {f for j in done for f in outputs.get(j, [])}


def expected_jobs(cfg: dict, notebooks: int) -> Counter:
    """The jobs of a whole run, derived from the config alone (not from the workflow code)."""
    instances = {
        f"{m}.s{seed}" if "seeds" in spec else m: m  # one per seed -> its model
        for m, spec in cfg["models"].items()
        for seed in spec.get("seeds", [None])
    }
    models = list(instances)
    deqs = [i for i, m in instances.items() if cfg["models"][m]["arch"] == "mdeq"]
    baselines = [i for i in models if i not in deqs]
    ev = cfg.get("evaluation", {})
    couplings = [cfg.get(key, {}).get("coupling", "sample") for key in ("solver", "backward_solver")]

    def setting(group):  # a group's coupling (both solvers) and batch, None where they are the profile's
        coupling = group.get("coupling", couplings[0])
        size = group.get("batch_size", ev["batch_size"])
        return None if [coupling, coupling, size] == [*couplings, ev["batch_size"]] else (coupling, size)

    deq_cells = {
        (i, e, a, str(s), setting(g))
        for i in deqs
        for g in ev.get("cells", [])
        if instances[i] in g.get("models", [instances[i]])  # a group with models: theirs only
        for e in g["estimators"]
        for a in g["attacks"]
        for s in g["states"]
    }
    return Counter(
        {
            "data": 1,
            "train": len(models),
            "select_exit": len(deqs),
            "analyze": len(deqs),
            "trajectory": len(deqs),  # every DEQ of a profile is trained (an import profile is tested apart)
            "evaluate": len(deq_cells) + len(baselines) * len(ev.get("baseline_attacks", [])),
            "merge": 1,
            "figures": 1,
            "report": 1,
            "notebook": notebooks,
            "all": 1,
        }
    )


def load(profile: str) -> dict:
    return yaml.safe_load((REPO / PROFILES[profile]).read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow (no results, no data, no .snakemake) to run Snakemake in."""
    root = tmp_path / "repo"
    for rel in WORKFLOW_FILES:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        elif src.exists():
            shutil.copy2(src, dst)
    return root


def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


# ---- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_config_rejects_wrong_key(profile, workdir):
    cfg = load(profile)
    cfg["training"]["epochz"] = 3
    bad = write_yaml(workdir / "config" / "bad.yaml", cfg)
    proc = snakemake(workdir, "-n", "--configfile", str(bad))
    text = output_of(proc)
    assert proc.returncode != 0
    assert "epochz" in text and "training" in text, text[-2000:]
    assert "Job stats" not in text


@pytest.mark.parametrize("profile", PROFILES)
def test_config_rejects_wrong_value(profile, workdir):
    cfg = load(profile)
    first = next(iter(cfg["models"]))
    cfg["models"][first]["training"] = "sgd"
    bad = write_yaml(workdir / "config" / "bad.yaml", cfg)
    proc = snakemake(workdir, "-n", "--configfile", str(bad))
    text = output_of(proc)
    assert proc.returncode != 0
    assert "'sgd' is not one of" in text and first in text and "training" in text, text[-2000:]


@pytest.mark.parametrize("profile", PROFILES)
def test_config_rejects_unknown_attack_parameter(profile, workdir):
    """Attack and estimator specs go through the library's builders before any job runs."""
    cfg = load(profile)
    name = next(iter(cfg["evaluation"]["attacks"]))
    cfg["evaluation"]["attacks"][name]["stepz"] = 3
    bad = write_yaml(workdir / "config" / "bad.yaml", cfg)
    proc = snakemake(workdir, "-n", "--configfile", str(bad))
    text = output_of(proc)
    assert proc.returncode != 0
    assert f"evaluation.attacks.{name}" in text and "stepz" in text, text[-2000:]


def test_config_rejects_cell_naming_an_undefined_attack(workdir):
    cfg = load("smoke")
    cfg["evaluation"]["cells"][0]["attacks"].append("pgd1000")
    bad = write_yaml(workdir / "config" / "bad.yaml", cfg)
    text = output_of(snakemake(workdir, "-n", "--configfile", str(bad)))
    assert "evaluation.cells[0].attacks" in text and "pgd1000" in text, text[-2000:]


# ---- the DAG --------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_dry_run_lists_the_whole_matrix(profile, workdir):
    args = ["-n", "--configfile", PROFILES[profile]]
    if profile == "paper":
        args += ["--config", "require_gpu=False"]  # planning needs no GPU; the run does
    proc = snakemake(workdir, *args)
    assert proc.returncode == 0, output_of(proc)[-3000:]
    notebooks = len(list((workdir / "notebooks").glob("*.py")))
    assert job_stats(output_of(proc)) == expected_jobs(load(profile), notebooks)


def test_a_profile_without_a_solver_budget_plans_with_the_default(workdir):
    raw = load("smoke")
    del raw["solver"]["budget"]
    path = write_yaml(workdir / "config" / "no-budget.yaml", {**raw, "results": "results/no-budget"})
    proc = snakemake(workdir, "-n", "-p", "--configfile", str(path))
    assert proc.returncode == 0, output_of(proc)[-3000:]
    assert "KeyError" not in output_of(proc) and "deqrobust evaluate" in output_of(proc)


def test_paper_matrix_size():
    """The paper's matrix: 8 DEQs x (4 x 3 final-state + 7 x 2 x 8 intermediate + 3 x 2 ensemble) cells
    + 2 x 2 baseline cells + the 4 PGD-AT DEQs' key cells under batch coupling (3 final-state + 8 states)."""
    assert expected_jobs(load("paper"), 0)["evaluate"] == 8 * (4 * 3 + 7 * 2 * 8 + 3 * 2) + 2 * 2 + 4 * (3 + 8)


def test_cpu_matrix_gives_each_model_its_groups(workdir):
    """The cpu profile: three seeds of each DEQ; the final-state gradients (PGD-10) on every DEQ,
    the rest of the matrix on each seed of the PGD-AT DEQ only (a cell group's `models`), and its
    key cells also under batch coupling at batch 96: 3 x (17 + 11) + 3 x 3 DEQ cells + 2 baseline;
    a trajectory of every DEQ."""
    proc = snakemake(workdir, "-n", "--configfile", PROFILES["cpu"])
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    assert job_stats(text)["evaluate"] == 3 * (3 + 2 + 8 + 2 + 2 + 3 + 8) + 3 * 3 + 2 == 95
    assert job_stats(text)["trajectory"] == 6
    cells = {o.removeprefix("results/cpu/eval/") for o in planned_outputs(text) if o.startswith("results/cpu/eval/")}
    per_model = {
        m: {c.split("/", 1)[1] for c in cells if c.startswith(m + "/")}
        for m in ("deq-std.s0", "deq-std.s2", "deq-adv.s0", "deq-adv.s1", "deq-adv.s2", "resnet18-w8-adv")
    }
    assert (
        per_model["deq-std.s0"]
        == per_model["deq-std.s2"]
        == {f"{e}/pgd10/state-final.json" for e in ("exact", "unroll", "solver_autograd")}
    )
    assert per_model["deq-adv.s0"] == per_model["deq-adv.s1"] == per_model["deq-adv.s2"] > per_model["deq-std.s0"]
    assert len(per_model["deq-adv.s0"]) == 28 and "intermediate/pgd10/state-8.json" in per_model["deq-adv.s0"]
    coupled = {c for c in per_model["deq-adv.s0"] if ".batch96." in c}
    assert coupled == {f"{e}/pgd10/state-final.batch96.json" for e in ("exact", "unroll", "solver_autograd")} | {
        f"intermediate/pgd10/state-{n}.batch96.json" for n in range(1, 9)
    }
    assert {c.replace(".batch96", "") for c in coupled} <= per_model["deq-adv.s0"]  # each beside its per-sample cell
    assert per_model["resnet18-w8-adv"] == {"autograd/pgd10/state-final.json", "autograd/apgd-ce/state-final.json"}


def test_a_results_folder_belongs_to_one_profile(workdir):
    """A second profile whose `results:` names another profile's folder is refused before any
    job, naming both; the marker of the first (written when its run started) or, for a folder made
    before markers, its models' summary.json says whose it is."""
    other = load("smoke")
    other["profile"] = "mine"
    path = write_yaml(workdir / "config" / "mine.yaml", other)
    folder = workdir / "results" / "smoke"
    (folder / "models" / "deq-std").mkdir(parents=True)
    (folder / "models" / "deq-std" / "summary.json").write_text('{"profile": "smoke"}')
    proc = snakemake(workdir, "-n", "--configfile", str(path))
    text = output_of(proc)
    assert proc.returncode != 0
    assert (
        "results folder results/smoke belongs to profile 'smoke' (results/smoke/models/deq-std/summary.json); "
        "this run is profile 'mine'"
    ) in text, text[-2000:]
    assert "--config results=results/mine" in text and "Traceback" not in text
    (folder / ".profile").write_text("smoke\n")
    assert "belongs to profile 'smoke' (results/smoke/.profile)" in output_of(
        snakemake(workdir, "-n", "--configfile", str(path))
    )
    assert snakemake(workdir, "-n", "--configfile", str(path), "--config", "results=results/mine").returncode == 0


def test_dry_run_with_seeds_plans_one_instance_per_seed(workdir):
    """`seeds` trains and evaluates one instance per seed, <model>.s<seed>, each job run with its
    seed; a model without seeds keeps its name, paths and commands."""
    cfg = load("smoke")
    cfg["models"]["deq-adv"]["seeds"] = [0, 1]
    seeded = write_yaml(workdir / "config" / "seeds.yaml", cfg)
    proc = snakemake(workdir, "-n", "-p", "--configfile", str(seeded))
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    notebooks = len(list((workdir / "notebooks").glob("*.py")))
    jobs = expected_jobs(cfg, notebooks)
    assert job_stats(text) == jobs and jobs["train"] == 4 and jobs["select_exit"] == 3
    outputs = planned_outputs(text)
    for model in ("deq-std", "deq-adv.s0", "deq-adv.s1", "resnet18-adv"):
        assert f"results/smoke/models/{model}/checkpoint.pt" in outputs
    assert not any("/deq-adv/" in o or o.endswith("/deq-adv.json") for o in outputs)
    assert {
        "results/smoke/early_exit/deq-adv.s1.json",
        "results/smoke/analysis/deq-adv.s0.json",
        "results/smoke/eval/deq-adv.s1/solver_autograd/pgd2/state-ensemble.json",
    } <= outputs
    commands = [line for line in text.splitlines() if re.match(r"\s*(Shell command: )?deqrobust ", line)]
    for line in commands:
        model = re.search(r"(?:--model |models/)([^/ ]+)", line)
        if model is None:  # merge, figures, report: no instance
            assert "--set seed=" not in line, line
            continue
        expected = " --set seed=1 " if model.group(1) == "deq-adv.s1" else None
        assert (expected in line) if expected else ("--set seed=" not in line), line
    # the same config without seeds: the names and commands of today
    plain = snakemake(workdir, "-n", "-p", "--configfile", PROFILES["smoke"])
    assert "deq-adv.s" not in output_of(plain) and "results/smoke/models/deq-adv/checkpoint.pt" in output_of(plain)


def test_instance_names_may_not_collide(workdir):
    cfg = load("smoke")
    cfg["models"]["deq-adv"]["seeds"] = [0, 1]
    cfg["models"]["deq-adv.s1"] = dict(cfg["models"]["deq-std"])
    bad = write_yaml(workdir / "config" / "bad.yaml", cfg)
    text = output_of(snakemake(workdir, "-n", "--configfile", str(bad)))
    assert "models.deq-adv.seeds: instance 'deq-adv.s1' has the name of another model" in text, text[-2000:]


def test_paper_dry_run_needs_no_gpu(workdir):
    """A dry run plans the paper on any machine (e.g. a SLURM login node)."""
    proc = snakemake(workdir, "-n")
    assert proc.returncode == 0, output_of(proc)[-3000:]
    assert job_stats(output_of(proc))["evaluate"] == expected_jobs(load("paper"), 0)["evaluate"]


def test_slurm_profile_is_accepted(workdir):
    proc = snakemake(workdir, "-n", "--workflow-profile", "workflow/profiles/slurm")
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    assert "workflow/profiles/slurm" in text
    assert "slurm_partition=gpu" in text and "gpu=1" in text  # GPU rules ask SLURM for a GPU


def test_default_profile_is_accepted(workdir):
    proc = snakemake(
        workdir, "-n", "--workflow-profile", "workflow/profiles/default", "--configfile", PROFILES["smoke"]
    )
    assert proc.returncode == 0, output_of(proc)[-3000:]


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_is_clean(profile, workdir):
    proc = snakemake(workdir, "--lint", "--configfile", PROFILES[profile])
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    assert "Lints for" not in text, text[-3000:]


def test_command_line_overrides_reach_the_cli(workdir):
    """Every CLI call gets the config files and the raw --config entries, which the library
    reads as Snakemake's config was built: same files, same overrides, same loader."""
    write_yaml(workdir / "config" / "extra.yaml", {"training": {"epochs": 2}})
    overrides = ["data={archive: /tmp/c.tar.gz, allow_md5_mismatch: true}", "training={lr: 1e-4}"]
    proc = snakemake(
        workdir, "-n", "-p", "--configfile", PROFILES["smoke"], "config/extra.yaml", "--config", *overrides
    )
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    commands = [line for line in text.splitlines() if re.match(r"\s*(Shell command: )?deqrobust ", line)]
    expected = (
        "-c config/smoke.yaml -c config/extra.yaml --set 'data={archive: /tmp/c.tar.gz, allow_md5_mismatch: "
        "true}' --set 'training={lr: 1e-4}' --set threads=1"
    )
    assert commands and all(expected in c for c in commands), commands[:2]
    from deqrobust import config

    args = shlex.split(expected)
    cfg = config.load([workdir / a for a in args[1:4:2]], args[5:8:2])
    assert cfg["data"]["archive"] == "/tmp/c.tar.gz" and cfg["data"]["allow_md5_mismatch"] is True
    assert cfg["training"]["lr"] == 1e-4 and cfg["training"]["epochs"] == 2 and cfg["threads"] == 1


def test_snakefile_imports_the_clone_when_the_package_is_not_installed(workdir):
    """Without an installed deqrobust (e.g. snakemake in a base env with --use-conda) the
    Snakefile imports this clone's src/; the config core never imports torch."""
    import deqrobust

    shutil.copytree(
        Path(deqrobust.__file__).parent,
        workdir / "src" / "deqrobust",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    installed = str(Path(deqrobust.__file__).parents[1])
    code = (
        f"import sys; sys.path = [p for p in sys.path if p != {installed!r}]\n"
        "import importlib.util; assert importlib.util.find_spec('deqrobust') is None\n"
        "sys.argv = ['snakemake', '-n', '--configfile', 'config/smoke.yaml']\n"
        "from snakemake.cli import main\n"
        "try:\n    main()\nexcept SystemExit as end:\n"
        "    import deqrobust; print('RESULT', end.code, deqrobust.__file__, 'torch' in sys.modules)"
    )
    proc = run([sys.executable, "-c", code], workdir)
    result = [line for line in output_of(proc).splitlines() if line.startswith("RESULT")]
    assert result == [f"RESULT 0 {workdir / 'src' / 'deqrobust' / '__init__.py'} False"], output_of(proc)[-3000:]


def deqrobust(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(Path(BIN) / "deqrobust"), *args], cwd)


def _edit_first(section: str, key: str, value, arch: str | None = None):
    """An edit of the smoke profile: ``key`` of the first entry of ``section`` (of that arch)."""

    def edit(cfg):
        entries = cfg[section] if section == "models" else cfg["evaluation"][section]
        name = next(n for n, e in entries.items() if arch is None or e.get("arch") == arch)
        entries[name][key] = value

    return edit


# Each bad value, and what the message says about it (the key, the value, what is valid).
BAD_VALUES = {
    "negative num_examples": (
        lambda c: c["evaluation"].update(num_examples=-5),
        "evaluation.num_examples: -5 is less than the minimum of 1",
    ),
    "unknown model size": (
        _edit_first("models", "size", "huge", arch="mdeq"),
        "is not an MDEQ size; valid sizes: mini, tiny, small, large, xl",
    ),
    "attacked state outside the grammar": (
        lambda c: c["evaluation"]["cells"][0].update(states=["final", 99]),
        "evaluation.cells[0].states: state 99 is not valid for a solver budget",
    ),
    "eps above 255": (_edit_first("attacks", "eps_255", 1000), "eps_255 must be a number in (0, 255], got 1000"),
    "learning rate not a number": (
        lambda c: c["training"].update(lr=float("nan")),
        "training.lr: nan is not a finite number",
    ),
    "unknown estimator parameter": (_edit_first("estimators", "lambda", 0.5), "unknown parameter 'lambda'"),
    "bad training override": (
        _edit_first("models", "training_overrides", {"epochz": 1}),
        "training_overrides: Additional properties are not allowed ('epochz' was unexpected)",
    ),
    "cell group of an unknown model": (
        lambda c: c["evaluation"]["cells"][0].update(models=["deq-nope"]),
        "evaluation.cells[0].models: unknown model 'deq-nope'; models of this config:",
    ),
    "cell group of a baseline": (
        lambda c: c["evaluation"]["cells"][0].update(models=["resnet18-adv"]),
        "evaluation.cells[0].models: 'resnet18-adv' is not a DEQ; baselines are attacked "
        "with evaluation.baseline_attacks",
    ),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_config_errors_stop_the_workflow_with_the_cli_message(case, workdir):
    """`snakemake -n` refuses before any job, with exactly the message the CLI gives."""
    edit, expected = BAD_VALUES[case]
    cfg = load("smoke")
    edit(cfg)
    write_yaml(workdir / "config" / "bad.yaml", cfg)
    proc = snakemake(workdir, "-n", "--configfile", "config/bad.yaml")
    text = output_of(proc)
    assert proc.returncode != 0 and "Job stats" not in text, text[-2000:]
    cli = deqrobust(workdir, "data", "-c", "config/bad.yaml")
    assert cli.returncode == 2, output_of(cli)[-2000:]
    message = cli.stderr.split("deqrobust data: error: ", 1)[1].strip()
    assert expected in message, message
    assert message in text, text[-2000:]


def test_override_errors_stop_the_workflow_with_the_cli_message(workdir):
    override = "evaluation={num_examples: -5, batch_size: 1e1}"
    proc = snakemake(workdir, "-n", "--configfile", PROFILES["smoke"], "--config", override)
    text = output_of(proc)
    assert proc.returncode != 0 and "Job stats" not in text
    cli = deqrobust(workdir, "data", "-c", PROFILES["smoke"], "--set", override)
    message = cli.stderr.split("error: ", 1)[1].strip()
    assert message.startswith(f"invalid config ({PROFILES['smoke']}, {override}):") and message in text
    assert message.splitlines()[1:] == ["  evaluation.num_examples: -5 is less than the minimum of 1"]  # 1e1 is 10


def test_references_of_early_exit_are_checked_before_any_job(workdir):
    cfg = load("smoke")
    cfg["evaluation"]["early_exit"]["estimator"] = "nope"
    bad = write_yaml(workdir / "config" / "bad.yaml", cfg)
    text = output_of(snakemake(workdir, "-n", "--configfile", str(bad)))
    assert "evaluation.early_exit.estimator: unknown estimator 'nope'; defined in evaluation.estimators:" in text
    assert "Job stats" not in text


@pytest.mark.skipif(
    bool(shutil.which("nvidia-smi")), reason="a GPU driver is present: the no-GPU path is not testable here"
)
def test_paper_without_gpu_fails_fast(workdir):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip(
            "CUDA is available: this checks the no-GPU fail-fast; on a GPU machine run the paper dry run instead "
            "(snakemake -n)"
        )
    start = time.monotonic()
    proc = snakemake(workdir, "--cores", "1", timeout=300)
    text = output_of(proc)
    assert proc.returncode != 0
    assert "require_gpu" in text and "config/quick.yaml" in text, text[-3000:]
    assert not (workdir / "results" / "paper" / "logs").exists()  # no job started
    assert time.monotonic() - start < 120


# ---- DVC ------------------------------------------------------------------------------------


def _git_init(root: Path) -> None:
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def test_dvc_repro_dry_on_a_fresh_clone(workdir):
    _git_init(workdir)
    proc = run([sys.executable, "-m", "dvc", "repro", "--dry", "--allow-missing"], workdir)
    text = output_of(proc)
    assert proc.returncode == 0, text
    profile = yaml.safe_load((workdir / "params.yaml").read_text())["profile"]
    assert f"snakemake --cores 2 --configfile config/{profile}.yaml" in text


def test_dvc_stage_follows_the_profile_param(workdir):
    _git_init(workdir)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    write_yaml(workdir / "params.yaml", {**params, "profile": "smoke"})
    proc = run([sys.executable, "-m", "dvc", "repro", "--dry", "--allow-missing"], workdir)
    text = output_of(proc)
    assert proc.returncode == 0, text
    assert "--configfile config/smoke.yaml" in text
    stage = run([sys.executable, "-m", "dvc", "stage", "list", "--all"], workdir)
    assert "results/smoke" in output_of(stage) or stage.returncode == 0


# ---- end to end -----------------------------------------------------------------------------

SMOKE_ARCHIVE_SIZE = {"per_batch": 60, "n_test": 60}  # 300 training images, 60 test images


def _mtimes(root: Path) -> dict[str, float]:
    """Finished outputs (checkpoints, cells, early exits, analyses) and their mtimes."""
    found = {}
    for pattern in (
        "results/smoke/models/*/checkpoint.pt",
        "results/smoke/eval/**/state-*.json",
        "results/smoke/early_exit/*.json",
        "results/smoke/analysis/*.json",
    ):
        for path in root.glob(pattern):
            found[str(path.relative_to(root))] = path.stat().st_mtime
    return found


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which only wait to be reaped, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _train_uninterrupted(workdir: Path, log: str, model: str) -> Path:
    """Rerun the train command the workflow printed for ``model`` into a fresh folder."""
    lines = (line.strip().removeprefix("Shell command: ") for line in log.splitlines())
    command = next(c for c in lines if c.startswith("deqrobust train ") and f" --model {model} " in c)
    command = command.split(" > ", 1)[0]
    out = re.search(r"--out (\S+)", command).group(1)
    reference = workdir.parent / "uninterrupted" / model  # outside the clone: not in git, not in results
    proc = subprocess.run(
        command.replace(f"--out {out}", f"--out {reference}"),
        shell=True,
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return reference


def _same_training(a: Path, b: Path) -> None:
    import torch

    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    timing = ("wall_seconds", "train_images_per_second")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k not in timing} == {k: v for k, v in sb.items() if k not in timing}
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in ca["state_dict"]), a.name


def report_verdicts(text: str) -> dict[str, str]:
    """Claim number -> verdict, from report.md's verdict table."""
    return dict(re.findall(r"^\| (\d) \| \*\*([^*]+)\*\* \|", text, re.M))


def notebook_verdicts(*paths: Path) -> dict[str, str]:
    """Claim number -> verdict, from the "**Claim N: verdict.**" lines executed notebooks show."""
    found = {}
    for path in paths:
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                text = out.get("data", {}).get("text/markdown", out.get("text", ""))
                found.update(re.findall(r"\*\*Claim (\d): ([^*]+?)\.\*\*", "".join(text)))
    return found


def decide_elsewhere(workdir: Path, cfg: dict, overrides: list[str], out: Path) -> tuple[dict, dict]:
    """The verdicts of `deqrobust report` and of the executed notebooks on the run's results, both
    given ``overrides`` as the workflow gives them (--set, DEQROBUST_OVERRIDES)."""
    results, reports = workdir / cfg["results"], workdir / cfg["reports"]
    files = {kind: sorted(str(p) for p in (results / kind).glob("*.json")) for kind in ("analysis", "early_exit")}
    files["trajectory"] = sorted(str(p) for p in (results / "trajectory").glob("*.json"))
    summaries = sorted(str(p) for p in (results / "models").glob("*/summary.json"))
    sets = [a for o in overrides for a in ("--set", o)]
    report = run(
        [str(Path(sys.executable).parent / "deqrobust"), "report", "-c", PROFILES["smoke"], *sets]
        + ["--table", str(reports / "table.csv"), "--outcomes", str(results / "outcomes.csv.gz")]
        + ["--early-exit", *files["early_exit"], "--analysis", *files["analysis"]]
        + ["--trajectory", *files["trajectory"], "--summary", *summaries]
        + ["--out", str(out / "report.md"), "--metrics", str(out / "metrics.json")],
        workdir,
    )
    assert report.returncode == 0, output_of(report)[-3000:]
    env = {
        "DEQROBUST_TABLE": str(reports / "table.csv"),
        "DEQROBUST_OUTCOMES": str(results / "outcomes.csv.gz"),
        "DEQROBUST_ANALYSIS": ",".join(files["analysis"]),
        "DEQROBUST_EARLY_EXIT": ",".join(files["early_exit"]),
        "DEQROBUST_REPORTS": str(out),
        "DEQROBUST_CONFIG": PROFILES["smoke"],
        "DEQROBUST_OVERRIDES": json.dumps(overrides),
    }
    executed = []
    for notebook in sorted((workdir / "notebooks").glob("*.py")):
        executed.append(out / f"{notebook.stem}.ipynb")
        jupytext = [str(Path(sys.executable).parent / "jupytext"), "--to", "ipynb", "--execute", "--run-path", "."]
        proc = subprocess.run(
            [*jupytext, "--output", str(executed[-1]), str(notebook)],
            cwd=workdir,
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return report_verdicts((out / "report.md").read_text()), notebook_verdicts(*executed)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_smoke_workflow_end_to_end(workdir, cifar_archive):
    archive, _ = cifar_archive(**SMOKE_ARCHIVE_SIZE)
    data = f"data={{archive: {archive}, allow_md5_mismatch: true}}"
    args = [
        "--workflow-profile",
        "workflow/profiles/default",
        "--cores",
        "2",
        "--configfile",
        PROFILES["smoke"],
        "--config",
        data,
    ]
    cfg = load("smoke")
    notebooks = len(list((workdir / "notebooks").glob("*.py")))
    expected = expected_jobs(cfg, notebooks)

    # 1. Start from an empty results folder; kill -9 snakemake alone while the adversarial DEQ
    #    (the slowest training) is half-way: its jobs are orphaned and each must stop by itself,
    #    keeping its resume state.
    first_log = workdir / "first-run.log"
    models = workdir / cfg["results"] / "models"
    slowest = next(m for m, s in cfg["models"].items() if s["arch"] == "mdeq" and s["training"] != "standard")
    with first_log.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args],
            cwd=workdir,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline and not (models / slowest / "resume.pt").is_file():
            time.sleep(0.1)
        assert proc.poll() is None, "the smoke run ended before it could be killed:\n" + first_log.read_text()[-3000:]
        proc.kill()
        proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(proc.pid), "jobs of the killed snakemake kept running"
    interrupted = sorted(p.parent.name for p in models.glob("*/resume.pt"))
    assert slowest in interrupted, "the training was not interrupted (its resume.pt is gone)"
    for model in interrupted:
        job_log = (workdir / cfg["results"] / "logs" / "train" / f"{model}.log").read_text()
        assert "the snakemake process that started this job" in job_log, job_log[-2000:]
        assert not (models / model / "checkpoint.pt").exists()  # no partial checkpoint
    done = finished_outputs(first_log.read_text())
    assert done, "no job finished before the interruption"
    finished = {p: (workdir / p).stat().st_mtime for p in done if (workdir / p).is_file()}

    # 2. The documented recovery: `snakemake --unlock`, then the same command. It plans no
    #    finished job again...
    unlock = snakemake(workdir, "--unlock")
    assert unlock.returncode == 0, output_of(unlock)[-3000:]
    plan = snakemake(workdir, "-n", *args)
    plan_text = output_of(plan)
    assert plan.returncode == 0, plan_text[-3000:]
    assert not planned_outputs(plan_text) & set(finished), "finished outputs are planned again"
    assert sum(job_stats(plan_text).values()) < sum(expected.values())

    # ... and finishes the DAG without touching what was done.
    second = snakemake(workdir, *args, timeout=1200)
    assert second.returncode == 0, output_of(second)[-5000:]
    for path, mtime in finished.items():
        assert (workdir / path).stat().st_mtime == mtime, f"{path} was redone"
    # The interrupted training resumed to exactly what an uninterrupted one gives.
    for model in interrupted:
        _same_training(models / model, _train_uninterrupted(workdir, first_log.read_text(), model))

    # 3. Every final output exists.
    results, reports = workdir / cfg["results"], workdir / cfg["reports"]
    deqs = [m for m, s in cfg["models"].items() if s["arch"] == "mdeq"]
    for model in cfg["models"]:
        for name in ("checkpoint.pt", "metrics.csv", "summary.json"):
            assert (results / "models" / model / name).is_file()
    assert len(list(results.glob("eval/**/state-*.json"))) == expected["evaluate"]
    assert not list(results.glob("eval/**/*.partial"))
    for model in deqs:
        assert (results / "early_exit" / f"{model}.json").is_file()
        assert (results / "analysis" / f"{model}.json").is_file()
    for model in deqs:  # every selection point's weights, and their analysis along training
        snapshots = json.loads((results / "models" / model / "snapshots.json").read_text())["snapshots"]
        assert len(snapshots) == 2 and all(
            (results / "models" / model / "snapshots" / s["file"]).is_file() for s in snapshots
        )
        assert len(json.loads((results / "trajectory" / f"{model}.json").read_text())["snapshots"]) == 2
    assert (results / ".profile").read_text() == "smoke\n"  # the folder is the smoke profile's
    assert (reports / "table.csv").is_file() and (reports / "report.md").is_file()
    table = pd.read_csv(reports / "table.csv")
    assert set(table["data_official"]) == {False} and table["data_md5"].nunique() == 1  # a synthetic archive
    text = (reports / "report.md").read_text()
    assert "**not the official CIFAR-10 archive**" in text and "## Along training" in text
    assert (
        "- model `deq-std` trained on: " in text
        and "not recorded" not in text.split("## How the verdicts were decided")[0]
    )
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics.get("profile") == "smoke" and metrics["data"]["official"] is False
    assert list((reports / "figures").glob("*.png")) and (reports / "figures" / "training_dynamics.png").is_file()
    for nb in (workdir / "notebooks").glob("*.py"):
        executed = json.loads((reports / "notebooks" / f"{nb.stem}.ipynb").read_text())
        assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
    # The notebooks decide what the report decides: under the run's --config ...
    verdicts = report_verdicts(text)
    assert sorted(verdicts) == list("12345")
    assert notebook_verdicts(*(reports / "notebooks").glob("*.ipynb")) == verdicts
    # ... and under another setting given the same way: with the batch-coupled cells as the
    # profile's, claim 3 has no intermediate-state cell to read (smoke couples only final-state cells).
    coupled = [data, "solver={coupling: batch}", "backward_solver={coupling: batch}"]
    alternative, in_notebooks = decide_elsewhere(workdir, cfg, coupled, workdir / "coupled")
    assert in_notebooks == alternative and alternative["3"] == "not tested" != verdicts["3"]
    assert "Nothing to be done" in output_of(snakemake(workdir, "-n", *args))
    html = workdir / "report.html"
    proc = snakemake(workdir, "--configfile", PROFILES["smoke"], "--config", data, "--report", str(html))
    assert proc.returncode == 0, output_of(proc)[-3000:]
    page = html.read_text(errors="replace")
    assert "residual.png" in page and "table.csv" in page and "quartile band" in page  # captioned figures

    # 3b. The documented DVC profile switch on results made by plain snakemake outside a git
    #     repository (so not recorded: dvc add needs one): DVC leaves them bit-identical.
    shutil.copytree(
        REPO / "src" / "deqrobust",
        workdir / "src" / "deqrobust",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # a dependency of the stage
    for ignore in (".gitignore", "results/.gitignore"):  # results stay out of git (their DVC records do not)
        shutil.copy2(REPO / ignore, workdir / ignore)
    _git_init(workdir)
    kept = _digest(workdir / cfg["results"])
    switch = run(
        [
            sys.executable,
            "-m",
            "dvc",
            "exp",
            "run",
            "-S",
            "profile=smoke",
            "-S",
            f"snakemake_args='--config \"{data}\"'",
        ],
        workdir,
        timeout=600,
    )
    assert switch.returncode == 0, output_of(switch)[-5000:]
    assert _digest(workdir / cfg["results"]) == kept, "dvc exp run changed finished results"

    # 4. One attack setting changes: `dvc repro` reruns only its cells and what depends on them.
    attack = "apgd-ce"
    edited = load("smoke")
    edited["evaluation"]["attacks"][attack]["n_iter"] += 1
    write_yaml(workdir / PROFILES["smoke"], edited)
    affected_cells = len(deqs) * len(
        {
            (e, str(s))
            for g in cfg["evaluation"]["cells"]
            if attack in g["attacks"]
            for e in g["estimators"]
            for s in g["states"]
        }
    )
    affected_cells += (len(cfg["models"]) - len(deqs)) * cfg["evaluation"]["baseline_attacks"].count(attack)
    rerun = snakemake(workdir, "-n", *args)
    assert rerun.returncode == 0, output_of(rerun)[-3000:]
    assert job_stats(output_of(rerun)) == Counter(
        {
            "evaluate": affected_cells,
            "merge": 1,
            "figures": 1,
            "report": 1,
            "notebook": notebooks,
            "all": 1,
        }
    )
    before = _mtimes(workdir)
    third = run([sys.executable, "-m", "dvc", "repro"], workdir, timeout=1200)  # DVC runs snakemake
    assert third.returncode == 0, output_of(third)[-5000:]
    # ... which recorded the results in the DVC cache from inside the stage (results/smoke.dvc).
    assert "DVC recorded results/smoke" in output_of(third), output_of(third)[-3000:]
    status = run([sys.executable, "-m", "dvc", "status", "results/smoke.dvc"], workdir)
    assert status.returncode == 0 and "modified" not in output_of(status), output_of(status)
    after = _mtimes(workdir)
    changed = {p for p in before if after[p] != before[p]}
    assert changed == {p for p in before if f"/{attack}/" in p}
