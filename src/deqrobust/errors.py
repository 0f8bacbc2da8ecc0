"""The error every bad value of a user raises: a leaf, so that any module may raise it.

The CLI prints it on one line and exits 2 (deqrobust.cli); the workflow shows it before any job.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and the valid choices."""
