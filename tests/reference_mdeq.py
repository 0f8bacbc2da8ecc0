"""Test oracle: the original, straightforward forward code of deqrobust.models.mdeq.

``ReferenceMDEQ(deq)`` runs a product MDEQ's own modules (so the parameters are shared)
the way the first version did: every convolution recomputes its weight-normed weight,
ReLUs and additions are out of place, the fusion is a plain sum, and the flat state is
always in NCHW order. The product caches weights per forward, works in place, and keeps
tiny's state channels-last; tests/test_speed_equivalence.py checks it computes the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deqrobust.models.mdeq import MDEQ, MultiscaleLayer, ResidualBlock


def block_forward(block: ResidualBlock, z: torch.Tensor, injection: torch.Tensor | None) -> torch.Tensor:
    out = F.relu(block.gn1(block.conv1(z)))
    out = block.drop(block.conv2(out))
    if injection is not None:
        out = out + injection
    out = block.gn2(out) + z
    return block.gn3(F.relu(out))


def layer_forward(layer: MultiscaleLayer, zs: list[torch.Tensor], injection: torch.Tensor) -> list[torch.Tensor]:
    blocks = [
        block_forward(block, z, injection if i == 0 else None) for i, (block, z) in enumerate(zip(layer.blocks, zs))
    ]
    return [layer.post[i](sum(fuse(blocks[j]) for j, fuse in enumerate(row))) for i, row in enumerate(layer.fuse)]


class ReferenceMDEQ(nn.Module):
    """The MDEQ interface (prepare, f, head, init_state) over a product model's modules."""

    def __init__(self, deq: MDEQ):
        super().__init__()
        self.deq = deq
        self.state_size = deq.state_size

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        injection = self.deq.stem(x)
        for block in self.deq.layer.blocks:  # the same draws, in the same order, as the product
            block.drop.draw(torch.empty(x.shape[0], block.conv2.out_channels, device=x.device, dtype=x.dtype))
        return injection

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.state_size)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        sizes = [c * h * w for c, h, w in self.deq.shapes]
        return [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, dim=1), self.deq.shapes)]

    def join(self, zs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in zs], dim=1)

    def f(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        return self.join(layer_forward(self.deq.layer, self.split(z), injection))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.deq.head_net(self.split(z))
