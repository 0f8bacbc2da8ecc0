"""Multiscale deep equilibrium classifier (MDEQ) for CIFAR-10.

The architecture follows the authors' MDEQ-Vision description in docs/method.md;
parity is measured by parameter count (LARGE 11,097,438 and XL 48,792,098 with weight
norm's g and v both counted). The equilibrium state of all branches is one flat tensor
of shape (batch, state_size) so that solvers and gradient estimators are model-agnostic.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from deqrobust.sizes import SIZES, MDEQSize

GROUPS = 8
EXPANSION = 5  # inner width of the residual block, as a multiple of the branch width

# How the MDEQ runs fast (docs/performance.md; the original code is the test oracle
# tests/reference_mdeq.py): ReLUs and residual additions run in place where autograd
# allows it; weight-normed weights are computed once per ``cached_weights()`` scope and
# grad mode; and for the sizes in CHANNELS_LAST_SIZES the flat state holds each branch
# in NHWC order, so convolutions run channels-last (the state is just a vector to the
# solvers and estimators: norms and inner products do not see the order).
# Forward + exact input gradient, batch 32, one thread, interleaved A/B: channels-last was
# 14 % faster for tiny (24-channel branches), 16 % slower for mini, within 2 % for small
# and large, and f 13 % slower for xl.
CHANNELS_LAST_SIZES = frozenset({"tiny"})


def _weight(conv: nn.Conv2d) -> torch.Tensor:
    """The conv's weight, taken from the ``cached_weights`` scope when one is open.

    The cache is keyed by grad mode: a weight computed in a no-grad solve has no graph to
    the parameters and must never reach a differentiated application of f.
    """
    cache = conv.__dict__.get("_weight_cache")
    if cache is None:
        return conv.weight
    key = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    weight = cache.get(key)
    if weight is None:
        weight = cache[key] = conv.weight.contiguous(memory_format=cache["format"])
    return weight


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv._conv_forward(x, _weight(conv), conv.bias)


def size_by_name(name: str) -> MDEQSize:
    if name not in SIZES:
        raise ValueError(f"unknown MDEQ size {name!r}; valid sizes: {', '.join(SIZES)}")
    return SIZES[name]


def conv3x3(cin: int, cout: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class VariationalDropout2d(nn.Module):
    """Channel dropout whose mask is drawn once per solve and shared by all f calls."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.mask: torch.Tensor | None = None

    def draw(self, like: torch.Tensor) -> None:
        if self.training and self.p > 0:
            keep = torch.empty(like.shape[0], like.shape[1], 1, 1, device=like.device, dtype=like.dtype)
            self.mask = keep.bernoulli_(1 - self.p) / (1 - self.p)
        else:
            self.mask = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x * self.mask


class ResidualBlock(nn.Module):
    """One branch of f: two weight-normed convs with the input injection added."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        inner = EXPANSION * width
        self.conv1 = weight_norm(conv3x3(width, inner))
        self.gn1 = nn.GroupNorm(GROUPS, inner)
        self.conv2 = weight_norm(conv3x3(inner, width))
        self.gn2 = nn.GroupNorm(GROUPS, width)
        self.gn3 = nn.GroupNorm(GROUPS, width)
        self.drop = VariationalDropout2d(dropout)

    def forward(self, z: torch.Tensor, injection: torch.Tensor | None) -> torch.Tensor:
        out = torch.relu_(self.gn1(_conv(self.conv1, z)))
        out = self.drop(_conv(self.conv2, out))
        if injection is not None:
            out = out.add_(injection)  # in place: fresh intermediates nobody else holds
        out = self.gn2(out).add_(z)
        return self.gn3(torch.relu_(out))


def downsample(channels: tuple[int, ...], src: int, dst: int) -> nn.Sequential:
    """Chain of stride-2 conv3x3 + GN from branch src to the coarser branch dst."""
    steps = []
    for k in range(dst - src):
        last = k == dst - src - 1
        cout = channels[dst] if last else channels[src]
        layers = [conv3x3(channels[src], cout, stride=2), nn.GroupNorm(GROUPS, cout)]
        if not last:
            layers.append(nn.ReLU())
        steps.append(nn.Sequential(*layers))
    return nn.Sequential(*steps)


def upsample(channels: tuple[int, ...], src: int, dst: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels[src], channels[dst], 1, bias=False),
        nn.GroupNorm(GROUPS, channels[dst]),
        nn.Upsample(scale_factor=2 ** (src - dst), mode="nearest"),
    )


class MultiscaleLayer(nn.Module):
    """f(z; x): per-branch residual blocks, multiscale fusion, post-fusion 1x1 convs."""

    def __init__(self, channels: tuple[int, ...], dropout: float):
        super().__init__()
        n = len(channels)
        self.blocks = nn.ModuleList(ResidualBlock(c, dropout) for c in channels)
        self.fuse = nn.ModuleList(
            nn.ModuleList(
                nn.Identity() if i == j else (upsample(channels, j, i) if j > i else downsample(channels, j, i))
                for j in range(n)
            )
            for i in range(n)
        )
        self.post = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(), weight_norm(nn.Conv2d(c, c, 1, bias=False)), nn.GroupNorm(GROUPS // 2, c, affine=False)
            )
            for c in channels
        )

    def forward(self, zs: list[torch.Tensor], injection: torch.Tensor) -> list[torch.Tensor]:
        blocks = [block(z, injection if i == 0 else None) for i, (block, z) in enumerate(zip(self.blocks, zs))]
        fused = []
        for i, row in enumerate(self.fuse):
            parts = [layer(blocks[j]) for j, layer in enumerate(row)]
            total = parts[0] + parts[1] if len(parts) > 1 else parts[0]  # a fresh tensor (never blocks[i] itself)
            for part in parts[2:]:
                total = total.add_(part)
            relu, conv, norm = self.post[i]
            total = torch.relu_(total) if len(parts) > 1 else F.relu(total)
            fused.append(norm(_conv(conv, total)))
        return fused


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int):
        super().__init__()
        cout = width * self.expansion
        # The authors' head bottleneck uses non-affine batch norms (only its shortcut's is affine).
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width, affine=False),
            nn.ReLU(),
            conv3x3(width, width),
            nn.BatchNorm2d(width, affine=False),
            nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout, affine=False),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ClassificationHead(nn.Module):
    """h(z): per-branch bottlenecks, progressive stride-2 downsampling sum, pooled linear."""

    def __init__(self, size: MDEQSize, num_classes: int):
        super().__init__()
        wide = [c * Bottleneck.expansion for c in size.head_channels]
        self.incre = nn.ModuleList(Bottleneck(c, h) for c, h in zip(size.channels, size.head_channels))
        self.down = nn.ModuleList(
            nn.Sequential(conv3x3(wide[i], wide[i + 1], stride=2, bias=True), nn.BatchNorm2d(wide[i + 1]), nn.ReLU())
            for i in range(len(wide) - 1)
        )
        self.final = nn.Sequential(
            nn.Conv2d(wide[-1], size.final_width, 1), nn.BatchNorm2d(size.final_width), nn.ReLU()
        )
        self.classifier = nn.Linear(size.final_width, num_classes)

    def forward(self, zs: list[torch.Tensor]) -> torch.Tensor:
        y = self.incre[0](zs[0])
        for i, down in enumerate(self.down):
            y = self.incre[i + 1](zs[i + 1]) + down(y)
        y = self.final(y).mean(dim=(2, 3))
        return self.classifier(y)


class MDEQ(nn.Module):
    """The DEQ classifier, exposed through the three maps the estimators need.

    ``prepare(x)`` computes the input injection (and draws dropout masks), ``f(z, inj)``
    is one application of the equilibrium layer on the flat state, and ``head(z)`` maps a
    flat state to logits. ``forward`` is never used directly: gradient estimators and
    training compose these pieces (see deqrobust.deq_logits).
    """

    def __init__(self, size: str | MDEQSize = "tiny", num_classes: int = 10, image_size: int = 32):
        super().__init__()
        self.size_name = size if isinstance(size, str) else "custom"
        self.size = size_by_name(size) if isinstance(size, str) else size
        channels = self.size.channels
        c0, down = channels[0], self.size.downsample
        self.stem = nn.Sequential(
            conv3x3(3, c0, stride=2 if down >= 1 else 1),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            conv3x3(c0, c0, stride=2 if down >= 2 else 1),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
            nn.Conv2d(c0, c0, 1, bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(),
        )
        self.layer = MultiscaleLayer(channels, self.size.dropout)
        self.head_net = ClassificationHead(self.size, num_classes)
        base = image_size >> down
        self.shapes = [(c, base >> i, base >> i) for i, c in enumerate(channels)]
        self.state_size = sum(c * h * w for c, h, w in self.shapes)
        self._init_weights()

    def _init_weights(self) -> None:
        """The authors' init: plain convs N(0, 0.01); weight-normed convs keep their default.

        Small fusion and head weights start f close to a contraction, so the solver
        converges from the first iterations.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not hasattr(module, "parametrizations"):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.normal_(module.bias, 0.0, 0.01)

    @contextmanager
    def cached_weights(self) -> Iterator[None]:
        """Within this scope the weight-normed weights are computed once per grad mode.

        Open it around one forward (solve, estimator graph and head; DEQLogits does) and
        never across an optimizer step. Nested scopes share the outermost cache.
        """
        if self.__dict__.get("_cache_depth", 0):
            self.__dict__["_cache_depth"] = self.__dict__.get("_cache_depth", 0) + 1
            try:
                yield
            finally:
                self.__dict__["_cache_depth"] -= 1
            return
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d) and hasattr(m, "parametrizations")]
        self.__dict__["_cache_depth"] = 1
        for conv in convs:
            conv.__dict__["_weight_cache"] = {"format": self.memory_format()}
        try:
            yield
        finally:
            for conv in convs:
                conv.__dict__.pop("_weight_cache", None)
            self.__dict__["_cache_depth"] = 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Input injection for branch 0; also draws this solve's dropout masks."""
        injection = self.stem(x.contiguous(memory_format=self.memory_format()))
        for block in self.layer.blocks:
            block.drop.draw(torch.empty(x.shape[0], block.conv2.out_channels, device=x.device, dtype=x.dtype))
        return injection

    def channels_last(self) -> bool:
        """Whether the flat state is in per-branch NHWC order (the sizes where that measured faster)."""
        return self.size_name in CHANNELS_LAST_SIZES

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last() else torch.contiguous_format

    def init_state(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.state_size)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Per-branch NCHW tensors from the flat state (channels-last views when ``channels_last()``)."""
        sizes = [c * h * w for c, h, w in self.shapes]
        if self.channels_last():
            return [
                part.unflatten(1, (h, w, c)).permute(0, 3, 1, 2)
                for part, (c, h, w) in zip(z.split(sizes, dim=1), self.shapes)
            ]
        return [part.reshape(-1, *shape) for part, shape in zip(z.split(sizes, dim=1), self.shapes)]

    def join(self, zs: list[torch.Tensor]) -> torch.Tensor:
        if self.channels_last():
            return torch.cat([z.permute(0, 2, 3, 1).flatten(1) for z in zs], dim=1)
        return torch.cat([z.flatten(1) for z in zs], dim=1)

    def f(self, z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        return self.join(self.layer(self.split(z), injection))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return self.head_net(self.split(z))
