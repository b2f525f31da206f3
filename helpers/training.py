"""The training engine: seeding, loaders, ``fit``, evaluation and prediction.

Models trained here map an image batch (B, 3, H, W) in [0, 1] to class probabilities
(B, C, H, W); the loss is the cross-entropy of those probabilities with the target (B, H, W).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .batches import make_batches, split_batches
from .checkpoint import atomic_save, check_spec, library_versions, safe_load
from .losses import segmentation_loss
from .metrics import SegmentationMeter
from .runtime import keep_freed_memory, limit_cpu_threads
from .statistics import counts_summary, image_counts


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers (the message says what to change)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (an explicit call, never done at import)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=False, persistent_workers=num_workers > 0)


def autocast_for(device: torch.device | str, amp: bool):
    """bfloat16/float16 autocast on CUDA only; on CPU a no-op context (AMP does not help there)."""
    device = torch.device(device)
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext()


@dataclass
class History:
    """Per-epoch training loss and validation metrics, plus wall time."""

    epoch: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val: list = field(default_factory=list)          # dicts from SegmentationMeter.summary
    seconds: float = 0.0
    best_epoch: int | None = None                     # with early stopping: the epoch whose weights were kept

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "train_loss": self.train_loss, "val": self.val, "seconds": self.seconds,
                "best_epoch": self.best_epoch}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(list(d["epoch"]), list(d["train_loss"]), list(d["val"]), float(d["seconds"]), d.get("best_epoch"))


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
def predict(model: nn.Module, dataset: Dataset, batch_size: int, device: str | torch.device,
            amp: bool = False) -> torch.Tensor:
    """Probabilities (N, C, H, W) float32 on the CPU for a whole dataset, in dataset order."""
    out = []
    with eval_mode(model):
        for image, _ in split_batches(dataset, batch_size, device):
            with autocast_for(device, amp):
                out.append(model(image).float().cpu())
    return torch.cat(out)


def split_counts(probs: torch.Tensor, dataset: Dataset, device: str | torch.device | None = None,
                 batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image counts of probability maps (N, C, H, W) against the dataset's targets: confusion
    matrices (N, C, C) and boundary-band counts (N, C, 2) (:func:`helpers.statistics.image_counts`).

    The counting runs on ``device`` (default: where ``probs`` are), ``batch_size`` maps at a time:
    on a GPU the boundary bands of a split at 256 px take milliseconds there and seconds on the
    CPU. Pooled metrics are their sums, so the result does not depend on either."""
    targets = torch.stack([dataset[i][1] for i in range(len(dataset))]) if not hasattr(dataset, "targets") \
        else dataset.targets.long()
    if len(probs) != len(targets):
        raise ValueError(f"{len(probs)} probability maps for a dataset of {len(targets)} images")
    return image_counts(probs.argmax(1), targets, probs.shape[1], device, batch_size)


def evaluate_probs(probs: torch.Tensor, dataset: Dataset, device: str | torch.device | None = None,
                   batch_size: int = 64) -> tuple[dict, list]:
    """Metrics of probability maps (N, C, H, W) against the dataset's targets; also per-image mIoU
    (:func:`split_counts`, then :func:`helpers.statistics.counts_summary`)."""
    return counts_summary(*split_counts(probs, dataset, device, batch_size))


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device, amp: bool = False) -> dict:
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
def iteration_sweep(model: nn.Module, dataset: Dataset, device, batch_size: int, max_iterations: int = 12,
                    suppression: bool = True, amp: bool = False) -> list[dict]:
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
            with autocast_for(device, amp):   # as in evaluation, so entry T is the stage's own score
                out = model.refine(images, max_iterations, suppression)
            for meter, h in zip(meters, out.propagation.maps):
                meter.update(h.argmax(1), targets)
    return [m.summary() for m in meters]


def make_optimiser(model: nn.Module, lr: float, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (a refiner's frozen coarse net has none),
    in the model's own groups where it has them (``model.parameter_groups(lr)``: a warm-started
    refiner trains its copied layers at a lower rate), else in one group at ``lr``."""
    groups = (model.parameter_groups(lr) if hasattr(model, "parameter_groups")
              else [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}])
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def train_step(model: nn.Module, optimiser: torch.optim.Optimizer, image: torch.Tensor, target: torch.Tensor,
               loss_fn=None, amp: bool = False, scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimiser step on a batch: the loss under autocast (CUDA only), backward, update.

    ``loss_fn(image, target)`` defaults to the cross-entropy of ``model(image)``; ``scaler``
    scales float16 losses. Returns the loss (a tensor: reading it is a host sync on CUDA)."""
    with autocast_for(image.device, amp):
        loss = loss_fn(image, target) if loss_fn is not None else segmentation_loss(model(image), target)
    optimiser.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimiser.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    return loss


def fit(model: nn.Module, *, train_set: Dataset, val_set: Dataset, epochs: int, lr: float,
        batch_size: int, device: str | torch.device = "cpu", seed: int = 0, weight_decay: float = 1e-4,
        amp: bool = True, checkpoint: str | Path | None = None, spec: dict | None = None,
        desc: str = "training", progress: bool = True, loss_fn=None, patience: int | None = None,
        data_on_device: bool | None = None) -> History:
    """Train ``model`` with AdamW and a one-cycle schedule; return the :class:`History`.

    Steps: 1. seed and build the loader; 2. resume from ``checkpoint`` if it holds an unfinished
    run of the same ``spec``; 3. per epoch, train with a progress bar of the live loss, evaluate
    on ``val_set`` and write the checkpoint atomically (weights, optimiser, schedule, history);
    4. with ``patience`` (training to convergence), the rate falls on validation plateaus instead
    of following one cycle; stop once validation mIoU has not improved for ``patience`` epochs and
    keep the best epoch's weights (``epochs`` is then a cap). The checkpoint is marked finished.
    ``loss_fn(image, target)`` replaces the default cross-entropy of ``model(image)`` (the
    refiners' :meth:`~helpers.refiner.Refiner.training_loss`). Only parameters with
    ``requires_grad`` are optimised (a refiner's frozen coarse net has none).
    ``data_on_device`` serves the training batches from the device (:mod:`helpers.batches`);
    the default does so on CUDA when the split fits, and keeps the DataLoader on the CPU.
    """
    from . import progress as prog

    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()   # a step's large tensors reuse the last step's memory (helpers/runtime.py)
    else:
        limit_cpu_threads()   # the GPU does the work: processes side by side must not fight for cores
    seed_everything(seed)
    model.to(device)
    loader = make_batches(train_set, batch_size, shuffle=True, seed=seed, device=device, on_device=data_on_device)
    optimiser = make_optimiser(model, lr, weight_decay)
    params = [p for group in optimiser.param_groups for p in group["params"]]
    if patience is None:
        # each group peaks at its own rate (a scalar max_lr would overwrite every group's with lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=[g["lr"] for g in optimiser.param_groups],
                                                       total_steps=max(1, epochs * len(loader)),
                                                       pct_start=0.15)
    else:
        # training to convergence: a one-cycle schedule over the cap would stop at a high rate,
        # mid-cycle; instead the rate falls (x0.3) whenever validation mIoU stalls for a third of
        # the patience, so that by the time it has stalled for the whole patience the net has settled
        schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="max", factor=0.3,
                                                              patience=max(1, patience // 3))
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    history, start, best_state = History(), 0, None
    spec = spec or {}
    if checkpoint is not None and Path(checkpoint).exists():
        state = safe_load(checkpoint)
        check_spec(state, spec, checkpoint)
        model.load_state_dict(state["state_dict"])
        history = History.from_dict(state["history"])
        best_state = state.get("best_state_dict")
        start = _epochs_behind(state, epochs)
        if start < epochs and "optimiser" in state:
            optimiser.load_state_dict(state["optimiser"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["rng"])
            loader.generator.set_state(state["loader_rng"])
            print(f"resuming {desc} from epoch {start} of {epochs}")
    t0 = time.perf_counter() - history.seconds
    epoch_bar = prog.bar(range(start, epochs), progress, desc=desc, initial=start, total=epochs)
    session_start, resumed_at = time.perf_counter(), start
    for epoch in epoch_bar:
        model.train()
        running, seen = 0.0, 0
        batch_bar = prog.bar(loader, progress, desc=f"epoch {epoch + 1}", leave=False)
        for image, target in batch_bar:
            image, target = image.to(device, non_blocking=True), target.to(device, non_blocking=True)
            loss = train_step(model, optimiser, image, target, loss_fn, amp, scaler)
            if patience is None:
                schedule.step()
            value = loss.item()
            if not math.isfinite(value):
                # raised before this epoch's checkpoint is written: a diverged net is never saved,
                # let alone as finished; the last good epoch stays on disk
                raise TrainingDiverged(f"{desc}: the training loss became {value} in epoch {epoch + 1}, batch "
                                       f"{seen // batch_size + 1}; the learning rate ({lr:g}: coarse_lr for a U-Net, "
                                       "refine_lr for a refiner) is probably too high for this setting: lower it "
                                       "(for example halve it) and run again; nothing of this epoch was saved")
            running += value * len(image)
            seen += len(image)
            batch_bar.set_postfix(loss=f"{running / seen:.3f}")
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingDiverged(f"{desc}: the weights hold NaN or infinity after epoch {epoch + 1} although "
                                   f"the loss stayed finite; lower the learning rate ({lr:g}) and run again; "
                                   "nothing of this epoch was saved")
        metrics = evaluate(model, val_set, batch_size, device, amp)
        history.epoch.append(epoch + 1)
        history.train_loss.append(running / max(seen, 1))
        history.val.append(metrics)
        history.seconds = time.perf_counter() - t0
        epoch_bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val_miou=f"{metrics['miou']:.3f}")
        per_epoch = (time.perf_counter() - session_start) / (epoch + 1 - resumed_at)
        prog.report_epoch(desc, epoch + 1, epochs, history.train_loss[-1], metrics["miou"], history.seconds,
                          per_epoch * (epochs - epoch - 1), capped=patience is not None)
        stop = False
        if patience is not None:
            schedule.step(metrics["miou"])
            if history.best_epoch is None or metrics["miou"] > history.val[history.best_epoch - 1]["miou"]:
                history.best_epoch = epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            stop = epoch + 1 - history.best_epoch >= patience
        finished = stop or epoch + 1 == epochs
        if finished and best_state is not None:
            model.load_state_dict(best_state)   # early stopping keeps the best epoch, not the last
        if checkpoint is not None:
            atomic_save({"state_dict": model.state_dict(), "spec": spec, "epoch": epoch + 1, "finished": finished,
                         "history": history.to_dict(), "metrics": metrics, "versions": library_versions(),
                         "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                         "rng": torch.get_rng_state(), "loader_rng": loader.generator.get_state(),
                         **({"best_state_dict": best_state} if best_state is not None and not finished else {})},
                        checkpoint)
        if stop:
            epoch_bar.close()
            print(f"{desc}: validation mIoU has not improved for {patience} epochs; stopped after epoch {epoch + 1}, "
                  f"keeping epoch {history.best_epoch} ({history.val[history.best_epoch - 1]['miou']:.3f})")
            break
    epoch_bar.close()
    if progress and history.epoch and history.epoch[-1] > start:
        # what a saved notebook shows of the training (its bars are widgets and are not saved)
        kept = history.best_epoch or history.epoch[-1]
        print(f"{desc}: trained {history.epoch[-1]} epochs in {history.seconds:.0f} s; final loss "
              f"{history.train_loss[-1]:.3f}, val mIoU {history.val[kept - 1]['miou']:.3f} (epoch {kept})")
    return history


def _epochs_behind(state: dict, epochs: int) -> int:
    """Of ``epochs``, how many a saved run has behind it: all once it finished (early stopping
    included), else the saved epoch (where :func:`fit` resumes)."""
    return epochs if state.get("finished") else min(epochs, int(state["epoch"]))


def epochs_done(checkpoint: str | Path, epochs: int) -> int:
    """:func:`_epochs_behind` of the run saved at ``checkpoint``; 0 without a file."""
    return _epochs_behind(safe_load(checkpoint), epochs) if Path(checkpoint).exists() else 0


def load_trained(model: nn.Module, checkpoint: str | Path, spec: dict, epochs: int) -> History | None:
    """Load a finished run of the same spec into ``model``; None if there is none to load."""
    if not Path(checkpoint).exists():
        return None
    state = safe_load(checkpoint)
    check_spec(state, spec, checkpoint)
    if _epochs_behind(state, epochs) < epochs:
        return None  # unfinished: fit() resumes it
    model.load_state_dict(state["state_dict"])
    return History.from_dict(state["history"])
