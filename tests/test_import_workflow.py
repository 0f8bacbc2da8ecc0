"""The workflow on a checkpoint of the authors' code (config/import.yaml).

A model with ``checkpoint:`` is imported (rule ``import_checkpoint``, ``deqrobust import``)
instead of trained, and every later step runs on the imported checkpoint. The dry runs
plan the README's command; the end-to-end run imports the fixture's MDEQ-LARGE weights,
written in the authors' file layout, and runs the whole DAG on a tiny matrix.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import write_authors_file
from test_workflow import REPO, job_stats, output_of, snakemake, workdir, write_yaml  # noqa: F401 (workdir: fixture)

from deqrobust import config, plan
from deqrobust.errors import ConfigError

IMPORT = "config/import.yaml"
MODEL = "authors-large"
PLACEHOLDER = "/path/to/model_best.pth.tar"  # the README command's path


def readme_command() -> list[str]:
    """The workflow command of the README's "Evaluate your own checkpoint", as a shell would split it."""
    section = (REPO / "README.md").read_text().split("## Evaluate your own checkpoint", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if IMPORT in b)
    return shlex.split(block.replace("\\\n", " "))


def import_override(path, grad: str = "exact", training: str = "pgd") -> str:
    return f"models={{{MODEL}: {{checkpoint: {path}, grad: {grad}, training: {training}}}}}"


def notebooks(root: Path) -> int:
    return len(list((root / "notebooks").glob("*.py")))


# ---- the profile and its checks ------------------------------------------------------------


def test_import_profile_runs_the_papers_matrix_on_one_large_checkpoint():
    mine, paper = config.load(REPO / IMPORT), config.load(REPO / "config/config.yaml")
    for key in ("solver", "backward_solver", "analysis"):
        assert mine[key] == paper[key], key
    unnamed = [{k: v for k, v in g.items() if k != "models"} for g in paper["evaluation"]["cells"]]
    assert {**mine["evaluation"], "cells": None} == {**paper["evaluation"], "cells": None}
    assert mine["evaluation"]["cells"] == unnamed  # the paper's groups, on the one DEQ there is
    assert {k: mine["data"][k] for k in ("dev_size", "split_seed", "test_subset")} == {
        k: paper["data"][k] for k in ("dev_size", "split_seed", "test_subset")
    }
    assert mine["training"]["unroll"] == paper["training"]["unroll"]  # a grad: unroll model's own output
    assert plan.imported(mine) == list(mine["models"]) == [MODEL]
    assert mine["models"][MODEL]["size"] == "large" and mine["require_gpu"]
    assert len(plan.cells(mine)) == len([c for c in plan.cells(paper) if c.model == "deq-large-pgd-exact"])


def _raw_import() -> dict:
    return yaml.safe_load((REPO / IMPORT).read_text())


@pytest.mark.parametrize("key", ["grad", "size"])
def test_a_checkpoint_model_must_write_what_no_default_may_fill(key, tmp_path):
    raw = _raw_import()
    del raw["models"][MODEL][key]
    with pytest.raises(
        ConfigError,
        match=rf"models\.{MODEL}: a model with a checkpoint must write {key} itself "
        r"\(no default applies.*valid: " + key,
    ):
        config.load(write_yaml(tmp_path / "bad.yaml", raw))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("training", "fgsm", "the authors' code trains no training 'fgsm'; valid with a checkpoint: standard, pgd"),
        ("size", "tiny", "the authors' code trains no size 'tiny'; valid with a checkpoint: large, xl"),
        (
            "arch",
            "preact_resnet18",
            "the authors' code trains no arch 'preact_resnet18'; valid with a checkpoint: mdeq",
        ),
        ("seeds", [0, 1], "a model with a checkpoint is one trained instance"),
    ],
)
def test_a_checkpoint_model_is_one_the_authors_code_trains(key, value, expected, tmp_path):
    raw = _raw_import()
    raw["models"][MODEL][key] = value
    with pytest.raises(ConfigError, match=re.escape(f"models.{MODEL}.{key}: {expected}")):
        config.load(write_yaml(tmp_path / "bad.yaml", raw))


def test_unwritten_grad_stops_the_workflow_with_the_cli_message(workdir):
    raw = _raw_import()
    del raw["models"][MODEL]["grad"]
    write_yaml(workdir / "config" / "bad.yaml", raw)
    proc = snakemake(workdir, "-n", "--configfile", "config/bad.yaml")
    text = output_of(proc)
    assert proc.returncode != 0 and "Job stats" not in text
    with pytest.raises(ConfigError) as err:
        config.load(workdir / "config" / "bad.yaml")
    assert str(err.value).split("\n", 1)[1] in text, text[-2000:]


def test_a_missing_checkpoint_file_is_named_with_the_override_that_gives_it(workdir):
    proc = snakemake(workdir, "-n", "--configfile", IMPORT)
    text = output_of(proc)
    assert proc.returncode != 0 and "Job stats" not in text
    assert f"models.{MODEL}.checkpoint: 'path/to/model_best.pth.tar' is no file" in text, text[-2000:]
    assert (
        f"--config 'models={{{MODEL}: {{checkpoint: /path/to/model_best.pth.tar, grad: exact, training: pgd}}}}'"
        in text
    )


def test_import_help_shows_the_workflow_route(capsys):
    """`deqrobust import --help` ends with the README's workflow command (SOURCE for the path)."""
    from deqrobust import cli

    with pytest.raises(SystemExit):
        cli.main(["import", "--help"])
    text = capsys.readouterr().out
    shown = shlex.split(text[text.index("snakemake ") :].replace("\\\n", " "))
    assert shown == [a.replace(PLACEHOLDER, "SOURCE") for a in readme_command()], text


# ---- the DAG ---------------------------------------------------------------------------------


def test_readme_command_imports_instead_of_training(workdir, tmp_path):
    """The README's command, with a real file for its placeholder: one import job, no train job,
    the paper's matrix on the imported model."""
    source = tmp_path / "model_best.pth.tar"
    source.write_bytes(b"")  # a dry run only needs it to exist
    command = readme_command()
    assert command[0] == "snakemake" and PLACEHOLDER in " ".join(command)
    proc = snakemake(workdir, "-n", *(a.replace(PLACEHOLDER, str(source)) for a in command[1:]))
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    cells = len(plan.cells(config.load(REPO / IMPORT)))
    assert job_stats(text) == {
        "data": 1,
        "import_checkpoint": 1,
        "select_exit": 1,
        "evaluate": cells,
        "analyze": 1,
        "merge": 1,
        "figures": 1,
        "report": 1,
        "notebook": notebooks(workdir),
        "all": 1,
    }


def test_imported_and_trained_models_mix_in_one_profile(workdir, tmp_path):
    source = tmp_path / "final_state.pth.tar"
    source.write_bytes(b"")
    extra = {
        "models": {
            MODEL: {
                "arch": "mdeq",
                "size": "large",
                "training": "standard",
                "grad": "unroll",
                "checkpoint": str(source),
            }
        }
    }
    write_yaml(workdir / "config" / "mine.yaml", extra)
    proc = snakemake(workdir, "-n", "-p", "--configfile", "config/smoke.yaml", "config/mine.yaml")
    text = output_of(proc)
    assert proc.returncode == 0, text[-3000:]
    smoke = yaml.safe_load((workdir / "config" / "smoke.yaml").read_text())
    stats = job_stats(text)
    assert stats["train"] == len(smoke["models"]) and stats["import_checkpoint"] == 1
    assert stats["select_exit"] == stats["analyze"] == 1 + sum(s["arch"] == "mdeq" for s in smoke["models"].values())
    assert (
        f"deqrobust import {source} --grad unroll --training standard --name {MODEL} "
        f"--out results/smoke/models/{MODEL}/checkpoint.pt" in text
    )
    assert f"--model {MODEL}" not in text


# ---- end to end ------------------------------------------------------------------------------

# A tiny matrix over import.yaml: MDEQ-LARGE on 2 test images, 2 solver steps, PGD with one step.
TINY = {
    "device": "cpu",
    "require_gpu": False,
    "threads": 1,
    "data": {"root": "results/import/data", "allow_md5_mismatch": True, "dev_size": 4, "test_subset": 2},
    "solver": {"budget": 2},
    "backward_solver": {"budget": 2},
    "evaluation": {
        "num_examples": 2,
        "batch_size": 2,
        "attacks": {"pgd1": {"name": "pgd", "eps_255": 8, "step_255": 8, "steps": 1, "restarts": 1}},
        "cells": [
            {"estimators": ["exact"], "attacks": ["pgd1"], "states": ["final"]},
            {"estimators": ["intermediate-l0.5-k1"], "attacks": ["pgd1"], "states": [1]},
        ],
        "early_exit": {"estimator": "intermediate-l0.5-k1", "attack": "pgd1", "num_examples": 2},
    },
    "analysis": {
        "budget": 3,
        "num_examples": 2,
        "attack": "pgd1",
        "estimator": "exact",
        "diagnostics": {"estimators": ["exact", "intermediate-l0.5-k1"], "states": [1], "num_examples": 1},
    },
}


@pytest.mark.slow
def test_workflow_runs_end_to_end_on_an_imported_checkpoint(workdir, tmp_path, their_state, cifar_archive):
    import torch

    from deqrobust.authors import theirs_from_ours
    from deqrobust.data import md5_of

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    source = write_authors_file(theirs, their_state, "checkpoint", "module.")
    archive, _ = cifar_archive(per_batch=4, n_test=4)
    tiny = copy.deepcopy(TINY)
    tiny["data"]["archive"] = str(archive)
    write_yaml(workdir / "config" / "tiny.yaml", tiny)
    args = [
        "--cores",
        "2",
        "--configfile",
        IMPORT,
        "config/tiny.yaml",
        "--config",
        import_override(source, grad="unroll", training="pgd"),
    ]
    proc = snakemake(workdir, *args, timeout=900)
    text = output_of(proc)
    assert proc.returncode == 0, text[-5000:]
    assert job_stats(text) == {
        "data": 1,
        "import_checkpoint": 1,
        "select_exit": 1,
        "evaluate": 2,
        "analyze": 1,
        "merge": 1,
        "figures": 1,
        "report": 1,
        "notebook": notebooks(workdir),
        "all": 1,
    }

    # The checkpoint is the authors' weights under the model's name, with the config's grad and training.
    results, reports = workdir / "results" / "import", workdir / "reports" / "import"
    model_dir = results / "models" / MODEL
    assert sorted(p.name for p in model_dir.iterdir()) == ["checkpoint.pt"]  # no training curves
    ckpt = torch.load(model_dir / "checkpoint.pt", weights_only=True)
    assert {k: ckpt["spec"][k] for k in ("name", "size", "grad", "training")} == {
        "name": MODEL,
        "size": "large",
        "grad": "unroll",
        "training": "pgd",
    }
    assert ckpt["spec"]["source"]["md5"] == md5_of(source) and ckpt["spec"]["source"]["prefix"] == "module."
    assert all(torch.equal(v, their_state[theirs_from_ours(k)]) for k, v in ckpt["state_dict"].items())

    # Every later step ran on it.
    for cell in ("exact/pgd1/state-final.json", "intermediate-l0.5-k1/pgd1/state-1.json"):
        record = json.loads((results / "eval" / MODEL / cell).read_text())
        assert record["model"] == MODEL and record["grad"] == "unroll" and record["num_examples"] == 2
    assert json.loads((results / "early_exit" / f"{MODEL}.json").read_text())["state"] in (1, 2)
    assert json.loads((results / "analysis" / f"{MODEL}.json").read_text())["model"]["name"] == MODEL
    import pandas as pd

    table = pd.read_csv(reports / "table.csv")
    assert set(table["model"]) == {MODEL} and table["accuracy"].between(0, 1).all()
    report = (reports / "report.md").read_text()
    assert f"- model `{MODEL}`: mdeq-large, training pgd, gradient unroll, imported from `{source}`" in report
    assert list((reports / "figures").glob("*.png")) and (reports / "metrics.json").is_file()
    assert "Nothing to be done" in output_of(snakemake(workdir, "-n", *args))

    # How it was trained is part of the model: another grad re-imports it and reruns what reads it.
    rerun = snakemake(workdir, "-n", *args[:-1], import_override(source, grad="exact", training="pgd"))
    assert job_stats(output_of(rerun)) == {
        "import_checkpoint": 1,
        "select_exit": 1,
        "evaluate": 2,
        "analyze": 1,
        "merge": 1,
        "figures": 1,
        "report": 1,
        "notebook": notebooks(workdir),
        "all": 1,
    }, output_of(rerun)[-3000:]
