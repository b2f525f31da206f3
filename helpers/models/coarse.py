"""The deliberately coarse segmenter: a small U-Net at low resolution, its map up-sampled.

(B, 3, H, W) in [0, 1] -> probabilities (B, C, H, W); its boundaries are blobby by design.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import Config
from .unet import UNet


class CoarseSegmenter(nn.Module):
    """U-Net at ``coarse_size`` px: (B, 3, H, W) in [0, 1] -> probabilities (B, C, H, W)."""

    def __init__(self, *, classes: int = 2, width: int = 16, depth: int = 4, coarse_size: int = 64):
        super().__init__()
        self.unet = UNet(3, classes, width=width, depth=depth)
        self.coarse_size = coarse_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = image.shape[-2:]
        small = F.interpolate(
            image,
            size=(self.coarse_size,) * 2,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        logits = self.unet(small).float()
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)

    @classmethod
    def from_config(cls, cfg: Config, classes: int = 2) -> "CoarseSegmenter":
        return cls(
            classes=classes,
            width=cfg.coarse_width,
            depth=cfg.coarse_depth,
            coarse_size=cfg.coarse_size,
        )
