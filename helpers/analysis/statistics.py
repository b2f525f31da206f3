"""Is a gain real? Per-image counts and a paired bootstrap over images, pooled over seeds.

The workbook's metrics are *pooled* over a split (one confusion matrix for all its pixels), so a
confidence interval must resample images and pool again, not average per-image scores. The
comparison is *paired*: a refiner and its base net are scored on the same resampled images, so
the interval is that of the gain itself, with the image-to-image variation (most of the noise)
shared by both. With several seeds, each resample uses the same images for every seed and the
gain is averaged over seeds, so the interval covers the choice of images for the mean over seeds
(seed-to-seed spread is reported beside it, not inside it).
"""

from __future__ import annotations

import torch

from .metrics import PET, boundary_counts, confusion_matrix


def image_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int = 2,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: confusion matrix (N, C, C) and boundary-band intersection / union (N, C, 2),
    on the CPU, from label maps (N, H, W), counted on ``device`` (default: where ``pred`` is; a
    GPU computes the bands of 256 px maps far faster), ``batch_size`` maps at a time. Summed over
    images they give the pooled metrics (:func:`pooled_metrics`)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    device = pred.device if device is None else torch.device(device)
    C = num_classes
    cms = [torch.zeros(0, C, C, dtype=torch.int64)]
    bcs = [torch.zeros(0, C, 2, dtype=torch.int64)]
    for lo in range(0, len(pred), batch_size):
        p, t = (
            pred[lo : lo + batch_size].to(device).long(),
            target[lo : lo + batch_size].to(device).long(),
        )
        # exercise 1's confusion matrix, image by image (in the student edition, the student's)
        cms.append(torch.stack([confusion_matrix(pi, ti, C) for pi, ti in zip(p, t)]).cpu())
        bcs.append(boundary_counts(p, t, C, per_image=True).cpu())
    return torch.cat(cms), torch.cat(bcs)


def counts_summary(cms: torch.Tensor, bcs: torch.Tensor) -> tuple[dict, list]:
    """(pooled metrics as floats, per-image mIoU list) of per-image counts cms (N, C, C) and
    bcs (N, C, 2): the same numbers as :class:`~helpers.analysis.metrics.SegmentationMeter` fed the
    same
    maps (its ``summary()`` and ``image_miou``)."""
    pooled = pooled_metrics(cms.sum(0), bcs.sum(0))
    return {m: float(v) for m, v in pooled.items()}, pooled_metrics(cms, bcs)["miou"].tolist()


def _nanmean_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ratio = torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))
    return ratio.nanmean(-1)


def pooled_metrics(cm: torch.Tensor, bc: torch.Tensor) -> dict[str, torch.Tensor]:
    """mIoU, pet IoU and Boundary IoU of pooled counts cm (..., C, C) and bc (..., C, 2), batched
    over any leading dimensions (float64); equal to
    :class:`~helpers.analysis.metrics.SegmentationMeter`."""
    cm, bc = cm.double(), bc.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    union = cm.sum(-2) + cm.sum(-1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    return {
        "miou": iou.nanmean(-1),
        "pet_iou": iou[..., PET],
        "boundary_iou": _nanmean_ratio(bc[..., 0], bc[..., 1]),
    }


def paired_bootstrap(
    before: list[tuple[torch.Tensor, torch.Tensor]],
    after: list[tuple[torch.Tensor, torch.Tensor]],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict]:
    """Gain of ``after`` over ``before`` with a paired per-image bootstrap interval.

    ``before`` / ``after``: one ``(cms (N, C, C), bcs (N, C, 2))`` per seed (from
    :func:`image_counts`, the same N images in the same order). Returns, per metric, ``gain``
    (mean over seeds of the pooled difference on the real split), ``low`` / ``high`` (the
    ``level`` percentile interval of that mean over ``resamples`` resamples of the images) and
    ``excludes_zero``.
    """
    if len(before) != len(after) or not before:
        raise ValueError("need the same, non-zero number of seeds before and after")
    n = before[0][0].shape[0]
    if any(c.shape[0] != n for pair in before + after for c in pair):
        raise ValueError("every seed and stage must be scored on the same images")
    stack = lambda runs, k: torch.stack([r[k] for r in runs]).double()  # noqa: E731  (S, N, ...)
    g = torch.Generator().manual_seed(seed)
    # a resample of N images with replacement is a weight per image: how often it was drawn
    draws = torch.randint(0, n, (resamples, n), generator=g)
    weights = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(resamples, n, dtype=torch.float64)
    )
    out = {}
    real_b = pooled_metrics(stack(before, 0).sum(1), stack(before, 1).sum(1))
    real_a = pooled_metrics(stack(after, 0).sum(1), stack(after, 1).sum(1))
    boot_b = pooled_metrics(
        torch.einsum("rn,snij->rsij", weights, stack(before, 0)),
        torch.einsum("rn,snij->rsij", weights, stack(before, 1)),
    )
    boot_a = pooled_metrics(
        torch.einsum("rn,snij->rsij", weights, stack(after, 0)),
        torch.einsum("rn,snij->rsij", weights, stack(after, 1)),
    )
    alpha = (1 - level) / 2
    for m in real_b:
        gains = (boot_a[m] - boot_b[m]).mean(1)  # (R,) mean over seeds
        low, high = torch.quantile(
            gains, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
        ).tolist()
        out[m] = {
            "gain": float((real_a[m] - real_b[m]).mean()),
            "low": low,
            "high": high,
            "excludes_zero": low > 0 or high < 0,
        }
    return out
