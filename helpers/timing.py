"""How long things take: inference per image, and the training time of every stage, estimated
from a timed real training step before anything is trained."""
from __future__ import annotations

import math
import time

import torch

from . import stages as registry
from .refiner import CoarseSegmenter, Refiner
from .training import eval_mode, make_loader, make_optimiser, train_step


def synchronise(device: torch.device) -> None:
    """Wait for the GPU (timings of asynchronous CUDA work are meaningless without it)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def seconds_per_image(model: torch.nn.Module, dataset, device, batch_size: int, max_images: int = 64) -> float:
    """Wall time of one image's inference, batched as in evaluation (after one warm-up batch)."""
    device = torch.device(device)
    with eval_mode(model):
        n = min(max_images, len(dataset))
        batches = [torch.stack([dataset[i][0] for i in range(lo, min(lo + batch_size, n))]).to(device)
                   for lo in range(0, n, batch_size)]
        model(batches[0])
        synchronise(device)
        t0 = time.perf_counter()
        for images in batches:
            model(images)
        synchronise(device)
    return (time.perf_counter() - t0) / n


def step_seconds(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int = 4,
                 amp: bool = False) -> float:
    """Seconds of one training step of ``model`` (:func:`helpers.training.train_step`: forward,
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


def estimate_seconds(wb, converged: bool = True) -> dict[str, float]:
    """Seconds each registered stage (of the report's setting, and with ``converged`` of the
    converged one) will need to train on ``wb``, from a timed step of each kind of model on one
    training batch (an epoch: its images over the batch size, the last batch partial; evaluation
    passes counted as a third of a step per batch, the validation set after every epoch and
    validation + test once at the end, as :func:`~helpers.training.fit` and the workflow run them); 0 for a stage
    whose checkpoint exists (it is loaded); the converged net counted at its cap (an upper
    bound: early stopping usually ends it sooner). Nothing is trained or saved."""
    cfg = wb.cfg
    images, targets = next(iter(make_loader(wb.data["train"], cfg.batch_size, shuffle=False)))
    images, targets = images.to(wb.device), targets.to(wb.device)
    steps = len(wb.data["train"]) / cfg.batch_size          # full-batch equivalents per epoch
    val_batches = math.ceil(len(wb.data["val"]) / cfg.batch_size)
    evals = val_batches + math.ceil(len(wb.data["test"]) / cfg.batch_size)
    names = registry.SETTINGS["coarse"] + (registry.SETTINGS["converged"] if converged else ())
    amp = cfg.amp and wb.device.type == "cuda"   # time the step as training runs it
    coarse = CoarseSegmenter.from_config(cfg).to(wb.device)
    per_step = {None: step_seconds(coarse, images, targets, amp=amp)}
    for stage in (registry.get(n) for n in names if registry.get(n).kind == "refiner"):
        key = (stage.method, stage.start_map(cfg))   # the head's size depends on both
        if key not in per_step:
            per_step[key] = step_seconds(stage.build(cfg, coarse).to(wb.device), images, targets, amp=amp)
    estimate = {}
    for name in names:
        stage = registry.get(name)
        if stage.kind == "filter":   # a grid of 9 filters over the evaluation batches, nothing trained
            estimate[name] = per_step[None] * 9 * evals / 3
            continue
        step = per_step[(stage.method, stage.start_map(cfg)) if stage.kind == "refiner" else None]
        epochs = stage.train_epochs(wb)
        estimate[name] = 0.0 if stage.checkpoint(wb).exists() else step * (epochs * (steps + val_batches / 3) + evals / 3)
    return estimate
