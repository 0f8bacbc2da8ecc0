"""Deep baselines: parameter counts derived from the architecture, shapes, eval mode."""

import pytest
import torch

from deqrobust.models import build_model
from deqrobust.models.baselines import PreActResNet18, WideResNet


def conv(cin, cout, k=3):
    return cin * cout * k * k  # convs carry no bias (each is followed by BN)


def bn(c):
    return 2 * c


def block(cin, cout):
    """Pre-activation block: BN, conv3x3, BN, conv3x3, 1x1 shortcut when the shape changes."""
    return bn(cin) + conv(cin, cout) + bn(cout) + conv(cout, cout) + (conv(cin, cout, 1) if cin != cout else 0)


def prenet(stem, widths, blocks, classes=10):
    """Stem conv, stages of blocks, final BN, linear head with bias."""
    total, cin = conv(3, stem), stem
    for width, n in zip(widths, blocks):
        total += block(cin, width) + (n - 1) * block(width, width)
        cin = width
    return total + bn(cin) + cin * classes + classes


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_preact_resnet18_parameters():
    expected = prenet(64, [64, 128, 256, 512], [2, 2, 2, 2])
    assert expected == 11_172_170
    assert count(PreActResNet18()) == expected
    assert count(PreActResNet18(num_classes=100)) == expected + 90 * 513


def test_wrn34_10_parameters():
    expected = prenet(16, [160, 320, 640], [5, 5, 5])
    assert expected == 46_160_474
    assert count(WideResNet(depth=34, widen_factor=10)) == expected
    assert count(WideResNet(depth=16, widen_factor=2)) == prenet(16, [32, 64, 128], [2, 2, 2])


def test_wrn_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNet(depth=33)


@pytest.mark.parametrize("spec", [{"arch": "preact_resnet18"}, {"arch": "wrn34_10"}])
def test_forward_eval_mode(spec):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (2, 10) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # eval mode is deterministic
    assert not model.training
