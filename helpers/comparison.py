"""Every refinement step side by side: what each buys, what it costs, and how T matters.

* :func:`all_stages` loads (or trains) the whole chain for one workbook: the coarse U-Net, the
  guided filter, both controls, CSPN and DySPN; then the same controls and refiners on a
  converged U-Net (the two settings: refining a minimally trained net, refining a good one).
* :func:`comparison_rows` / :func:`format_table`: metrics, parameters, training time and
  inference time per image, one row per stage.
* :func:`iteration_sweep`: a trained refiner evaluated at T = 0..T_max at inference (one pass:
  the maps of a T_max run are, iteration by iteration, those of every shorter run).
* :func:`estimate_seconds`: how long training the chain will take, timed before it starts.
"""
from __future__ import annotations

import math
import time

import torch

from .metrics import SegmentationMeter
from .refiner import CoarseSegmenter, Refiner
from .training import autocast_for, make_loader, segmentation_loss
from .workflow import (StageResult, Workbook, coarse_epochs, coarse_longer_stage, guided_filter_stage, load_coarse,
                       parse_stage, refine_epochs, refine_stage, stage_checkpoint, stage_name)

# the order of the table: from nothing learned to the most elaborate refiner, in each setting
STAGES = ("coarse", "guided-filter", "coarse-longer", "control", "cspn", "dyspn")
CONVERGED_STAGES = ("converged", "converged-longer", "converged+control", "converged+cspn", "converged+dyspn")
LABELS = {"coarse": "coarse U-Net", "guided-filter": "guided filter (no training)",
          "coarse-longer": "coarse U-Net trained on", "control": "refiner U-Net, no propagation",
          "cspn": "CSPN", "dyspn": "DySPN",
          "converged": "converged U-Net", "converged-longer": "converged U-Net trained on",
          "converged+control": "converged + refiner U-Net, no propagation",
          "converged+cspn": "converged + CSPN", "converged+dyspn": "converged + DySPN"}


def base_of(stage: str) -> str:
    """The stage a row's gain is measured against: ``coarse``, or ``converged`` for its setting."""
    return parse_stage(stage)[0]


def all_stages(wb: Workbook, progress: bool = True, converged: bool = True) -> dict[str, StageResult]:
    """The whole chain for ``wb``, each stage loaded from its checkpoint or trained now: the
    report's setting (:data:`STAGES`), then, with ``converged``, the same refiners and controls
    on a converged U-Net (:data:`CONVERGED_STAGES`)."""
    stages = {"coarse": load_coarse(wb, progress)}
    stages["guided-filter"] = guided_filter_stage(wb)
    bases = ("coarse", "converged") if converged else ("coarse",)
    for base in bases:
        stages[stage_name(base, "base")] = load_coarse(wb, progress, base)
        stages[stage_name(base, "longer")] = coarse_longer_stage(wb, progress=progress, base=base)
        for method in ("control", "cspn", "dyspn"):
            stages[stage_name(base, method)] = refine_stage(wb, method, progress=progress, base=base)
    return stages


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def seconds_per_image(model: torch.nn.Module, dataset, device, batch_size: int, max_images: int = 64) -> float:
    """Wall time of one image's inference, batched as in evaluation (after one warm-up batch)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        n = min(max_images, len(dataset))
        batches = [torch.stack([dataset[i][0] for i in range(lo, min(lo + batch_size, n))]).to(device)
                   for lo in range(0, n, batch_size)]
        model(batches[0])
        _synchronise(device)
        t0 = time.perf_counter()
        for images in batches:
            model(images)
        _synchronise(device)
    finally:
        model.train(was_training)
    return (time.perf_counter() - t0) / n


def comparison_rows(wb: Workbook, stages: dict[str, StageResult], split: str = "val") -> list[dict]:
    """One dict per stage: label, mIoU, pet IoU, Boundary IoU on ``split``, trained parameters,
    training seconds (a refiner's excludes the coarse net it builds on) and ms per image."""
    rows = []
    for name, r in stages.items():
        m = r.val_metrics if split == "val" else r.test_metrics
        ms = 1000 * seconds_per_image(r.model, wb.data["val"], wb.device, wb.cfg.batch_size)
        rows.append({"stage": name, "label": LABELS.get(name, name), **m, "parameters": r.parameters,
                     "train_seconds": r.history.seconds, "epochs": len(r.history.epoch), "ms_per_image": ms,
                     "settings": r.settings})
    return rows


SETTING_TITLES = {"coarse": "the report's setting: refining the minimally trained coarse U-Net",
                  "converged": "refining a converged U-Net (trained until validation mIoU stops improving)"}


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`comparison_rows`, one block per setting, with each row's mIoU
    and Boundary IoU gain over its setting's base net."""
    head = (f"{'':42s} {'mIoU':>6s} {'gain':>7s} {'pet IoU':>8s} {'Bnd IoU':>8s} {'gain':>7s} {'params':>9s} "
            f"{'train s':>8s} {'ms/img':>7s}")
    by_stage = {r["stage"]: r for r in rows}
    lines, setting = [], None
    for r in rows:
        base = base_of(r["stage"])
        if base != setting:
            setting = base
            lines += ([""] if lines else []) + [SETTING_TITLES[base], head]
        ref = by_stage.get(base, r)
        lines.append(f"{r['label']:42s} {r['miou']:6.3f} {r['miou'] - ref['miou']:+7.3f} {r['pet_iou']:8.3f} "
                     f"{r['boundary_iou']:8.3f} {r['boundary_iou'] - ref['boundary_iou']:+7.3f} {r['parameters']:9,d} "
                     f"{r['train_seconds']:8.0f} {r['ms_per_image']:7.1f}")
    return "\n".join(lines)


@torch.inference_mode()
def iteration_sweep(model: Refiner, dataset, device, batch_size: int, max_iterations: int = 12,
                    suppression: bool = True, amp: bool = False) -> list[dict]:
    """Metrics of ``model`` run with T = 0, 1, ..., ``max_iterations`` at inference: entry t is the
    pooled mIoU / pet IoU / Boundary IoU of H^t on ``dataset``. DySPN reuses its last attention
    beyond the trained T; ``suppression=False`` drops its diffusion suppression (an ablation)."""
    if model.propagator is None:
        raise ValueError("the control has no propagation to sweep")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meters = [SegmentationMeter(num_classes=model.classes) for _ in range(max_iterations + 1)]
    try:
        for images, targets in make_loader(dataset, batch_size, shuffle=False):
            with autocast_for(device, amp):   # as in evaluation, so entry T is the stage's own score
                out = model.refine(images.to(device), max_iterations, suppression)
            for meter, h in zip(meters, out.propagation.maps):
                meter.update(h.argmax(1).cpu(), targets)
    finally:
        model.train(was_training)
    return [m.summary() for m in meters]


def _step_seconds(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, steps: int = 2) -> float:
    """Seconds of one optimiser step (forward, backward, update) on one batch; the first is a warm-up."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for _ in range(steps):
        _synchronise(images.device)
        t0 = time.perf_counter()
        # a refiner's step is its real training step (perturbed start maps, deep supervision)
        loss = model.training_loss(images, targets) if isinstance(model, Refiner) else \
            segmentation_loss(model(images), targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        _synchronise(images.device)
        times.append(time.perf_counter() - t0)
    return min(times[1:] or times)


def estimate_seconds(wb: Workbook, converged: bool = True) -> dict[str, float]:
    """Seconds each stage of :func:`all_stages` will need to train on ``wb``, from a timed step of
    each model on one training batch (evaluation passes counted as a third of a step per batch);
    0 for a stage whose checkpoint exists (it is loaded); the converged net counted at its cap
    (an upper bound). Nothing is trained or saved."""
    cfg = wb.cfg
    loader = make_loader(wb.data["train"], cfg.batch_size, shuffle=False)
    images, targets = next(iter(loader))
    images, targets = images.to(wb.device), targets.to(wb.device)
    steps = math.ceil(len(wb.data["train"]) / cfg.batch_size)
    evals = math.ceil((len(wb.data["val"]) + len(wb.data["test"])) / cfg.batch_size)
    coarse = CoarseSegmenter.from_config(cfg).to(wb.device)
    per_step = {"coarse": _step_seconds(coarse, images, targets)}
    frozen = CoarseSegmenter.from_config(cfg).to(wb.device)
    for method in ("control", "cspn", "dyspn"):
        per_step[method] = _step_seconds(Refiner.from_config(cfg, frozen, method).to(wb.device), images, targets)
    estimate = {}
    for name in STAGES + (CONVERGED_STAGES if converged else ()):
        base, what = parse_stage(name)
        if name == "guided-filter":
            estimate[name] = per_step["coarse"] * 9 * evals / 3
            continue
        # the converged net's epochs are a cap: early stopping usually ends it sooner
        epochs = coarse_epochs(wb, False, base) if what == "base" else refine_epochs(wb)
        step = per_step["coarse" if what in ("base", "longer") else what]
        estimate[name] = 0.0 if stage_checkpoint(wb, name).exists() else step * epochs * (steps + evals / 3)
    return estimate


def save_readme_figures(wb: Workbook, stages: dict[str, StageResult], folder, count: int = 3) -> list:
    """The README's figures, made from ``wb``'s validation set: coarse vs refined maps for the
    ``count`` images where DySPN gains most, and a row of DySPN attention maps of the showcase
    image. Returns the written paths."""
    from pathlib import Path

    import matplotlib.pyplot as plt

    from . import viz
    from .workflow import gains_and_losses, refine_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    val = wb.data["val"]
    gains, _ = gains_and_losses(stages["coarse"].image_miou, stages["dyspn"].image_miou, k=count)
    names = {"coarse": "coarse", "cspn": "CSPN", "dyspn": "DySPN"}
    grid = viz.prediction_grid(val, {label: stages[s].val_probs.argmax(1) for s, label in names.items()}, gains,
                               {label: stages[s].image_miou for s, label in names.items()})
    i = wb.showcase_index
    images, refined = refine_images(stages["dyspn"].model, val, [i], wb.device)
    row = viz.attention_row(images[0], refined.probs[0], refined.propagation.attention[0], t=1)
    paths = [folder / "coarse_vs_refined.png", folder / "dyspn_attention.png"]
    for fig, path in zip((grid, row), paths):
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
    return paths
