"""Library code is a rerun trigger: each rule's `code` param is the fingerprint of the modules its
command imports (deqrobust.codeprint), found from the import graph."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deqrobust import codeprint

COMMANDS = ("data", "train", "import", "select-exit", "evaluate", "merge", "analyze", "trajectory", "figures", "report")


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the package to edit."""
    root = tmp_path / "deqrobust"
    shutil.copytree(codeprint.ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def prints(root: Path) -> dict[str, str]:
    return {c: codeprint.command_fingerprint(c, root) for c in COMMANDS}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_copy_prints_like_the_package(package):
    assert prints(package) == prints(codeprint.ROOT)


def test_an_attack_change_reruns_what_runs_attacks_and_nothing_else(package):
    before = prints(package)
    edit(package / "attacks" / "pgd.py", "def pgd(", "ZERO = 0\n\n\ndef pgd(")
    after = prints(package)
    changed = {c for c in COMMANDS if before[c] != after[c]}
    assert {"train", "evaluate", "select-exit", "analyze"} <= changed  # they attack
    assert not changed & {"data", "merge", "import"}  # they never run an attack


def test_a_renderer_change_reruns_only_the_report(package):
    before = prints(package)
    edit(package / "report.py", "def trend_lines(", "UNUSED = 1\n\n\ndef trend_lines(")
    after = prints(package)
    assert {c for c in COMMANDS if before[c] != after[c]} == {"report"}


def test_docstrings_comments_and_layout_are_not_code(package):
    before = prints(package)
    solvers = package / "solvers.py"
    text = solvers.read_text()
    text = text.replace('"""Fixed-point solvers', '"""Solvers, reworded:\n\nFixed-point solvers', 1)
    text = text.replace("TINY = 1e-12", "TINY = 1e-12   # a new comment\n\n", 1)
    solvers.write_text(text)
    edit(package / "stats.py", "ALPHA = 0.05", "ALPHA  =  0.05")
    assert prints(package) == before
    edit(package / "solvers.py", "TINY = 1e-12", "TINY = 1e-11")  # a value is code
    assert prints(package)["train"] != before["train"]


def test_function_level_imports_count(package):
    """`deqrobust analyze` imports the analysis module inside run(): its code is still the command's."""
    closure = codeprint.closure(package / "commands" / "analyze.py", package)
    assert {"deqrobust.analysis", "deqrobust.solvers", "deqrobust.attacks.pgd"} <= set(closure)
    assert "deqrobust" not in closure  # the version alone reruns nothing


def test_every_rule_that_runs_library_code_has_a_code_param():
    rules = "".join(p.read_text() for p in (Path(__file__).parents[1] / "workflow" / "rules").glob("*.smk"))
    for command in COMMANDS:
        assert f'code=code_of("{command}")' in rules, command
    assert "code=lambda w: codeprint.fingerprint(notebook_source(w.notebook))" in rules
