"""Configuration: one YAML file per profile, dotted ``--set`` overrides, schema validation.

The same file drives the library CLI and the Snakemake workflow, so a profile is
described once. The schema (``config.schema.yaml`` in this package, linked from
``workflow/schemas/``) holds descriptions and defaults of every key.
"""
from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import torch
import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and the valid choices."""


def schema() -> dict:
    return yaml.safe_load(resources.files("deqrobust").joinpath("config.schema.yaml").read_text())


def _fill_defaults(node: Any, sub: dict) -> None:
    """Insert the schema's defaults for missing keys (jsonschema only validates)."""
    if not isinstance(node, dict):
        return
    for key, prop in sub.get("properties", {}).items():
        if key not in node and "default" in prop:
            node[key] = copy.deepcopy(prop["default"])
        if key in node:
            _fill_defaults(node[key], prop)
    extra = sub.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in node.items():
            if key not in sub.get("properties", {}):
                _fill_defaults(value, extra)


def validate(cfg: dict) -> dict:
    """Validate against the schema and fill defaults; raise ConfigError naming the bad key."""
    sch = schema()
    _fill_defaults(cfg, sch)
    errors = sorted(jsonschema.Draft202012Validator(sch).iter_errors(cfg), key=lambda e: list(e.path))
    if errors:
        lines = []
        for err in errors[:5]:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {where}: {err.message}")
        raise ConfigError("invalid config:\n" + "\n".join(lines))
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return cfg


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    cfg = yaml.safe_load(path.read_text()) or {}
    return validate(apply_overrides(cfg, overrides or []))


def resolve_device(cfg: dict) -> torch.device:
    """The configured device; the GPU-scale paper profile refuses to start on a CPU."""
    name = cfg.get("device", "auto")
    has_cuda = torch.cuda.is_available()
    if cfg.get("require_gpu", False) and not has_cuda:
        raise ConfigError(
            f"profile {cfg.get('profile', '?')!r} is GPU-scale (require_gpu: true) and no CUDA device is "
            "visible. Run the CPU profile instead (--configfile config/quick.yaml), or force this one onto "
            "the CPU with the override require_gpu=false (expect weeks of compute)."
        )
    if name == "auto":
        return torch.device("cuda" if has_cuda else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"device {name!r} is not valid; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not has_cuda:
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return torch.device(name)


def model_spec(cfg: dict, name: str) -> dict:
    """The spec of one model of the config, with the training section merged in."""
    models = cfg.get("models", {})
    if name not in models:
        raise ConfigError(f"unknown model {name!r}; models of this config: {', '.join(models) or '(none)'}")
    spec = copy.deepcopy(models[name])
    training = copy.deepcopy(cfg["training"])
    _deep_update(training, spec.pop("training_overrides", {}) or {})
    spec["training_config"] = training
    spec["name"] = name
    return spec


def _deep_update(base: dict, new: dict) -> dict:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base
