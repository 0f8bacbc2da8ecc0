"""The plan of a profile: names, the state grammar and what each step depends on.

Torch-free on purpose: the Snakefile imports this module (and ``deqrobust.config``)
directly, so every rule, check and rerun trigger here is the one the library uses.
Each fact below is defined once; docs/architecture.md says who imports it.
"""
from __future__ import annotations

from deqrobust.config import ConfigError

# Attacked and scored states besides the solver steps 0..N.
FINAL = "final"          # the DEQ's output z* (the final state)
ENSEMBLE = "ensemble"    # the head of the mean of z_1..z_N
NAMED_STATES = (FINAL, ENSEMBLE)

# Plain backprop: the only estimator of the deep-network baselines (attacked at FINAL).
BASELINE_ESTIMATOR = "autograd"

State = int | str | None   # n in 0..budget, ENSEMBLE, or None for FINAL


def parse_state(state: State, budget: int) -> State:
    """The one state rule: 'final' (None), 'ensemble', or a solver step 0..budget.

    Step 0 is the zero state z_0 (with ``intermediate`` and lam=1 that is the unrolled
    pretraining network); steps 1..budget are the solver iterates z_1..z_N.
    """
    if state is None or state == FINAL:
        return None
    if state == ENSEMBLE:
        return state
    if isinstance(state, str) and state.isdigit():
        state = int(state)
    if isinstance(state, bool) or not isinstance(state, int) or not 0 <= state <= budget:
        raise ConfigError(f"state {state!r} is not valid for a solver budget of {budget} (solver.budget); "
                          f"valid states: {FINAL!r}, {ENSEMBLE!r}, 0..{budget}")
    return state


def state_name(state: State) -> str:
    """The text form of a parsed state, as used in paths and tables ('final', 'ensemble', '3')."""
    return FINAL if state is None else str(state)
