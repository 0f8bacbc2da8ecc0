"""The project's vocabulary: the values every layer names, each parsed once and written one way.

A leaf (it imports nothing of the package but the error type), so the torch core, the planner,
the results table and the report all take these definitions from here:

- the attacked or scored **state** of a DEQ: its final state, a solver step n, or the ensemble
  of the steps (``State``); its text form in paths, tables and JSON, and the key of a step's
  score ("state_n");
- the **solver setting** of a cell: the coupling of the solvers' decisions (per sample, ours; or
  over the batch, the authors') and the evaluation batch, with the path suffix of a cell off the
  profile's setting (".batch96");
- the reserved **estimator names**: the baselines' plain backprop and the deployed model's true
  gradient.

The config schema lists the couplings for its users too; a test keeps it equal to ``COUPLINGS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deqrobust.errors import ConfigError

# ----------------------------------------------------------------------------- states
FINAL = "final"  # the DEQ's output z* (the final state)
ENSEMBLE = "ensemble"  # the head of the mean of z_1..z_N
STATE_RE = "|".join((FINAL, ENSEMBLE, "[0-9]+"))  # a state in a path; State.parse checks the budget
STEP_SCORE_PREFIX = "state_"  # the score of the head of step n, in cells and tables: "state_n"


@dataclass(frozen=True)
class State:
    """An attacked or scored state: ``step`` is the solver step n (0 is the zero state z_0, with
    ``intermediate`` and lam=1 the unrolled pretraining network; 1..N the iterates z_1..z_N), or
    None for the final state and the ensemble (``ensemble`` tells which)."""

    step: int | None = None
    ensemble: bool = False

    @classmethod
    def parse(cls, value: State | int | str | None, budget: int) -> State:
        """The one state rule: 'final' (or None), 'ensemble', or a solver step 0..budget
        (an integer or its digits)."""
        if isinstance(value, State):
            value = value.text
        if value is None or value == FINAL:
            return cls()
        if value == ENSEMBLE:
            return cls(ensemble=True)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= budget:
            raise ConfigError(
                f"state {value!r} is not valid for a solver budget of {budget} (solver.budget); "
                f"valid states: {FINAL!r}, {ENSEMBLE!r}, 0..{budget}"
            )
        return cls(step=value)

    @property
    def is_final(self) -> bool:
        return self.step is None and not self.ensemble

    @property
    def text(self) -> str:
        """The form of paths, tables and records: 'final', 'ensemble' or the step's digits."""
        return ENSEMBLE if self.ensemble else FINAL if self.step is None else str(self.step)

    def __str__(self) -> str:
        return self.text


def step_score(step: int) -> str:
    """The name of the score of the head of solver step ``step`` ('state_3')."""
    return f"{STEP_SCORE_PREFIX}{step}"


def score_step(name: str) -> int | None:
    """The solver step a score name is the head of ('state_3' -> 3), or None (final, ensemble)."""
    rest = name.removeprefix(STEP_SCORE_PREFIX)
    return int(rest) if rest != name and rest.isdigit() else None


# ----------------------------------------------------------------------------- solver setting
SAMPLE, BATCH = "sample", "batch"  # per-sample decisions (ours, the default); over the batch (the authors')
COUPLINGS = (SAMPLE, BATCH)
DEFAULT_COUPLING = SAMPLE
# A cell off the profile's solver setting: its path's suffix after the state, '.batch96'.
SOLVE_RE = rf"(\.({'|'.join(COUPLINGS)})[0-9]+)?"


def check_coupling(coupling: str, key: str = "coupling") -> str:
    if coupling not in COUPLINGS:
        raise ConfigError(f"{key} {coupling!r} is not valid; choose one of {', '.join(COUPLINGS)}")
    return coupling


@dataclass(frozen=True)
class SolveSetting:
    """A cell group's solver setting off the profile's: both solvers' coupling and the evaluation
    batch (both None: the profile's own setting)."""

    coupling: str | None = None
    batch_size: int | None = None

    @property
    def suffix(self) -> str:
        """The suffix of a cell's path after its state: '' under the profile's setting, else
        '.<coupling><batch_size>' ('.batch96')."""
        return "" if self.coupling is None else f".{self.coupling}{self.batch_size}"

    @classmethod
    def parse_suffix(cls, suffix: str) -> SolveSetting:
        """The setting of a path suffix made by ``suffix`` ('' gives the profile's)."""
        match = re.fullmatch(SOLVE_RE, suffix)
        if match is None:
            raise ConfigError(
                f"cell path suffix {suffix!r} is not valid; valid: '' or '.<coupling><batch size>' "
                f"with coupling one of {', '.join(COUPLINGS)}, e.g. '.batch96'"
            )
        if not suffix:
            return cls()
        coupling = match.group(2)
        return cls(coupling, int(suffix[len(coupling) + 1 :]))


# ----------------------------------------------------------------------------- architectures
MDEQ, FACTORY = "mdeq", "factory"  # the project's multiscale DEQ; a user's DEQ built by its factory
DEQ_ARCHS = (MDEQ, FACTORY)  # the DEQs (the protocol's models); every other arch is a deep baseline

# ----------------------------------------------------------------------------- reserved estimator names
BASELINE_ESTIMATOR = "autograd"  # plain backprop: the only estimator of the deep-network baselines
TRUE_GRADIENT = "solver_autograd"  # autograd through the deployed solver: the true gradient
