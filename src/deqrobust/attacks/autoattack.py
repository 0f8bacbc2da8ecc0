"""Adapter over pyautoattack (the reference fra31 AutoAttack code) that keeps its warnings.

AutoAttack's sanity checks (randomised or dynamic defense, zero gradients, Square
beating the white-box attacks) are the evidence of gradient obfuscation this project
is about. pyautoattack emits them with ``logger.warning`` on the ``auto-attack``
logger (Python ``warnings`` only when no logger is given); both are captured here,
stdout too, and returned instead of going to the console.

The standard cascade is run one component at a time on the still-robust examples, in
the same batches and with the same seeds as one ``run_standard_evaluation`` call, so
the adversarial examples are the same and each broken example is attributed to the
component that broke it. The Square check, which needs the whole cascade, is then
called on the accumulated accuracies exactly as AutoAttack does. (The accuracies in
the returned log are therefore relative to each component's still-robust examples.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Iterator, NamedTuple

import pyautoattack
import torch
from pyautoattack import AutoAttack, checks
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import nn

# The settings a spec may give over the version's own -> the (component, attribute) pairs they set.
from deqrobust.specs import AUTOATTACK_SETTINGS as SETTINGS

PACKAGE_DIR = os.path.dirname(pyautoattack.__file__)
log = logging.getLogger(__name__)


class AutoAttackResult(NamedTuple):
    x_adv: torch.Tensor
    warnings: list[str]  # AutoAttack's warnings, in order, duplicates removed
    log: list[str]  # everything AutoAttack logged or printed
    broken_by: list[str | None]  # per example: "clean", the breaking component, or None (robust)


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def capture(logger: logging.Logger) -> Iterator[tuple[list[str], list[str]]]:
    """Collect ``logger``'s records (all levels), pyautoattack's Python warnings and stdout.

    Yields (warnings, log), filled when the block exits. The logger is detached from
    the root handlers meanwhile; Python warnings from elsewhere are re-issued.
    """
    found: list[str] = []
    lines: list[str] = []
    handler = _ListHandler()
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    out = io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
            warnings.simplefilter("always")
            yield found, lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    for record in handler.records:
        lines.append(f"{record.levelname}: {record.getMessage()}")
        if record.levelno >= logging.WARNING:
            found.append(record.getMessage())
    for w in caught:
        if os.path.dirname(os.path.abspath(w.filename)) == PACKAGE_DIR:
            lines.append(f"WARNING: {w.message}")
            found.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    lines.extend(line for line in out.getvalue().splitlines() if line.strip())
    found[:] = list(dict.fromkeys(found))


def configure(aa: AutoAttack, settings: dict[str, int]) -> None:
    """Apply explicit settings over the version's. APGD derives its step-size schedule
    from n_iter in its constructor, so a new n_iter means new APGD objects."""
    if "n_iter" in settings:
        common = dict(
            n_iter=settings["n_iter"], norm=aa.norm, eps=aa.epsilon, seed=aa.seed, device=aa.device, logger=aa.logger
        )
        aa.apgd = APGDAttack(aa.model, n_restarts=aa.apgd.n_restarts, **common)
        aa.apgd_targeted = APGDAttack_targeted(
            aa.model,
            n_restarts=aa.apgd_targeted.n_restarts,
            n_target_classes=aa.apgd_targeted.n_target_classes,
            **common,
        )
    for key, value in settings.items():
        for component, attribute in SETTINGS[key]:
            setattr(getattr(aa, component), attribute, value)


def cascade(aa: AutoAttack, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[str | None]]:
    """The attacks of ``aa`` in order, each on the examples still classified correctly."""
    batch = x.shape[0]
    with torch.no_grad():
        robust = aa.get_logits(x).argmax(1) == y
    broken_by: list[str | None] = [None if r else "clean" for r in robust.tolist()]
    accuracy = {"clean": robust.float().mean().item()}
    x_adv = x.clone()
    for name in list(aa.attacks_to_run):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            break
        aa.attacks_to_run = [name]
        for key in checks.funcs:  # the dynamic-defense counters are global and never reset upstream
            checks.funcs[key] = 0
        adv, pred = aa.run_standard_evaluation(x[idx], y[idx], batch_size=batch)
        hit = pred != y[idx]
        x_adv[idx[hit]] = adv[hit]
        robust[idx[hit]] = False
        for i in idx[hit].tolist():
            broken_by[i] = name
        accuracy[name] = robust.float().mean().item()
    checks.check_square_sr(accuracy, logger=aa.logger)
    return x_adv, broken_by


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    seed: int,
    version: str = "standard",
    attacks: list[str] | None = None,
    settings: dict[str, int] | None = None,
) -> AutoAttackResult:
    """Run AutoAttack (L-inf) on one batch and return x_adv, warnings, log and attribution.

    The global RNG is restored afterwards (the components reseed it), and so are the
    parameters' ``.grad`` (FAB calls ``backward()``, which accumulates into them).
    """
    x, y = x.detach(), y.detach()
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    logger = logging.getLogger("auto-attack")
    cuda = [x.device] if x.device.type == "cuda" else []
    with capture(logger) as (found, lines), torch.random.fork_rng(devices=cuda):
        aa = AutoAttack(
            model,
            attacks=attacks if version == "custom" else None,
            version=version,
            eps=eps,
            norm="Linf",
            seed=seed,
            device=x.device,
        )
        configure(aa, settings or {})
        x_adv, broken_by = cascade(aa, x, y)
    for p, g in grads:
        p.grad = g
    for message in found:
        log.warning("AutoAttack: %s", message)
    return AutoAttackResult(x_adv, found, lines, broken_by)
