"""A results folder belongs to one profile: a run of another profile into it would retrain and
replace the first profile's checkpoints, so it is refused before any job, naming both.

The owner is written to ``<results>/.profile`` when a run starts (``claim``); a folder made
before the marker existed is owned by the profile its trained models' ``summary.json`` name.
"""

from __future__ import annotations

import json
from pathlib import Path

from deqrobust.errors import ConfigError

MARKER = ".profile"


def owner(results: str | Path) -> tuple[str, Path] | None:
    """The profile that owns ``results`` and the file that says so, or None for a new folder."""
    results = Path(results)
    marker = results / MARKER
    if marker.is_file():
        return marker.read_text().strip(), marker
    for summary in sorted(results.glob("models/*/summary.json")):
        try:
            profile = json.loads(summary.read_text()).get("profile")
        except (OSError, ValueError):
            continue
        if profile:
            return profile, summary
    return None


def check(results: str | Path, profile: str) -> None:
    """ConfigError when ``results`` belongs to another profile."""
    found = owner(results)
    if found is not None and found[0] != profile:
        raise ConfigError(
            f"results folder {results} belongs to profile {found[0]!r} ({found[1]}); this run is profile "
            f"{profile!r}: give it its own folder (results: results/{profile} in its config, or "
            f"--config results=results/{profile}); nothing was changed"
        )


def claim(results: str | Path, profile: str) -> None:
    """Mark ``results`` as ``profile``'s (after ``check``)."""
    from deqrobust.atomic import write_text

    marker = Path(results) / MARKER
    if not marker.is_file():
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_text(marker, profile + "\n")
