"""Configuration: profile files merged in order, dotted overrides, validation.

Torch-free on purpose: the Snakefile imports this module (and ``deqrobust.plan``) and
builds Snakemake's ``config`` with :func:`load`, so a profile is read, overridden and
checked by the same code before any job and in every CLI call. The schema
(``config.schema.yaml`` in this package, linked from ``workflow/schemas/``) holds the
description, range and default of every key; ``deqrobust.plan`` checks what a schema
cannot (names used across sections, states within the solver budget, estimator and
attack specs).
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

from deqrobust import plan
from deqrobust.errors import ConfigError
from deqrobust.instances import model_spec
from deqrobust.schema import deep_update, read_yaml, schema

MAX_LINES = 5  # problems listed per error; the rest are counted


def _resolve(sub: dict) -> dict:
    """A schema node with its local ``$ref`` (``#/definitions/...``) merged in."""
    ref = sub.get("$ref")
    if ref is None:
        return sub
    target = schema()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in sub.items() if k != "$ref"}}


def _complete(node: Any, sub: dict, fill: bool = True) -> Any:
    """Fill the schema's defaults in every section (jsonschema only validates; not with
    ``fill=False``) and read integral floats at integer keys as integers (``1e3`` is a float in
    YAML), walking the schema beside the config: every later step reads a resolved config."""
    sub = _resolve(sub)
    if isinstance(node, dict):
        props = sub.get("properties", {})
        for key, prop in props.items():
            default = _resolve(prop).get("default", ...)
            if fill and key not in node and default is not ...:
                node[key] = copy.deepcopy(default)
        extra = sub.get("additionalProperties")
        for key in node:
            child = props.get(key, extra if isinstance(extra, dict) else None)
            if child is not None:
                node[key] = _complete(node[key], child, fill)
    elif isinstance(node, list) and isinstance(sub.get("items"), dict):
        node[:] = [_complete(item, sub["items"], fill) for item in node]
    elif isinstance(node, float) and node.is_integer() and "integer" in _types(sub):
        return int(node)
    return node


def _types(sub: dict) -> list[str]:
    kind = sub.get("type", [])
    return [kind] if isinstance(kind, str) else kind


def _where(path: Iterable) -> str:
    """A key path as written in messages: ``evaluation.cells[0].states``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


def _not_finite(node: Any, path: tuple = ()) -> list[str]:
    if isinstance(node, dict):
        return [line for key, value in node.items() for line in _not_finite(value, (*path, key))]
    if isinstance(node, list):
        return [line for i, value in enumerate(node) for line in _not_finite(value, (*path, i))]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{_where(path)}: {node} is not a finite number"]
    return []


def _schema_problems(cfg: dict) -> list[str]:
    lines = []
    for err in sorted(jsonschema.Draft202012Validator(schema()).iter_errors(cfg), key=lambda e: list(map(str, e.path))):
        line = f"{_where(err.absolute_path)}: {err.message}"
        if err.validator == "additionalProperties":
            line += f"; valid keys: {', '.join(err.schema.get('properties', {}))}"
        lines.append(line)
    return lines


def _override_problems(cfg: dict) -> list[str]:
    """Each model's training section with its ``training_overrides`` merged, validated."""
    lines = []
    for name in cfg["models"]:
        if not cfg["models"][name]["training_overrides"]:
            continue
        _complete(cfg["models"][name]["training_overrides"], schema()["properties"]["training"], fill=False)
        merged = {**cfg, "training": model_spec(cfg, name)["training_config"]}
        for line in _schema_problems(merged):
            if line.startswith("training"):
                lines.append(f"models.{name}.training_overrides{line.removeprefix('training')}")
    return lines


def problems(cfg: dict) -> list[str]:
    """Fill defaults, then every problem of the config as ``key: what is wrong`` lines."""
    unwritten = plan.unwritten_import_keys(cfg)  # keys no default may fill: read before _complete
    _complete(cfg, schema())
    found = _not_finite(cfg) + _schema_problems(cfg) + unwritten
    return found or _override_problems(cfg) or plan.problems(cfg)


def validate(cfg: dict, source: str = "config") -> dict:
    """The config with defaults filled; ConfigError listing the first problems, by key."""
    found = problems(cfg)
    if found:
        more = len(found) - MAX_LINES
        lines = [f"  {line}" for line in dict.fromkeys(found[:MAX_LINES])]
        if more > 0:
            lines.append(f"  (and {more} more)")
        raise ConfigError(f"invalid {source}:\n" + "\n".join(lines))
    return cfg


def read_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        cfg = read_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file {str(path)!r}{_yaml_where(err)} is not valid YAML: {_yaml_problem(err)}"
        ) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys (profile, models, ...)")
    return cfg


def _yaml_where(err: yaml.YAMLError) -> str:
    """', line L, column C' of a YAML error that knows where it is."""
    mark = getattr(err, "problem_mark", None)
    return "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1},"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong (and the context it was read in)."""
    problem = getattr(err, "problem", None)
    if problem is None:
        return " ".join(str(err).split())
    context = getattr(err, "context", None)
    return problem + (f" ({context})" if context and "mapping that starts" not in context else "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.sub=value`` -> (['key', 'sub'], value read as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not all(key.split(".")):
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    try:
        return key.split("."), read_yaml(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {err}") from None


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Set each ``key.sub=value``; a mapping value is merged into the section it names, as
    Snakemake merges ``--config 'data={archive: ...}'``."""
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
            deep_update(node[keys[-1]], value)
        else:
            node[keys[-1]] = value
    return cfg


def load(files: str | os.PathLike | Iterable[str | os.PathLike], overrides: Iterable[str] = ()) -> dict:
    """The validated config of profile files merged in order (later keys win, sections are
    merged, as Snakemake merges several ``--configfile``) and ``key.sub=value`` overrides."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise ConfigError("no config file given (config/<profile>.yaml)")
    overrides = list(overrides)
    cfg: dict = {}
    for path in files:
        deep_update(cfg, read_file(path))
    apply_overrides(cfg, overrides)
    source = ", ".join(str(f) for f in files) + "".join(f", {o}" for o in overrides)
    return validate(cfg, f"config ({source})")
