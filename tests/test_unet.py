"""The U-Net works at any input size, forward and backward."""

import pytest
import torch

from helpers.models.coarse import CoarseSegmenter
from helpers.models.unet import UNet, count_parameters


@pytest.mark.parametrize("size", [(17, 23), (31, 16), (33, 33), (64, 47)])
@pytest.mark.parametrize("bilinear", [True, False])
def test_any_size_forward_backward(size, bilinear):
    net = UNet(in_channels=5, out_channels=3, width=4, depth=3, bilinear=bilinear)
    x = torch.randn(2, 5, *size, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 3, *size)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())


def test_widths_follow_the_config():
    small, wide = UNet(3, 2, width=4, depth=2), UNet(3, 2, width=8, depth=2)
    assert count_parameters(wide) > 3 * count_parameters(small)
    assert UNet(3, 2, width=4, depth=3).downs[-1].block[1].block[0].out_channels == 32


def test_zero_init_head_outputs_zero():
    net = UNet(3, 7, width=4, depth=2, zero_init_head=True)
    assert net(torch.randn(1, 3, 20, 20)).abs().max() == 0


def test_coarse_segmenter_outputs_probabilities_at_input_size():
    m = CoarseSegmenter(classes=2, width=4, depth=2, coarse_size=16)
    p = m(torch.rand(2, 3, 40, 40))
    assert p.shape == (2, 2, 40, 40)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 40, 40))
