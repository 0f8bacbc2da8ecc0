"""The config schema and the YAML dialect every config is read in (torch-free, a leaf).

``config.schema.yaml`` (in this package, linked from ``workflow/schemas/``) holds the
description, range and default of every key. The config loader (deqrobust.config) and the
parameter tables (deqrobust.specs) read it from here.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML with exponent floats (PyYAML follows YAML 1.1, which reads 1e-3 and 1e9 as strings),
    and a key given twice in one mapping refused (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    f"in the mapping that starts at line {node.start_mark.line + 1}",
                    node.start_mark,
                    f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """YAML as the config reads it (files and override values alike)."""
    return yaml.load(text, Loader=_Loader)


@lru_cache(maxsize=None)
def schema() -> dict:
    """The config schema (shared: do not modify)."""
    return read_yaml(resources.files("deqrobust").joinpath("config.schema.yaml").read_text())


def deep_update(base: dict, new: dict) -> dict:
    """Merge ``new`` into ``base`` as config files merge: sections merged, later keys win."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
