"""How long things take: inference per image, and the training time of every stage, estimated
before anything is trained from a timed training step, a timed pass of the training batches and
a timed evaluation."""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field

import numpy as np
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


@dataclass(frozen=True)
class StepTimes:
    """What an estimate is made of, timed once on this machine (:func:`measure`): per kind of
    model (``None``: a coarse U-Net; ``(method, start map)``: a refiner) a training step on one
    full batch and an evaluation of the validation split; one pass of the training batches;
    full batches per epoch; and the test split's size relative to validation. Any configuration
    that changes only how long stages train (``step_scale``, the epochs) reuses them."""

    per_kind: dict
    loading: float
    steps_per_epoch: float
    test_share: float
    # refiner kinds that could not be timed (a student's unfinished exercise raises), each
    # counted at the slowest refiner that could: {kind: the error's first line}
    untimed: dict = field(default_factory=dict)


def _names(converged: bool) -> tuple[str, ...]:
    return registry.SETTINGS["coarse"] + (registry.SETTINGS["converged"] if converged else ())


def _kind(stage, cfg):
    return (stage.method, stage.start_map(cfg)) if stage.kind == "refiner" else None


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (what a one-line report of an error says)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def untouched_random_state(device: torch.device):
    """Python's, NumPy's and torch's random states (the device's too) as they were before: the
    plan may be timed between a stage's seeding and its training, and must not change what it
    trains."""
    state = random.getstate(), np.random.get_state()
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


def measure(wb, converged: bool = True) -> StepTimes:
    """Time a training step and an evaluation of each kind of model the stages use, and one pass
    of the training batches, on ``wb``'s data and device (a few seconds; nothing is saved, and
    the random states are left as they were)."""
    with untouched_random_state(wb.device):
        return _measure(wb, converged)


def _measure(wb, converged: bool) -> StepTimes:
    cfg = wb.cfg
    images, targets = next(iter(make_loader(wb.data["train"], cfg.batch_size, shuffle=False)))
    images, targets = images.to(wb.device), targets.to(wb.device)
    amp = cfg.amp and wb.device.type == "cuda"  # time the step as training runs it

    def timed(model):  # (a training step, an evaluation of the validation split)
        return (
            step_seconds(model, images, targets, amp=amp),
            evaluation_seconds(model, wb.data["val"], cfg.batch_size, wb.device, amp),
        )

    coarse = CoarseSegmenter.from_config(cfg).to(wb.device)
    per_kind, untimed = {None: timed(coarse)}, {}  # the coarse U-Net must run: it trains first
    for stage in (registry.get(n) for n in _names(converged)):
        kind = _kind(stage, cfg)  # the head's size depends on the method and the start map
        if stage.kind == "refiner" and kind not in per_kind and kind not in untimed:
            try:
                per_kind[kind] = timed(stage.build(cfg, coarse).to(wb.device))
            # the student edition: a refiner whose exercises are not solved yet
            except Exception as exc:
                untimed[kind] = first_line(exc)
    refiners = [v for k, v in per_kind.items() if k is not None]
    if untimed and not refiners:
        raise RuntimeError(f"no refiner could be timed: {next(iter(untimed.values()))}")
    for kind in untimed:
        per_kind[kind] = max(refiners)  # the slowest that ran: a generous stand-in
    return StepTimes(
        per_kind=per_kind,
        loading=loading_seconds(wb.data["train"], cfg.batch_size, cfg.seed, wb.device),
        steps_per_epoch=len(wb.data["train"]) / cfg.batch_size,  # full-batch equivalents
        test_share=len(wb.data["test"]) / max(1, len(wb.data["val"])),
        untimed=untimed,
    )


def estimate_seconds(
    wb, converged: bool = True, times: StepTimes | None = None
) -> dict[str, float]:
    """Seconds each registered stage (of the report's setting, and with ``converged`` of the
    converged one) will need to train on ``wb``; 0 for a stage whose finished checkpoint exists
    (it is loaded), only the epochs left for an interrupted one (it resumes); the converged net
    counted at its cap (where it runs unless ``converged_patience`` stops it earlier). Nothing is
    trained or saved. ``times``: reuse a :func:`measure` of the same data and models (the budget
    tries several ``step_scale`` values on one measurement).

    An epoch is timed in its three real parts: the training steps (a timed step of each kind of
    model on one training batch, times the epoch's images over the batch size), one pass of the
    training batches as :func:`~helpers.training.loop.fit` loads them, and the evaluation on the
    validation split that follows every epoch (timed for each kind of model); validation and
    test are evaluated once more at the end, as the workflow does."""
    t = times or measure(wb, converged)
    estimate = {}
    for name in _names(converged):
        stage = registry.get(name)
        step, evaluation = t.per_kind[_kind(stage, wb.cfg)]
        # a grid of 9 filters over validation, the best on test; never saved
        if stage.kind == "filter":
            estimate[name] = evaluation * (9 + t.test_share)
            continue
        epochs = stage.train_epochs(wb)
        # an interrupted run resumes where it was saved: only its remaining epochs count
        left = epochs - epochs_done(stage.checkpoint(wb), epochs)
        estimate[name] = (
            left * (step * t.steps_per_epoch + t.loading + evaluation)
            + evaluation * (1 + t.test_share)
            if left
            else 0.0
        )
    return estimate
