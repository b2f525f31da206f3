"""U-Net (Ronneberger et al., MICCAI 2015) from named parts, after milesial/Pytorch-UNet.

Widths double at each of ``depth`` down-sampling steps from ``width``; any input size works,
because each skip connection is padded (or cropped) to the up-sampled tensor's size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Module):
    """(conv 3x3 -> BatchNorm -> ReLU) x 2: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None):
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """Max-pool by 2 then DoubleConv: (B, C_in, H, W) -> (B, C_out, H // 2, W // 2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    """Up-sample by 2, concatenate the skip, DoubleConv.

    (B, C_in, h, w) and skip (B, C_skip, H, W) -> (B, C_out, H, W). Sizes need not be exact
    multiples of two: the up-sampled tensor is padded or cropped to the skip's size.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, bilinear: bool = True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_ch = in_ch
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
            up_ch = in_ch // 2
        self.conv = DoubleConv(up_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, h, w), skip (B, C_skip, H, W) -> DoubleConv([skip, up(x)]) (B, C_out, H,
        W)."""
        # BEGIN EXERCISE unet-up
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        # negative padding crops: odd sizes lose a row in pooling and gain it back here
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))
        # END EXERCISE


class OutConv(nn.Module):
    """1x1 convolution to the output channels: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, zero_init: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        if zero_init:  # refiner heads start at the identity propagation
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Encoder-decoder with skips: (B, in_channels, H, W) -> (B, out_channels, H, W).

    ``width`` is the first level's channel count; level ``i`` has ``width * 2**i`` channels.
    ``features`` returns the last decoder features (B, width, H, W) for task heads.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        *,
        width: int = 16,
        depth: int = 4,
        bilinear: bool = True,
        zero_init_head: bool = False,
    ):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("depth and width must be positive")
        widths = [width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], widths[i], bilinear) for i in reversed(range(depth))
        )
        self.head = OutConv(widths[0], out_channels, zero_init=zero_init_head)
        self.in_channels, self.out_channels = in_channels, out_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
