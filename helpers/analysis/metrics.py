"""Segmentation metrics: pooled confusion matrix, (m)IoU, per-image mIoU, Boundary IoU.

All functions take integer label maps ``(B, H, W)`` (or ``(H, W)``) with values in
``0..num_classes-1``. A class that is absent from both prediction and ground truth has no IoU
(``nan``) and is left out of the mean, so an all-background image predicted all-background
scores 1.0, not 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PET = 1  # class index of the pet in both the binary and the 3-class task


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int = 2
) -> torch.Tensor:
    """(C, C) int64 counts; row = ground truth class, column = predicted class.

    pred, target: integer maps of the same shape (any, e.g. (B, H, W)) with values 0..C-1;
    ``cm[i, j]`` counts the pixels of class i predicted as class j (on the CPU).
    """
    # BEGIN EXERCISE miou
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    idx = target.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    return (
        torch.bincount(idx, minlength=num_classes * num_classes)
        .reshape(num_classes, num_classes)
        .cpu()
    )
    # END EXERCISE


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN) for each class (float64, ``nan`` where the union is empty).

    cm: (C, C) counts from :func:`confusion_matrix` (rows ground truth) -> (C,) float64.
    """
    # BEGIN EXERCISE miou
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    # END EXERCISE


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over the classes that occur (the report's mIoU when ``cm`` is pooled)."""
    return float(torch.nanmean(iou_per_class(cm)))


def boundary_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels of ``mask`` (B, H, W bool) within ``width`` px (chessboard) of its contour.

    As in Cheng et al. (CVPR 2021) the image border counts as contour: a mask touching the
    border has a band along it. mask (B, H, W) bool -> band (B, H, W) bool: mask AND NOT
    erode(mask, width), the erosion by a (2 width + 1)^2 square.
    """
    # BEGIN EXERCISE boundary-band
    inside = mask.float().unsqueeze(1)
    # erosion = 1 - dilation of the complement; padding with 1 puts "outside" beyond the border
    outside = F.pad(1.0 - inside, (width,) * 4, value=1.0)
    eroded = 1.0 - F.max_pool2d(outside, 2 * width + 1, stride=1)
    return (inside - eroded).squeeze(1) > 0.5
    # END EXERCISE


def boundary_width(height: int, width: int, ratio: float = 0.02) -> int:
    """Band width: ``ratio`` of the image diagonal, at least one pixel."""
    return max(1, round(ratio * (height**2 + width**2) ** 0.5))


def boundary_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int = 2,
    ratio: float = 0.02,
    per_image: bool = False,
) -> torch.Tensor:
    """(C, 2) int64 on pred's device: per class, intersection and union of the boundary bands of
    pred and target (counted where the maps are, so a GPU's maps are never copied). With
    ``per_image`` (B, C, 2), one row per image of the batch: summed over images, the same counts
    (every band is computed inside its own image)."""
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    d = boundary_width(pred.shape[-2], pred.shape[-1], ratio)
    out = torch.zeros(pred.shape[0], num_classes, 2, dtype=torch.int64, device=pred.device)
    for c in range(num_classes):
        bp = boundary_band(pred == c, d)
        bt = boundary_band(target == c, d)
        out[:, c, 0] = (bp & bt).sum((-2, -1))
        out[:, c, 1] = (bp | bt).sum((-2, -1))
    return out if per_image else out.sum(0)


def boundary_iou(counts: torch.Tensor) -> float:
    """Mean over classes of pooled boundary intersection / union (classes with no band skipped)."""
    inter, union = counts[:, 0].double(), counts[:, 1].double()
    ious = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    return float(torch.nanmean(ious))


def per_image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """mIoU of each image of a batch (B,) float64, as the report quotes for Abyssinian_100."""
    return torch.tensor(
        [mean_iou(confusion_matrix(p, t, num_classes)) for p, t in zip(pred, target)],
        dtype=torch.float64,
    )


@dataclass
class SegmentationMeter:
    """Accumulates pooled counts over batches; :meth:`summary` gives the report's metrics."""

    num_classes: int = 2
    cm: torch.Tensor = field(default=None)
    bcounts: torch.Tensor = field(default=None)
    image_miou: list = field(default_factory=list)

    def __post_init__(self):
        self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self.bcounts = torch.zeros(self.num_classes, 2, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of label maps (B, H, W) (or one (H, W)), both on one device: the counting
        runs there, only the counts come back to the CPU."""
        pred, target = pred.detach(), target.detach().to(pred.device)
        self.cm += confusion_matrix(pred, target, self.num_classes).cpu()
        self.bcounts += boundary_counts(pred, target, self.num_classes).cpu()
        self.image_miou.extend(per_image_miou(pred, target, self.num_classes).tolist())

    def summary(self) -> dict:
        ious = iou_per_class(self.cm)
        return {
            "miou": mean_iou(self.cm),
            "pet_iou": float(ious[PET]),
            "boundary_iou": boundary_iou(self.bcounts),
        }
