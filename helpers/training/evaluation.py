"""Evaluation and prediction: probabilities for a split, its pooled and per-image metrics, and
the iteration sweep of a refiner.

Models map an image batch (B, 3, H, W) in [0, 1] to class probabilities (B, C, H, W).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..analysis.metrics import SegmentationMeter
from ..analysis.statistics import counts_summary, image_counts
from ..core.runtime import autocast_dtype
from ..data.batches import split_batches


def autocast_for(device: torch.device | str, amp: bool):
    """Autocast in :func:`~helpers.core.runtime.autocast_dtype` on CUDA (bfloat16 only where the
    GPU has it natively); on the CPU a no-op context (AMP does not help there)."""
    dtype = autocast_dtype(device) if amp else None
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model`` in eval mode inside the block, its own mode restored after (even on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def predict(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: str | torch.device,
    amp: bool = False,
) -> torch.Tensor:
    """Probabilities (N, C, H, W) float32 on the CPU for a whole dataset, in dataset order."""
    out = []
    with eval_mode(model):
        for image, _ in split_batches(dataset, batch_size, device):
            with autocast_for(device, amp):
                out.append(model(image).float().cpu())
    return torch.cat(out)


def split_counts(
    probs: torch.Tensor,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image counts of probability maps (N, C, H, W) against the dataset's targets: confusion
    matrices (N, C, C) and boundary-band counts (N, C, 2)
    (:func:`helpers.analysis.statistics.image_counts`).

    The counting runs on ``device`` (default: where ``probs`` are), ``batch_size`` maps at a time:
    on a GPU the boundary bands of a split at 256 px take milliseconds there and seconds on the
    CPU. Pooled metrics are their sums, so the result does not depend on either."""
    targets = (
        torch.stack([dataset[i][1] for i in range(len(dataset))])
        if not hasattr(dataset, "targets")
        else dataset.targets.long()
    )
    if len(probs) != len(targets):
        raise ValueError(f"{len(probs)} probability maps for a dataset of {len(targets)} images")
    return image_counts(probs.argmax(1), targets, probs.shape[1], device, batch_size)


def evaluate_probs(
    probs: torch.Tensor,
    dataset: Dataset,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> tuple[dict, list]:
    """Metrics of probability maps (N, C, H, W) against the dataset's targets; also per-image mIoU
    (:func:`split_counts`, then :func:`helpers.analysis.statistics.counts_summary`)."""
    return counts_summary(*split_counts(probs, dataset, device, batch_size))


@torch.inference_mode()
def evaluate(
    model: nn.Module, dataset: Dataset, batch_size: int, device, amp: bool = False
) -> dict:
    """Pooled mIoU, pet IoU and Boundary IoU of ``model`` on ``dataset`` (train mode restored).

    The same numbers as :func:`evaluate_probs` of :func:`predict`, but the maps never leave the
    device: on a GPU the metrics are computed there, and only their counts are copied back."""
    meter = None
    with eval_mode(model):
        for images, targets in split_batches(dataset, batch_size, device):
            with autocast_for(device, amp):
                probs = model(images)
            meter = meter or SegmentationMeter(num_classes=probs.shape[1])
            meter.update(probs.argmax(1), targets)
    if meter is None:
        raise ValueError("cannot evaluate on an empty dataset")
    return meter.summary()


@torch.inference_mode()
def iteration_sweep(
    model: nn.Module,
    dataset: Dataset,
    device,
    batch_size: int,
    max_iterations: int = 12,
    suppression: bool = True,
    amp: bool = False,
) -> list[dict]:
    """Metrics of a refiner run with T = 0, 1, ..., ``max_iterations`` at inference: entry t is the
    pooled mIoU / pet IoU / Boundary IoU of H^t on ``dataset`` (one pass: the maps of a T_max run
    are, iteration by iteration, those of every shorter run). DySPN reuses its last attention
    beyond the trained T; ``suppression=False`` drops its diffusion suppression (an ablation)."""
    if model.propagator is None:
        raise ValueError("the control has no propagation to sweep")
    device = torch.device(device)
    meters = [SegmentationMeter(num_classes=model.classes) for _ in range(max_iterations + 1)]
    with eval_mode(model):
        for images, targets in split_batches(dataset, batch_size, device):
            with autocast_for(device, amp):  # as in evaluation, so entry T is the stage's own score
                out = model.refine(images, max_iterations, suppression)
            for meter, h in zip(meters, out.propagation.maps):
                meter.update(h.argmax(1), targets)
    return [m.summary() for m in meters]
