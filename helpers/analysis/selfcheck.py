"""Self-checks the notebooks run: each asserts only what the data and training can support, and
fails with one sentence a student can act on.

A seconds-long smoke run on a dozen images cannot be asked to beat the all-background
predictor, and a gain of a refiner cannot be told from noise on a few validation images: those
checks are skipped, with the reason printed, instead of failing.
"""

from __future__ import annotations

import torch

from .metrics import confusion_matrix, mean_iou

# below these sizes a learning claim is not asserted (one image moves mIoU by several hundredths)
MIN_VAL_IMAGES = 30
MIN_TRAIN_IMAGES = 60
MIN_VAL_FOR_GAIN = 50
# one seed on one machine: a refiner within this much below its base net is a tie, not a failure
# (seed-to-seed and thread-count spreads are about 0.01-0.02 mIoU; README, Reproducibility)
GAIN_TOLERANCE = 0.01
LEARNING_MARGIN = 0.1  # a trained net must beat "everything is background" by this much mIoU


def trivial_miou(dataset) -> float:
    """Pooled mIoU of predicting background everywhere on ``dataset`` (the floor any net must
    beat)."""
    targets = dataset.targets.long()
    return float(mean_iou(confusion_matrix(torch.zeros_like(targets), targets)))


def enough_to_judge(wb, min_val: int = MIN_VAL_IMAGES) -> str | None:
    """None when ``wb`` has the data and training for a learning claim, else why not."""
    n_train, n_val = len(wb.data["train"]), len(wb.data["val"])
    if wb.cfg.profile == "smoke":
        return "the smoke profile trains for seconds"
    if n_val < min_val or n_train < MIN_TRAIN_IMAGES:
        return (
            f"only {n_train} training and {n_val} validation images (a learning claim needs at "
            "least "
            f"{MIN_TRAIN_IMAGES} and {min_val})"
        )
    return None


def check_learned(stage, wb, what: str = "coarse U-Net") -> None:
    """Assert that ``stage`` beats the all-background predictor by :data:`LEARNING_MARGIN` mIoU on
    validation, where the data supports it; otherwise say why the check was skipped."""
    miou, floor = stage.val_metrics["miou"], trivial_miou(wb.data["val"])
    why_not = enough_to_judge(wb)
    if why_not:
        print(
            f"learning check skipped: {why_not}; {what} {miou:.3f} val mIoU, all-background "
            f"{floor:.3f}"
        )
        return
    assert miou > floor + LEARNING_MARGIN, (
        f"the {what} reached {miou:.3f} validation mIoU, not {LEARNING_MARGIN} above predicting "
        "background "
        f"everywhere ({floor:.3f}): it did not learn. Check the data (notebook 00's figures) and "
        "the learning "
        f"rate, then retrain with retrain=True"
    )
    print(f"learning check passed: {what} {miou:.3f} val mIoU vs all-background {floor:.3f}")


def check_improves(refined, base, wb, what: str) -> None:
    """Assert that a refiner's validation mIoU is above its base net's, where there are enough
    validation images to tell (:data:`MIN_VAL_FOR_GAIN`); otherwise say why it was skipped."""
    after, before = refined.val_metrics["miou"], base.val_metrics["miou"]
    why_not = enough_to_judge(wb, MIN_VAL_FOR_GAIN)
    if why_not:
        print(f"improvement check skipped: {why_not}; {what} {after:.3f} vs {before:.3f} val mIoU")
        return
    assert after > before - GAIN_TOLERANCE, (
        f"{what} scored {after:.3f} validation mIoU, more than {GAIN_TOLERANCE} below the "
        f"{before:.3f} of the "
        "net it refines: the refiner made the map worse. Look at its training curve above (did "
        "the loss "
        f"fall?) and at the per-iteration maps; a refine_lr that is too high is the usual cause"
    )
    verdict = "above" if after > before else f"a tie (within {GAIN_TOLERANCE})"
    print(f"improvement check passed: {what} {after:.3f} vs {before:.3f} val mIoU, {verdict}")
