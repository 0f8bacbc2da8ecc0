"""The fingerprint of the library code a workflow step runs: its rerun trigger for code changes.

A step is a ``deqrobust`` command module (or a notebook). Its code is every module of this
package it imports, directly or through others, at module level or inside functions (found
from the import statements, so no hand-kept list can fall behind), and the fingerprint hashes
each module's syntax tree without its docstrings. So a change of what the code does changes the
fingerprint of every step that runs it, and a change of a comment, a docstring or the layout
does not. Data files (the config schema) are not code: what they decide reaches a step through
its config slice.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "deqrobust"
ROOT = Path(__file__).resolve().parent


def _file(module: str, root: Path) -> Path | None:
    """The source file of a module of the package at ``root``, or None (not a module of it)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, root: Path) -> set[str]:
    """The modules of this package a syntax tree imports (``from deqrobust import x`` counts module x)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if _file(name, root) is not None}


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def _parsed(path: Path, root: Path, text: str) -> tuple[str, frozenset[str]]:
    """A file's normalised syntax (no docstrings, no comments, no layout) and the package modules it imports."""
    tree = ast.parse(text, filename=str(path))
    imports = frozenset(_imports(tree, root))
    return ast.dump(_without_docstrings(tree), annotate_fields=False), imports


def _read(path: Path, root: Path) -> tuple[str, frozenset[str]]:
    return _parsed(path, root, path.read_text())


def closure(path: Path, root: Path = ROOT) -> dict[str, Path]:
    """Every module of this package that ``path`` imports, directly or not, by name (parents
    included: importing ``a.b`` runs ``a/__init__.py``), except the package's own ``__init__``,
    which holds only the version: a release alone reruns nothing."""
    found: dict[str, Path] = {}
    todo = list(_read(path, root)[1])
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            file = _file(module, root)
            if file is not None and module not in found and module != PACKAGE:
                found[module] = file
                todo += _read(file, root)[1]
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every module of the package at ``root`` and the modules of it that it imports (parents
    included, the package's own ``__init__`` left out as in ``closure``): the layers' map, which
    the tests check for cycles."""
    graph = {}
    for file in sorted(root.rglob("*.py")):
        parts = (PACKAGE, *file.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for module in _read(file, root)[1]:
            pieces = module.split(".")
            found |= {".".join(pieces[:i]) for i in range(2, len(pieces) + 1) if _file(".".join(pieces[:i]), root)}
        graph[name] = found - {name}
    return graph


def fingerprint(path: str | Path, root: Path = ROOT) -> str:
    """16 hex digits of the code ``path`` runs: its own syntax and that of every module of the
    package at ``root`` (this one by default) it imports."""
    path = Path(path).resolve()
    digest = hashlib.sha256(_read(path, root)[0].encode())
    for name, file in sorted(closure(path, root).items()):
        digest.update(f"\0{name}\0".encode() + _read(file, root)[0].encode())
    return digest.hexdigest()[:16]


def command_fingerprint(command: str, root: Path = ROOT) -> str:
    """The fingerprint of ``deqrobust <command>``."""
    return fingerprint(root / "commands" / f"{command.replace('-', '_')}.py", root)
