"""Evaluate your own DEQ: a worked example to copy (README, "Evaluate your own DEQ").

1. Define the DEQ. Here a TorchDEQ model as TorchDEQ's own examples build one: an injection, an
   equilibrium layer f(z, injection), a head and ``torchdeq.get_deq``. Any model that meets the
   DEQ protocol (deqrobust.protocol: prepare, f, init_state, head on flat states) works as well.
2. Write its factory: a function that builds it, for the profile's ``factory:`` key. A TorchDEQ
   model goes through ``deqrobust.adapters.torchdeq.wrap``, which hands its injection, layer and
   head to deqrobust's solvers and estimators: TorchDEQ solves under ``no_grad`` in eval mode, so
   an attack on its own forward would get no gradient through the equilibrium.
3. Train it and save its state dict (below: a short standard training on the profile's CIFAR-10
   training split, after `deqrobust data -c config/byo.yaml` has prepared it; use your own
   weights instead):

       mkdir -p results/byo && PYTHONPATH=examples python examples/byo_deq.py --out results/byo/example-weights.pt

4. Evaluate it (every gradient estimator, the deployed model's true gradient, intermediate-state
   attacks and defenses, the analysis and the report):

       PYTHONPATH=examples snakemake --workflow-profile workflow/profiles/default --configfile config/byo.yaml

   (config/byo.yaml names this example's model; give yours with
   --config 'models={mine: {factory: mypkg.models:build, weights: w.pt, training: pgd}}')

5. Read reports/byo/report.md (and reports/byo/figures/).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from deqrobust.adapters.torchdeq import wrap


class ExampleDEQ(nn.Module):
    """A one-scale convolutional DEQ on CIFAR-10, built the TorchDEQ way."""

    def __init__(self, channels: int = 16):
        import torchdeq  # the extra: pip install 'deqrobust[torchdeq]'

        super().__init__()
        self.inject = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.GroupNorm(4, channels))
        self.layer = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(4, channels)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * channels, 10))
        self.deq = torchdeq.get_deq(f_solver="anderson", f_max_iter=8, f_tol=1e-3)

    def f(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        return self.norm(torch.relu(self.layer(z) + injection))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        injection = self.inject(x)
        z_out, _ = self.deq(lambda z: self.f(z, injection), torch.zeros_like(injection))
        return self.head(z_out[-1])


def build(channels: int = 16) -> nn.Module:
    """The factory (``factory: byo_deq:build``): the model through the DEQ protocol."""
    return wrap(ExampleDEQ(channels), f="f", inject="inject", head="head")


def train(config: str, out: str, steps: int, channels: int) -> None:
    """A short standard training with TorchDEQ's own gradient, on the profile's training split."""
    from deqrobust import config as profile
    from deqrobust.data import load_split

    cfg = profile.load(config)
    x, y = load_split(cfg, "train")
    net = ExampleDEQ(channels)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(cfg["seed"])
    net.train()
    for step in range(steps):
        batch = torch.randint(0, len(y), (64,), generator=generator)
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    torch.save(net.state_dict(), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="config/byo.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--channels", type=int, default=16)
    args = parser.parse_args()
    train(args.config, args.out, args.steps, args.channels)
