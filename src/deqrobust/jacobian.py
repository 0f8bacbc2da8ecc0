"""The Jacobian regulariser of DEQ training: a penalty on ||J_f(z*)||_F.

Training adds ``training.jac_reg.weight`` times this estimate to the loss on a share of
the iterations (``DEQLogits(jac_probes=...)`` computes it); it keeps f contractive near
its fixed point, so the solver keeps converging as the weights change.
"""

from __future__ import annotations

from typing import Callable

import torch


def jacobian_penalty(f: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, probes: int) -> torch.Tensor:
    """Hutchinson estimate of ||J_f(z)||_F^2 / dim, differentiable in the parameters."""
    z = z.detach().requires_grad_()
    fz = f(z)
    total = fz.new_zeros(())
    for _ in range(probes):
        v = torch.randn_like(fz)
        (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)
        total = total + vjp.pow(2).sum() / vjp.numel()
    return total / probes
