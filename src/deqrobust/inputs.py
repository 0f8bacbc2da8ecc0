"""What a notebook reads: the run's config (overrides included) and result files, found from the
environment the workflow sets or from the checkout, so a notebook decides what the report decides."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deqrobust.errors import ConfigError


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout: the first folder holding the Snakefile at or above ``start`` (default:
    the working directory), else above this package (an editable install), so a notebook
    finds its inputs from any working directory."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents, *Path(__file__).resolve().parents):
        if (folder / "Snakefile").is_file():
            return folder
    raise ConfigError(
        f"no Snakefile in {here} or any folder above it (nor above the installed package): run "
        "from inside the deqrobust checkout, "
        "or set DEQROBUST_CONFIG, DEQROBUST_TABLE and DEQROBUST_ANALYSIS"
    )


def default_profile(root: Path) -> str:
    """DEQROBUST_PROFILE, else the profile params.yaml chooses (DVC's run)."""
    if os.environ.get("DEQROBUST_PROFILE"):
        return os.environ["DEQROBUST_PROFILE"]
    import yaml

    params = root / "params.yaml"
    profile = (yaml.safe_load(params.read_text()) or {}).get("profile") if params.is_file() else None
    if not profile:
        raise ConfigError(
            f"no profile chosen: set DEQROBUST_PROFILE (paper, quick, cpu, smoke or import) or 'profile' in {params}"
        )
    return profile


def notebook_inputs(
    profile: str | None = None, start: str | os.PathLike | None = None, require: tuple[str, ...] = ()
) -> dict:
    """Config, reports folder, table, per-example outcomes, analyses and development records a notebook reads.

    Environment variables win (the workflow sets them; relative paths are read from the
    working directory): DEQROBUST_CONFIG, DEQROBUST_OVERRIDES (a JSON list of the run's
    ``--config`` overrides, so the notebook reads the config the report read), DEQROBUST_REPORTS,
    DEQROBUST_TABLE, DEQROBUST_OUTCOMES, DEQROBUST_ANALYSIS and DEQROBUST_EARLY_EXIT
    (comma-separated). Otherwise the profile's files in the checkout found from ``start``:
    ``config/<profile>.yaml``, its ``reports`` folder with ``table.csv``,
    ``<results>/outcomes.csv.gz``, ``<results>/analysis/*.json`` and ``<results>/early_exit/*.json``.
    Each key of ``require`` must name existing files (a list: at least one), else ConfigError:
    a notebook never shows empty figures for inputs it did not find.
    """
    from deqrobust.config import load

    env = os.environ.get
    if env("DEQROBUST_CONFIG"):
        config_path = Path(env("DEQROBUST_CONFIG"))
        try:
            root = project_root(start)
        except ConfigError:  # a config given outside a checkout: its paths are read from here
            root = None
    else:
        root = project_root(start)
        config_path = root / "config" / f"{profile or default_profile(root)}.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"config {config_path} does not exist; valid: a profile under config/ "
            "(set DEQROBUST_PROFILE or DEQROBUST_CONFIG)"
        )
    cfg = load(config_path, json.loads(env("DEQROBUST_OVERRIDES") or "[]"))

    def in_checkout(path: str) -> Path:  # the config's paths are relative to the checkout (the workflow's workdir)
        return Path(path) if root is None else root / path

    reports = Path(env("DEQROBUST_REPORTS") or in_checkout(cfg["reports"]))
    found = in_checkout(cfg["results"])

    def listed(variable: str, folder: str) -> list[Path]:
        given = env(variable)
        if given is not None:
            return [Path(p) for p in given.split(",") if p]
        return sorted(found.joinpath(folder).glob("*.json"))

    paths = {
        "config": cfg,
        "config_file": config_path,
        "reports": reports,
        "table": Path(env("DEQROBUST_TABLE") or reports / "table.csv"),
        "outcomes": Path(env("DEQROBUST_OUTCOMES") or found / "outcomes.csv.gz"),
        "analysis": listed("DEQROBUST_ANALYSIS", "analysis"),
        "early_exit": listed("DEQROBUST_EARLY_EXIT", "early_exit"),
    }
    for key in require:
        files = paths[key] if isinstance(paths[key], list) else [paths[key]]
        missing = [str(f) for f in files if not Path(f).is_file()]
        if not files or missing:
            raise ConfigError(
                f"notebook input {key!r} of profile {cfg['profile']!r}: "
                f"{', '.join(missing) or 'no file found'}; run the workflow for this profile first "
                "(or point DEQROBUST_CONFIG / DEQROBUST_" + key.upper() + " at its files)"
            )
    return paths


def describe_inputs(paths: dict) -> str:
    """What a notebook read: the profile, its config and every input file."""
    lines = [f"profile {paths['config']['profile']!r} (config {paths['config_file']})"]
    for key in ("table", "outcomes", "analysis", "early_exit"):
        files = paths[key] if isinstance(paths[key], list) else [paths[key]]
        lines.append(f"{key}: " + (", ".join(str(f) for f in files if Path(f).is_file()) or "none"))
    return "\n".join(lines)
