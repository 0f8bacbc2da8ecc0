"""A TorchDEQ model seen through the DEQ protocol (deqrobust.protocol).

A model built with TorchDEQ (``torchdeq.get_deq``) solves ``z = f(z, injection)`` under ``no_grad``
in eval mode and returns only the final state, so an attack run on its own forward gets no
gradient through the equilibrium (TorchDEQ issue #4): the obfuscation the paper warns about. This
adapter hands the model's own modules (its injection, layer and head) to this package's solvers
and estimators instead, so every attack differentiates the deployed computation as it should,
and the true gradient of the deployed solver is available (``solver_autograd``).

TorchDEQ's states may be a tensor or a list of tensors of any shape; the protocol's are flat, so
the adapter flattens them (and restores their shapes for ``f`` and the head). The wrapped model's
state dict is the adapter's: its weights file loads as the user saved it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

State = torch.Tensor | Sequence[torch.Tensor]


def _member(net: nn.Module, given: str | Callable) -> Callable:
    return getattr(net, given) if isinstance(given, str) else given


class TorchDEQAdapter(nn.Module):
    """``net`` (a TorchDEQ user's model) as a protocol DEQ. ``inject(x)`` gives the injection,
    ``f(z, injection)`` is the equilibrium layer and ``head(z)`` the classifier, each an attribute
    name of ``net`` or a callable; the initial state is zeros shaped like the injection, as in
    TorchDEQ's examples, unless ``z_init(x, injection)`` says otherwise."""

    def __init__(
        self,
        net: nn.Module,
        f: str | Callable = "f",
        inject: str | Callable = "inject",
        head: str | Callable = "head",
        z_init: Callable[[torch.Tensor, State], State] | None = None,
    ):
        super().__init__()
        self.net = net
        # Plain attributes, not submodules: the weights are the wrapped model's, registered once.
        members = {"_f": f, "_inject": inject, "_head": head}
        for name, member in members.items():
            object.__setattr__(self, name, _member(net, member))
        self._z_init = z_init
        self._shapes: list[torch.Size] | None = None  # per-sample shapes of the state's tensors

    # The weights are the wrapped model's, under its own names.
    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- the protocol
    def prepare(self, x: torch.Tensor) -> State:
        injection = self._inject(x)
        self._shapes = [t.shape[1:] for t in self._tensors(self._initial(x, injection))]
        return injection

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return self._flat(self._initial(x, self._inject(x)))

    def f(self, z: torch.Tensor, injection: State) -> torch.Tensor:
        return self._flat(self._f(self._unflat(z), injection))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self._head(self._unflat(z))

    # ---- flat states
    def _initial(self, x: torch.Tensor, injection: State) -> State:
        if self._z_init is not None:
            return self._z_init(x, injection)
        if isinstance(injection, torch.Tensor):
            return torch.zeros_like(injection)
        return [torch.zeros_like(t) for t in injection]

    @staticmethod
    def _tensors(z: State) -> list[torch.Tensor]:
        return [z] if isinstance(z, torch.Tensor) else list(z)

    def _flat(self, z: State) -> torch.Tensor:
        parts = self._tensors(z)
        return parts[0].flatten(1) if len(parts) == 1 else torch.cat([t.flatten(1) for t in parts], dim=1)

    def _unflat(self, z: torch.Tensor) -> State:
        if self._shapes is None:
            raise RuntimeError("TorchDEQAdapter: prepare(x) must run before f or head (it learns the state's shape)")
        sizes = [s.numel() for s in self._shapes]
        parts = [p.reshape(z.shape[0], *s) for p, s in zip(z.split(sizes, dim=1), self._shapes)]
        return parts[0] if len(parts) == 1 else parts


def wrap(net: nn.Module, **members) -> TorchDEQAdapter:
    """``net`` through the protocol (see TorchDEQAdapter for ``f``, ``inject``, ``head``, ``z_init``)."""
    return TorchDEQAdapter(net, **members)
