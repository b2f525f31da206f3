"""The guided filter (He, Sun, Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013): a
classical, training-free refinement of the coarse map with the RGB image as the guide.

In every (2r + 1) x (2r + 1) window w_k the output is a linear function of the guide I:

    q_i = a_k^T I_i + b_k,   a_k = (Sigma_k + eps U)^{-1} cov_k(I, p),   b_k = mean_k(p) - a_k^T mean_k(I)

(Sigma_k the 3x3 covariance of the colour guide in w_k, U the identity), and the coefficients of
all windows covering a pixel are averaged: q_i = mean(a)_i^T I_i + mean(b)_i. ``eps`` sets
which edges are kept: colour variance well above ``eps`` is an edge the output follows, below it
the window is smoothed. Windows are clipped at the border and normalised by their true pixel count.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of x (B, C, H, W) over the (2r + 1)^2 window around each pixel, the window clipped at
    the border (``count_include_pad=False`` divides by the pixels really inside)."""
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Colour guided filter: guide I (B, 3, H, W), source p (B, 1, H, W) -> q (B, 1, H, W)."""
    if guide.shape[0] != src.shape[0] or guide.shape[-2:] != src.shape[-2:] or src.shape[1] != 1:
        raise ValueError(f"guide {tuple(guide.shape)} and source {tuple(src.shape)} do not match")
    I, p = guide.double(), src.double()   # the 3x3 solves are ill-conditioned in flat regions
    B, C, H, W = I.shape
    mean_I, mean_p = box_mean(I, radius), box_mean(p, radius)
    cov_Ip = box_mean(I * p, radius) - mean_I * mean_p                               # (B, 3, H, W)
    outer = (I[:, :, None] * I[:, None]).reshape(B, C * C, H, W)
    sigma = box_mean(outer, radius).reshape(B, C, C, H, W) - mean_I[:, :, None] * mean_I[:, None]
    sigma = sigma.permute(0, 3, 4, 1, 2) + eps * torch.eye(C, dtype=I.dtype, device=I.device)
    a = torch.linalg.solve(sigma, cov_Ip.permute(0, 2, 3, 1)[..., None])[..., 0].permute(0, 3, 1, 2)
    b = mean_p - (a * mean_I).sum(1, keepdim=True)
    q = (box_mean(a, radius) * I).sum(1, keepdim=True) + box_mean(b, radius)
    return q.to(src.dtype)


def filter_probabilities(image: torch.Tensor, probs: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Guided-filter the pet probability of a two-class map (B, 2, H, W) with the image as guide;
    the result is clipped to [0, 1] (the filter can overshoot at edges) and returned as (B, 2, H, W)."""
    pet = guided_filter(image, probs[:, 1:].float(), radius, eps).clamp(0, 1)
    return torch.cat([1 - pet, pet], 1)


class GuidedFilterRefiner(nn.Module):
    """Frozen coarse segmenter followed by the guided filter: (B, 3, H, W) -> (B, 2, H, W).
    Nothing is trained; ``radius`` and ``eps`` are chosen on the validation set."""

    def __init__(self, coarse: nn.Module, radius: int = 4, eps: float = 1e-2):
        super().__init__()
        self.coarse = coarse.requires_grad_(False).eval()
        self.radius, self.eps = radius, eps

    def train(self, mode: bool = True) -> "GuidedFilterRefiner":
        super().train(mode)
        self.coarse.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            coarse = self.coarse(image)
        return filter_probabilities(image, coarse, self.radius, self.eps)
