"""How long things take: inference per image, and the training time of every stage, estimated
before anything is trained from a timed training step, a timed pass of the training batches and
a timed evaluation."""

from __future__ import annotations

import time

import torch

from ..data.batches import make_batches, make_loader
from ..models.coarse import CoarseSegmenter
from ..models.refiner import Refiner
from ..training.evaluation import eval_mode, evaluate
from ..training.loop import epochs_done, make_optimiser, train_step
from . import stages as registry


def synchronise(device: torch.device) -> None:
    """Wait for the GPU (timings of asynchronous CUDA work are meaningless without it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def seconds_per_image(
    model: torch.nn.Module, dataset, device, batch_size: int, max_images: int = 64
) -> float:
    """Wall time of one image's inference, batched as in evaluation (after one warm-up batch)."""
    device = torch.device(device)
    with eval_mode(model):
        n = min(max_images, len(dataset))
        batches = [
            torch.stack([dataset[i][0] for i in range(lo, min(lo + batch_size, n))]).to(device)
            for lo in range(0, n, batch_size)
        ]
        model(batches[0])
        synchronise(device)
        t0 = time.perf_counter()
        for images in batches:
            model(images)
        synchronise(device)
    return (time.perf_counter() - t0) / n


def step_seconds(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 4,
    amp: bool = False,
) -> float:
    """Seconds of one training step of ``model`` (:func:`helpers.training.loop.train_step`: forward,
    backward, update; a refiner's real loss) on one batch; the first step is a warm-up."""
    optimiser = make_optimiser(model, lr=1e-4)
    loss_fn = model.training_loss if isinstance(model, Refiner) else None
    model.train()
    times = []
    for _ in range(steps):
        synchronise(images.device)
        t0 = time.perf_counter()
        train_step(model, optimiser, images, targets, loss_fn=loss_fn, amp=amp)
        synchronise(images.device)
        times.append(time.perf_counter() - t0)
    return min(times[1:] or times)


def loading_seconds(dataset, batch_size: int, seed: int, device) -> float:
    """Seconds of one pass over the training batches as :func:`~helpers.training.loop.fit` serves
    them (DataLoader and transforms on the CPU, or :mod:`helpers.data.batches` on the GPU), no
    model."""
    device = torch.device(device)
    synchronise(device)
    t0 = time.perf_counter()
    for images, targets in make_batches(
        dataset, batch_size, shuffle=True, seed=seed, device=device
    ):
        images.to(device), targets.to(device)
    synchronise(device)
    return time.perf_counter() - t0


def evaluation_seconds(
    model: torch.nn.Module, dataset, batch_size: int, device, amp: bool = False
) -> float:
    """Seconds of one :func:`~helpers.training.evaluation.evaluate` of ``model`` on ``dataset`` (the
    pass run after every epoch: forward passes and the metrics)."""
    device = torch.device(device)
    synchronise(device)
    t0 = time.perf_counter()
    evaluate(model, dataset, batch_size, device, amp)
    synchronise(device)
    return time.perf_counter() - t0


def estimate_seconds(wb, converged: bool = True) -> dict[str, float]:
    """Seconds each registered stage (of the report's setting, and with ``converged`` of the
    converged one) will need to train on ``wb``; 0 for a stage whose finished checkpoint exists
    (it is loaded), only the epochs left for an interrupted one (it resumes); the converged net
    counted at its cap (where it runs unless ``converged_patience`` stops it earlier). Nothing is
    trained or saved.

    An epoch is timed in its three real parts: the training steps (a timed step of each kind of
    model on one training batch, times the epoch's images over the batch size), one pass of the
    training batches as :func:`~helpers.training.loop.fit` loads them, and the evaluation on the
    validation split that follows every epoch (timed for each kind of model); validation and
    test are evaluated once more at the end, as the workflow does."""
    cfg = wb.cfg
    images, targets = next(iter(make_loader(wb.data["train"], cfg.batch_size, shuffle=False)))
    images, targets = images.to(wb.device), targets.to(wb.device)
    steps = len(wb.data["train"]) / cfg.batch_size  # full-batch equivalents per epoch
    loading = loading_seconds(wb.data["train"], cfg.batch_size, cfg.seed, wb.device)
    test_share = len(wb.data["test"]) / max(1, len(wb.data["val"]))
    names = registry.SETTINGS["coarse"] + (registry.SETTINGS["converged"] if converged else ())
    amp = cfg.amp and wb.device.type == "cuda"  # time the step as training runs it

    def timed(model):  # (a training step, an evaluation of the validation split)
        return (
            step_seconds(model, images, targets, amp=amp),
            evaluation_seconds(model, wb.data["val"], cfg.batch_size, wb.device, amp),
        )

    coarse = CoarseSegmenter.from_config(cfg).to(wb.device)
    per_kind = {None: timed(coarse)}
    for stage in (registry.get(n) for n in names if registry.get(n).kind == "refiner"):
        key = (stage.method, stage.start_map(cfg))  # the head's size depends on both
        if key not in per_kind:
            per_kind[key] = timed(stage.build(cfg, coarse).to(wb.device))
    estimate = {}
    for name in names:
        stage = registry.get(name)
        # a grid of 9 filters over validation, the best on test; never saved
        if stage.kind == "filter":
            estimate[name] = per_kind[None][1] * (9 + test_share)
            continue
        epochs = stage.train_epochs(wb)
        # an interrupted run resumes where it was saved: only its remaining epochs count
        left = epochs - epochs_done(stage.checkpoint(wb), epochs)
        if not left:
            estimate[name] = 0.0
            continue
        step, evaluation = per_kind[
            (stage.method, stage.start_map(cfg)) if stage.kind == "refiner" else None
        ]
        estimate[name] = left * (step * steps + loading + evaluation) + evaluation * (
            1 + test_share
        )
    return estimate
