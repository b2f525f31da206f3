"""The training engine: seeding, one ``train_step``, ``fit`` and resuming a saved run.

Models trained here map an image batch (B, 3, H, W) in [0, 1] to class probabilities
(B, C, H, W); the loss is the cross-entropy of those probabilities with the target (B, H, W).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..core.checkpoint import atomic_save, check_spec, library_versions, safe_load
from ..core.runtime import autocast_dtype, keep_freed_memory, limit_cpu_threads
from ..data.batches import make_batches
from ..models.losses import segmentation_loss
from .evaluation import autocast_for, evaluate


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers (the message says what to change)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (an explicit call, never done at import)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class History:
    """Per-epoch training loss, validation metrics and learning rate, plus wall time."""

    epoch: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val: list = field(default_factory=list)  # dicts from SegmentationMeter.summary
    seconds: float = 0.0
    best_epoch: int | None = None  # training to convergence: the epoch whose weights were kept
    lr: list = field(default_factory=list)  # the (first group's) rate at each epoch's end

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val": self.val,
            "seconds": self.seconds,
            "best_epoch": self.best_epoch,
            "lr": self.lr,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(
            list(d["epoch"]),
            list(d["train_loss"]),
            list(d["val"]),
            float(d["seconds"]),
            d.get("best_epoch"),
            list(d.get("lr", [])),
        )


@dataclass(frozen=True)
class Convergence:
    """Training to convergence without riding validation noise.

    On a few dozen validation images, mIoU moves by up to 0.04 from one epoch to the next; a rule
    that reacts to single epochs (a rate that falls on every stall, a stop ``patience`` epochs
    after the best single epoch) follows that noise and stops early. Here instead:

    * the rate follows the same one-cycle schedule as every other run, over the whole budget
      (``epochs`` is the cap), so it anneals to nearly 0 however the validation score moves;
    * the score of epoch e is the validation mIoU averaged over epochs e - window + 1 .. e
      (defined from epoch ``window`` on): one noisy epoch moves it by 1 / window of its error;
    * the weights of the epoch with the best score are kept; with a ``patience``, training stops
      once the score has not improved for that many epochs (a net that is over-fitting), else it
      runs to the cap. Without one (the default) it always runs to the cap: a stop inside the
      cycle ends at a high rate, which is what the first converged net of this workbook suffered
      from (docs/tuning.md#converged_schedule).
    """

    window: int = 5
    patience: int | None = None

    def __post_init__(self):
        if self.window < 1 or (self.patience is not None and self.patience < 1):
            raise ValueError(
                f"window must be >= 1 and patience None or >= 1, got {self.window} and "
                f"{self.patience}"
            )

    def score(self, mious: list[float]) -> float | None:
        """The score after the epochs ``mious``: the mean of the last ``window``; None before."""
        if len(mious) < self.window:
            return None
        return sum(mious[-self.window :]) / self.window


def make_optimiser(
    model: nn.Module, lr: float, weight_decay: float = 1e-4
) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (a refiner's frozen coarse net has none),
    in the model's own groups where it has them (``model.parameter_groups(lr)``: a warm-started
    refiner trains its copied layers at a lower rate), else in one group at ``lr``."""
    groups = (
        model.parameter_groups(lr)
        if hasattr(model, "parameter_groups")
        else [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    )
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def train_step(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    image: torch.Tensor,
    target: torch.Tensor,
    loss_fn=None,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """One optimiser step on a batch: the loss under autocast (CUDA only), backward, update.

    ``loss_fn(image, target)`` defaults to the cross-entropy of ``model(image)``; ``scaler``
    scales float16 losses. Returns the loss (a tensor: reading it is a host sync on CUDA)."""
    with autocast_for(image.device, amp):
        loss = (
            loss_fn(image, target)
            if loss_fn is not None
            else segmentation_loss(model(image), target)
        )
    optimiser.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimiser.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    return loss


def fit(
    model: nn.Module,
    *,
    train_set: Dataset,
    val_set: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    weight_decay: float = 1e-4,
    amp: bool = True,
    checkpoint: str | Path | None = None,
    spec: dict | None = None,
    desc: str = "training",
    progress: bool = True,
    loss_fn=None,
    converge: Convergence | None = None,
    data_on_device: bool | None = None,
) -> History:
    """Train ``model`` with AdamW and a one-cycle schedule; return the :class:`History`.

    Steps: 1. seed and build the loader; 2. resume from ``checkpoint`` if it holds an unfinished
    run of the same ``spec``; 3. per epoch, train with a progress bar of the live loss, evaluate
    on ``val_set`` and write the checkpoint atomically (weights, optimiser, schedule, history);
    4. with ``converge`` (training to convergence, :class:`Convergence`), keep the weights of the
    epoch whose averaged validation mIoU is best and stop once it has not improved for
    ``converge.patience`` epochs (``epochs`` is then a cap). The checkpoint is marked finished.
    ``loss_fn(image, target)`` replaces the default cross-entropy of ``model(image)`` (the
    refiners' :meth:`~helpers.models.refiner.Refiner.training_loss`). Only parameters with
    ``requires_grad`` are optimised (a refiner's frozen coarse net has none).
    ``data_on_device`` serves the training batches from the device (:mod:`helpers.data.batches`);
    the default does so on CUDA when the split fits, and keeps the DataLoader on the CPU.
    """
    from ..core import progress as prog

    device = torch.device(device)
    if device.type == "cpu":
        # a step's large tensors reuse the last step's memory (helpers/core/runtime.py)
        keep_freed_memory()
    else:
        # the GPU does the work: processes side by side must not fight for cores
        limit_cpu_threads()
    seed_everything(seed)
    model.to(device)
    loader = make_batches(
        train_set, batch_size, shuffle=True, seed=seed, device=device, on_device=data_on_device
    )
    optimiser = make_optimiser(model, lr, weight_decay)
    params = [p for group in optimiser.param_groups for p in group["params"]]
    # each group peaks at its own rate (a scalar max_lr would overwrite every group's with lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=[g["lr"] for g in optimiser.param_groups],
        total_steps=max(1, epochs * len(loader)),
        pct_start=0.15,
    )
    # float16 needs its loss scaled (bfloat16 has float32's range and does not)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and autocast_dtype(device) == torch.float16)
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
            image, target = (
                image.to(device, non_blocking=True),
                target.to(device, non_blocking=True),
            )
            loss = train_step(model, optimiser, image, target, loss_fn, amp, scaler)
            schedule.step()
            value = loss.item()
            if not math.isfinite(value):
                # raised before this epoch's checkpoint is written: a diverged net is never saved,
                # let alone as finished; the last good epoch stays on disk
                raise TrainingDiverged(
                    f"{desc}: the training loss became {value} in epoch {epoch + 1}, batch "
                    f"{seen // batch_size + 1}; the learning rate ({lr:g}: coarse_lr for a U-Net, "
                    "refine_lr for a refiner) is probably too high for this setting: lower it "
                    "(for example halve it) and run again; nothing of this epoch was saved"
                )
            running += value * len(image)
            seen += len(image)
            batch_bar.set_postfix(loss=f"{running / seen:.3f}")
        if not all(torch.isfinite(p).all() for p in params):
            raise TrainingDiverged(
                f"{desc}: the weights hold NaN or infinity after epoch {epoch + 1} although "
                f"the loss stayed finite; lower the learning rate ({lr:g}) and run again; "
                "nothing of this epoch was saved"
            )
        metrics = evaluate(model, val_set, batch_size, device, amp)
        history.epoch.append(epoch + 1)
        history.train_loss.append(running / max(seen, 1))
        history.val.append(metrics)
        history.lr.append(optimiser.param_groups[0]["lr"])
        history.seconds = time.perf_counter() - t0
        epoch_bar.set_postfix(
            loss=f"{history.train_loss[-1]:.3f}", val_miou=f"{metrics['miou']:.3f}"
        )
        per_epoch = (time.perf_counter() - session_start) / (epoch + 1 - resumed_at)
        prog.report_epoch(
            desc,
            epoch + 1,
            epochs,
            history.train_loss[-1],
            metrics["miou"],
            history.seconds,
            per_epoch * (epochs - epoch - 1),
            capped=converge is not None,
        )
        stop = False
        if converge is not None:
            mious = [v["miou"] for v in history.val]
            score = converge.score(mious)
            best = (
                None if history.best_epoch is None else converge.score(mious[: history.best_epoch])
            )
            if score is not None and (best is None or score > best):
                history.best_epoch = epoch + 1
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            stop = (
                converge.patience is not None
                and history.best_epoch is not None
                and epoch + 1 - history.best_epoch >= converge.patience
            )
        finished = stop or epoch + 1 == epochs
        if finished and best_state is not None:
            model.load_state_dict(best_state)  # early stopping keeps the best epoch, not the last
        if checkpoint is not None:
            atomic_save(
                {
                    "state_dict": model.state_dict(),
                    "spec": spec,
                    "epoch": epoch + 1,
                    "finished": finished,
                    "history": history.to_dict(),
                    "metrics": metrics,
                    "versions": library_versions(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": torch.get_rng_state(),
                    "loader_rng": loader.generator.get_state(),
                    **(
                        {"best_state_dict": best_state}
                        if best_state is not None and not finished
                        else {}
                    ),
                },
                checkpoint,
            )
        if stop:
            epoch_bar.close()
            kept = [v["miou"] for v in history.val[: history.best_epoch]]
            print(
                f"{desc}: validation mIoU averaged over {converge.window} epochs has not improved "
                f"for {converge.patience} epochs; stopped after epoch {epoch + 1}, keeping epoch "
                f"{history.best_epoch} (average {converge.score(kept):.3f})"
            )
            break
    epoch_bar.close()
    if progress and history.epoch and history.epoch[-1] > start:
        # what a saved notebook shows of the training (its bars are widgets and are not saved)
        kept = history.best_epoch or history.epoch[-1]
        print(
            f"{desc}: trained {history.epoch[-1]} epochs in {history.seconds:.0f} s; final loss "
            f"{history.train_loss[-1]:.3f}, val mIoU {history.val[kept - 1]['miou']:.3f} (epoch "
            f"{kept})"
        )
    return history


def _epochs_behind(state: dict, epochs: int) -> int:
    """Of ``epochs``, how many a saved run has behind it: all once it finished (early stopping
    included), else the saved epoch (where :func:`fit` resumes)."""
    return epochs if state.get("finished") else min(epochs, int(state["epoch"]))


def epochs_done(checkpoint: str | Path, epochs: int) -> int:
    """:func:`_epochs_behind` of the run saved at ``checkpoint``; 0 without a file."""
    return _epochs_behind(safe_load(checkpoint), epochs) if Path(checkpoint).exists() else 0


def load_trained(
    model: nn.Module, checkpoint: str | Path, spec: dict, epochs: int
) -> History | None:
    """Load a finished run of the same spec into ``model``; None if there is none to load."""
    if not Path(checkpoint).exists():
        return None
    state = safe_load(checkpoint)
    check_spec(state, spec, checkpoint)
    if _epochs_behind(state, epochs) < epochs:
        return None  # unfinished: fit() resumes it
    model.load_state_dict(state["state_dict"])
    return History.from_dict(state["history"])
