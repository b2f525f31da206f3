"""Training losses: cross-entropy of probability maps, weighted at boundaries, over iterations.

Every loss here takes probabilities (B, C, H, W) (what the segmenters return) and class indices
(B, H, W), and returns a scalar. The refiner's loss can supervise every propagation iteration
(``deep``: each H^t must already be a good map, as NLSPN and DySPN train their intermediate
outputs) and weigh the pixels near the target's boundary more (``boundary_weight``): that band
is where a refiner is meant to act, and it is a few percent of the pixels, so a plain mean lets
the easy interior dominate the gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..analysis.metrics import boundary_band, boundary_width


def segmentation_loss(
    probs: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of probabilities (B, C, H, W) against class indices (B, H, W); with
    ``weight`` (B, H, W) the weighted mean sum(w * ce) / sum(w)."""
    ce = F.nll_loss(
        torch.log(probs.float().clamp_min(1e-6)),
        target,
        reduction="none" if weight is not None else "mean",
    )
    return ce if weight is None else (weight * ce).sum() / weight.sum()


def boundary_weights(
    target: torch.Tensor, boundary_weight: float, classes: int
) -> torch.Tensor | None:
    """(B, H, W) float: ``boundary_weight`` in the boundary band of any class of ``target``
    (the Boundary IoU band, 2% of the diagonal), 1 elsewhere; None when the weight is 1."""
    if boundary_weight == 1.0:
        return None
    width = boundary_width(target.shape[-2], target.shape[-1])
    band = torch.zeros_like(target, dtype=torch.bool)
    for c in range(classes):
        band |= boundary_band(target == c, width)
    return torch.where(band, boundary_weight, 1.0).to(torch.float32)


def refinement_loss(
    maps: list[torch.Tensor],
    target: torch.Tensor,
    deep: bool = False,
    boundary_weight: float = 1.0,
    start_weight: float = 0.0,
) -> torch.Tensor:
    """Loss of a refiner's maps H^0 .. H^T (each (B, C, H, W)): the cross-entropy of H^T, or with
    ``deep`` the mean over t = 1..T of the cross-entropy of H^t, plus ``start_weight`` times the
    cross-entropy of H^0 (0 by default: the start map is not the refiner's output; a refiner that
    predicts its own start may be asked to make it a good map by itself); pixels weighted by
    :func:`boundary_weights`."""
    weight = boundary_weights(target, boundary_weight, maps[-1].shape[1])
    supervised = maps[1:] if deep and len(maps) > 1 else maps[-1:]
    loss = torch.stack([segmentation_loss(h, target, weight) for h in supervised]).mean()
    return (
        loss + start_weight * segmentation_loss(maps[0], target, weight) if start_weight else loss
    )
