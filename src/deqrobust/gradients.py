"""Input gradients of an attacked DEQ and how they compare: the measurements behind the
mechanism diagnostics.

- ``true_gradient_model(model)``: the same DEQ, state, solvers and logits as ``model``, with
  the true gradient of its output (deqrobust.estimators.true_gradient) instead of its
  estimator's; the reference an estimator's gradient is measured against.
- ``batched_gradient(model, x, y, batch_size)``: input gradients solved in batches of
  ``batch_size`` (the evaluation's: batch coupling depends on it); ``cosine`` compares two.
- ``deployed_model(model)``: the DEQ as deployed (its own output at the final state, the
  final defense) under its true gradient: the reference of claim 2's precondition, because
  an attack is scored on the deployed model whatever output its estimator differentiates
  (unroll's output is the unrolled state, not the deployed one).
- ``batch_dependence(model, x, y, images=None)``: per image (the first ``images`` of the
  batch), the cosine between its input gradient when solved in the batch ``x`` and when
  solved alone. 1 under per-sample solver decisions
  (``coupling: sample``); under the authors' ``coupling: batch`` it measures how much the
  other images of the batch move the gradient.

Gradients are of the summed cross-entropy, so each image's gradient is that of its own loss
(images interact only through the solver's batch decisions, which carry no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqrobust.deq_logits import DEQLogits
from deqrobust.estimators import SolverAutograd, true_gradient


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropies)/dx through ``model``'s backward pass (its estimator)."""
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image cosine similarity of two gradient batches (0 where either is zero)."""
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-30)


def true_gradient_model(model: DEQLogits) -> DEQLogits:
    """``model`` (a DEQ under estimator E at a state) with the true gradient of E's output."""
    return DEQLogits(
        model.deq, true_gradient(model.estimator), model.state, model.solver, model.backward_solver, own=model.own
    ).train(model.training)


def deployed_model(model: DEQLogits) -> DEQLogits:
    """The deployed DEQ of ``model`` (same weights, solvers and own estimator) under the true gradient."""
    return DEQLogits(model.deq, SolverAutograd(), None, model.solver, model.backward_solver, own=model.own).train(
        model.training
    )


def batched_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``input_gradient`` over batches of ``batch_size``."""
    return torch.cat(
        [input_gradient(model, x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]
    )


def batch_dependence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, images: int | None = None) -> torch.Tensor:
    """Per image, cosine between its input gradient solved in the batch ``x`` and solved alone;
    for the first ``images`` images of the batch (default: all; each alone costs a solve)."""
    count = len(x) if images is None else min(images, len(x))
    together = input_gradient(model, x, y)[:count]
    alone = torch.cat([input_gradient(model, x[i : i + 1], y[i : i + 1]) for i in range(count)])
    return cosine(together, alone)
