"""The guided filter (He, Sun, Tang, "Guided Image Filtering", ECCV 2010 / TPAMI 2013): a
classical, training-free refinement of the coarse map with the RGB image as the guide.

In every (2r + 1) x (2r + 1) window w_k the output is a linear function of the guide I:

    q_i = a_k^T I_i + b_k,   a_k = (Sigma_k + eps U)^{-1} cov_k(I, p),
                             b_k = mean_k(p) - a_k^T mean_k(I)

(Sigma_k the 3x3 covariance of the colour guide in w_k, U the identity), and the coefficients of
all windows covering a pixel are averaged: q_i = mean(a)_i^T I_i + mean(b)_i. ``eps`` sets
which edges are kept: colour variance well above ``eps`` is an edge the output follows, below it
the window is smoothed. Windows are clipped at the border and normalised by their true pixel count.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..analysis.metrics import SegmentationMeter

GUIDED_FILTER_GRID = {
    "radius": (2, 4, 8),
    "eps": (1e-3, 1e-2, 1e-1),
}  # what tune_guided_filter searches


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of x (B, C, H, W) over the (2r + 1)^2 window around each pixel, the window clipped at
    the border (``count_include_pad=False`` divides by the pixels really inside). O(r) per pixel."""
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    k = 2 * radius + 1
    # separable: the clipped rectangle's mean is the mean over rows of the means over columns
    x = F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)


def solve_symmetric3(s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Solve S x = v per pixel for symmetric 3x3 S, by the adjugate (closed form, element-wise,
    many times faster than a batched ``linalg.solve`` over every pixel).

    s (B, 6, H, W) holds S's upper triangle (s00, s01, s02, s11, s12, s22); v (B, 3, H, W)."""
    a, b, c, d, e, f = s.unbind(1)
    A, B, C = d * f - e * e, c * e - b * f, b * e - c * d  # cofactors, the adjugate's entries
    D, E, F = a * f - c * c, b * c - a * e, a * d - b * b
    det = a * A + b * B + c * C
    x, y, z = v.unbind(1)
    return (
        torch.stack([A * x + B * y + C * z, B * x + D * y + E * z, C * x + E * y + F * z], 1)
        / det[:, None]
    )


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Colour guided filter: guide I (B, 3, H, W), source p (B, 1, H, W) -> q (B, 1, H, W)."""
    if (
        guide.shape[0] != src.shape[0]
        or guide.shape[-2:] != src.shape[-2:]
        or src.shape[1] != 1
        or guide.shape[1] != 3
    ):
        raise ValueError(f"guide {tuple(guide.shape)} and source {tuple(src.shape)} do not match")
    I, p = guide.double(), src.double()  # float64: Sigma + eps U is nearly singular in flat regions
    mean_I, mean_p = box_mean(I, radius), box_mean(p, radius)
    cov_Ip = box_mean(I * p, radius) - mean_I * mean_p  # (B, 3, H, W)
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    products = torch.stack([I[:, i] * I[:, j] for i, j in pairs], 1)
    sigma = box_mean(products, radius) - torch.stack(
        [mean_I[:, i] * mean_I[:, j] for i, j in pairs], 1
    )
    sigma[:, [0, 3, 5]] += eps  # + eps U on the diagonal
    a = solve_symmetric3(sigma, cov_Ip)
    b = mean_p - (a * mean_I).sum(1, keepdim=True)
    q = (box_mean(a, radius) * I).sum(1, keepdim=True) + box_mean(b, radius)
    return q.to(src.dtype)


def filter_probabilities(
    image: torch.Tensor, probs: torch.Tensor, radius: int, eps: float
) -> torch.Tensor:
    """Guided-filter the pet probability of a two-class map (B, 2, H, W) with the image as guide;
    the result is clipped to [0, 1] (the filter can overshoot at edges) and returned as (B, 2, H,
    W)."""
    pet = guided_filter(image, probs[:, 1:].float(), radius, eps).clamp(0, 1)
    return torch.cat([1 - pet, pet], 1)


class GuidedFilterRefiner(nn.Module):
    """Frozen coarse segmenter followed by the guided filter: (B, 3, H, W) -> (B, 2, H, W).
    Nothing is trained; ``radius`` and ``eps`` are chosen on the validation set."""

    def __init__(self, coarse: nn.Module, *, radius: int = 4, eps: float = 1e-2):
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


def tune_guided_filter(
    coarse_probs: torch.Tensor,
    dataset,
    batch_size: int,
    grid: dict | None = None,
    device: str | torch.device | None = None,
) -> tuple[tuple[int, float], dict]:
    """The (radius, eps) of ``grid`` whose filtered maps of ``coarse_probs`` (N, 2, H, W) score the
    best pooled mIoU on ``dataset`` (whose images guide the filter), and every setting's score.
    Filtering and counting run on ``device`` (default: where ``coarse_probs`` are)."""
    grid = grid or GUIDED_FILTER_GRID
    device = coarse_probs.device if device is None else torch.device(device)
    scores = {}
    for radius in grid["radius"]:
        for eps in grid["eps"]:
            meter = SegmentationMeter(num_classes=coarse_probs.shape[1])
            # batches: the 3x3 solves are memory-hungry
            for lo in range(0, len(dataset), batch_size):
                images = dataset.images[lo : lo + batch_size].to(device).float() / 255
                probs = filter_probabilities(
                    images, coarse_probs[lo : lo + batch_size].to(device), radius, eps
                )
                meter.update(
                    probs.argmax(1), dataset.targets[lo : lo + batch_size].to(device).long()
                )
            scores[(radius, eps)] = meter.summary()["miou"]
    return max(scores, key=scores.get), scores
