"""Same-size deep baselines for CIFAR-10: PreAct ResNet-18 and WideResNet-34-10.

Both take raw [0,1] pixels (no normalisation layer, the MDEQ's input convention) and
return logits. Both are pre-activation networks (He et al. 2016; Zagoruyko & Komodakis
2016) in the form used by the adversarial-training literature (Madry et al., Wong et
al., Rice et al.): BN-ReLU before each conv, a 1x1-conv shortcut that reads the
pre-activated input where the shape changes, and a final BN-ReLU before pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3 twice plus the shortcut (1x1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class PreActNet(nn.Module):
    """Stem conv3x3, stages of pre-activation blocks, final BN-ReLU, global pool, linear."""

    def __init__(self, stem: int, widths: list[int], blocks: int | list[int], num_classes: int):
        super().__init__()
        counts = blocks if isinstance(blocks, list) else [blocks] * len(widths)
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        stages, cin = [], stem
        for i, (width, n) in enumerate(zip(widths, counts)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *[PreActBlock(cin if j == 0 else width, width, stride if j == 0 else 1) for j in range(n)]
                )
            )
            cin = width
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(cin)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.stages(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActResNet18(PreActNet):
    """PreAct ResNet-18 (11,172,170 parameters with 10 classes at the standard width 64).

    ``width`` scales every stage; CPU profiles use a narrow one to match a small DEQ's size.
    """

    def __init__(self, num_classes: int = 10, width: int = 64):
        super().__init__(width, [width, 2 * width, 4 * width, 8 * width], [2, 2, 2, 2], num_classes)


class WideResNet(PreActNet):
    """WRN-depth-k: (depth-4)/6 blocks per stage, widths 16k, 32k, 64k (WRN-34-10: 46,156,474)."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10):
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        k = widen_factor
        super().__init__(16, [16 * k, 32 * k, 64 * k], (depth - 4) // 6, num_classes)
        # He initialisation as in the reference WRN code (convs fan-out, zero linear bias).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
