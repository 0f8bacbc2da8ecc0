"""A small contractive DEQ with the MDEQ interface, for exact gradient checks.

f(z; x) = tanh(W z + U x) with ||W||_2 = 0.5 is a contraction, so its fixed point and
implicit gradient are well defined and every solver converges.
"""

import torch
from torch import nn


class ToyDEQ(nn.Module):
    def __init__(self, dim: int = 12, inputs: int = 6, classes: int = 4, contraction: float = 0.5, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        self.W = nn.Parameter(contraction * w / torch.linalg.matrix_norm(w, ord=2))
        self.U = nn.Parameter(torch.randn(dim, inputs, generator=gen, dtype=torch.float64) / inputs**0.5)
        self.V = nn.Parameter(torch.randn(classes, dim, generator=gen, dtype=torch.float64))
        self.state_size = dim

    def prepare(self, x):
        return x.flatten(1) @ self.U.T

    def init_state(self, x):
        return x.new_zeros(x.shape[0], self.state_size)

    def f(self, z, injection):
        return torch.tanh(z @ self.W.T + injection)

    def head(self, z):
        return z @ self.V.T
