"""What a DEQ must expose to be evaluated: the protocol every estimator, solver, attack, defense
and analysis of this package works on (the MDEQ of deqrobust.models.mdeq meets it; a user's model,
a TorchDEQ one through deqrobust.adapters.torchdeq, does too).

States are flat: ``z`` has shape (batch, state size), so the solvers (deqrobust.solvers) and the
gradient estimators need nothing else of a model. A leaf: it imports nothing of the package but the
error type.
"""

from __future__ import annotations

from deqrobust.errors import ConfigError

# Each member, as the one-line message of a model that lacks it says it.
MEMBERS = {
    "prepare": "prepare(x) -> injection: the input's injection, computed once per input",
    "f": "f(z, injection) -> z: one application of the equilibrium layer, on flat states (batch, state size)",
    "init_state": "init_state(x) -> z0: the solver's initial state, flat (batch, state size)",
    "head": "head(z) -> logits: the classifier on a flat state",
}
# Optional: ``cached_weights()``, a context manager the solves run inside (deqrobust.deq_logits).


def missing(model: object) -> list[str]:
    """The protocol's members ``model`` lacks (callables only count)."""
    return [name for name in MEMBERS if not callable(getattr(model, name, None))]


def is_deq(model: object) -> bool:
    """Whether ``model`` is a DEQ (meets the protocol); other models are attacked as plain networks."""
    return not missing(model)


def check(model: object, what: str) -> None:
    """ConfigError naming every member ``what`` lacks (docs/architecture.md, "Evaluate your own DEQ")."""
    lacks = missing(model)
    if lacks:
        raise ConfigError(
            f"{what} ({type(model).__name__}) does not meet the DEQ protocol: it lacks "
            + "; ".join(MEMBERS[name] for name in lacks)
        )
