"""The package's layers: no import cycle, a torch core that knows nothing of the workflow's
planner or config, and each word of the vocabulary (deqrobust.vocab) written in one module."""

from __future__ import annotations

import ast
from pathlib import Path

from deqrobust import codeprint, schema, vocab

PACKAGE = Path(codeprint.ROOT)
TORCH_CORE = (
    "deqrobust.solvers",
    "deqrobust.estimators",
    "deqrobust.deq_logits",
    "deqrobust.scoring",
    "deqrobust.jacobian",
    "deqrobust.gradients",
    "deqrobust.models",
    "deqrobust.models.mdeq",
    "deqrobust.models.baselines",
)
PLANNER = {"deqrobust.plan", "deqrobust.slices", "deqrobust.jobs", "deqrobust.config"}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for name in graph[todo.pop()]:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    return [
        sorted({name, *(other for other in reachable(graph, name) if name in reachable(graph, other))})
        for name in graph
        if name in reachable(graph, name)
    ]


def test_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]] * 3
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path):
    root = tmp_path / "deqrobust"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "low.py").write_text("def f():\n    from deqrobust import high\n")
    (root / "high.py").write_text("from deqrobust.low import f\n")
    graph = codeprint.import_graph(root)
    assert graph == {"deqrobust": set(), "deqrobust.low": {"deqrobust.high"}, "deqrobust.high": {"deqrobust.low"}}
    assert cycles(graph)


def test_no_module_of_the_package_takes_part_in_an_import_cycle():
    graph = codeprint.import_graph()
    assert len(graph) > 30 and "deqrobust.vocab" in graph  # the whole package, subpackages included
    assert cycles(graph) == []


def test_the_torch_core_imports_neither_the_planner_nor_the_config():
    graph = codeprint.import_graph()
    for module in TORCH_CORE:
        assert module in graph, module
        assert not reachable(graph, module) & PLANNER, f"{module} reaches {reachable(graph, module) & PLANNER}"


def test_the_vocabulary_is_a_leaf():
    graph = codeprint.import_graph()
    assert graph["deqrobust.vocab"] <= {"deqrobust.errors"} and graph["deqrobust.errors"] == set()


# The words vocab defines: no other module may write them as string literals (a tqdm unit is prose).
WORDS = {vocab.FINAL, vocab.ENSEMBLE, vocab.STEP_SCORE_PREFIX, *vocab.COUPLINGS}


def literals(tree: ast.AST) -> list[tuple[int, str]]:
    prose = {
        id(kw.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "unit"
    }
    return sorted(  # an f-string's text parts are constants too: f"state_{n}" is caught
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in WORDS and id(node) not in prose
    )


def test_states_and_couplings_are_written_in_one_module():
    offenders = {
        str(path.relative_to(PACKAGE)): hits
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "vocab.py" and (hits := literals(ast.parse(path.read_text())))
    }
    assert offenders == {}


def test_the_literal_finder_finds_planted_words():
    tree = ast.parse('x = "final"\ny = f"state_{n}"\nz = tqdm(c, unit="batch")\nw = "batch"\n')
    assert literals(tree) == [(1, "final"), (2, "state_"), (4, "batch")]


def test_the_schema_lists_the_vocabulary_couplings():
    definitions = schema.schema()["definitions"]
    assert tuple(definitions["coupling"]["enum"]) == vocab.COUPLINGS
    assert definitions["solver"]["properties"]["coupling"]["default"] == vocab.DEFAULT_COUPLING


def test_states_parse_once_and_print_one_way():
    for value, text in [(None, "final"), ("final", "final"), ("ensemble", "ensemble"), (3, "3"), ("3", "3"), (0, "0")]:
        state = vocab.State.parse(value, budget=8)
        assert state.text == text and vocab.State.parse(state, budget=8) == state == vocab.State.parse(text, 8)
    assert vocab.State.parse(None, 8).is_final and not vocab.State.parse(2, 8).is_final
    assert vocab.score_step(vocab.step_score(5)) == 5 and vocab.score_step("final") is None
    setting = vocab.SolveSetting("batch", 96)
    assert vocab.SolveSetting.parse_suffix(setting.suffix) == setting and setting.suffix == ".batch96"
