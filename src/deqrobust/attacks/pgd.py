"""L-inf projected gradient descent (Madry et al. 2018) on [0,1] images.

The model is only called as ``model(x)`` and the input gradient comes from
``torch.autograd.grad`` of the summed loss, so whatever gradient estimator the model
puts in its backward pass (the DEQ estimators are custom autograd functions) is what
the attack follows. The model's train/eval mode is the caller's business.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: best wrong logit minus the true one (not saturating like CE)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (wrong - true).sum()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"ce": cross_entropy, "cw": cw_margin}


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Into the L-inf ball of radius eps around x, then into the image range [0,1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None,
    loss: str,
) -> torch.Tensor:
    """One PGD run: optional uniform start in the ball, then ``steps`` sign-gradient ascent steps."""
    loss_fn = LOSSES[loss]
    x_adv = x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = project(x + (2 * noise - 1) * eps, x, eps)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            value = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(value, x_adv)
        x_adv = project(x_adv.detach() + step * grad.sign(), x, eps)
    return x_adv.detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss: str = "ce",
) -> torch.Tensor:
    """PGD with restarts; per example keep the first misclassified result, else the last run's.

    Later restarts attack only the examples not yet misclassified. ``generator`` (on
    x's device) draws the random starts, so a seeded generator repeats the run.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown PGD loss {loss!r}; valid losses: {', '.join(LOSSES)}")
    x, y = x.detach(), y.detach()
    best = x.clone()
    todo = torch.arange(x.shape[0], device=x.device)
    for restart in range(restarts):
        x_adv = pgd_run(model, x[todo], y[todo], eps, step, steps, random_start, generator, loss)
        best[todo] = x_adv
        if restart == restarts - 1:
            break
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y[todo]
        todo = todo[~fooled]
        if todo.numel() == 0:
            break
    return best
