"""Metrics against values computed by hand."""

import math

import torch

from helpers.analysis.metrics import (
    SegmentationMeter,
    boundary_band,
    boundary_counts,
    boundary_iou,
    boundary_width,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    per_image_miou,
)


def test_confusion_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1]])
    pred = torch.tensor([[0, 1, 1, 1]])
    cm = confusion_matrix(pred, target)
    assert cm.tolist() == [[1, 1], [0, 2]]
    # background: TP 1, FP 0, FN 1 -> 1/2 ; pet: TP 2, FP 1, FN 0 -> 2/3
    assert iou_per_class(cm).tolist() == [0.5, 2 / 3]
    assert math.isclose(mean_iou(cm), (0.5 + 2 / 3) / 2)


def test_empty_and_all_pet_masks():
    empty = torch.zeros(4, 4, dtype=torch.long)
    full = torch.ones(4, 4, dtype=torch.long)
    assert mean_iou(confusion_matrix(empty, empty)) == 1.0  # absent class is skipped, not 0
    assert mean_iou(confusion_matrix(full, full)) == 1.0
    assert mean_iou(confusion_matrix(full, empty)) == 0.0  # all wrong
    ious = iou_per_class(confusion_matrix(empty, full))
    assert ious.tolist() == [0.0, 0.0]


def test_pooled_is_not_mean_of_images():
    t = torch.tensor([[[1, 1, 1, 1]], [[0, 0, 0, 1]]])
    p = torch.tensor([[[1, 1, 1, 1]], [[0, 0, 0, 0]]])
    per = per_image_miou(p, t)
    assert per.tolist() == [1.0, (0.75 + 0.0) / 2]
    m = SegmentationMeter()
    m.update(p, t)
    # pooled: bg TP 3 FN 0 FP 1 -> 3/4 ; pet TP 4 FN 1 -> 4/5
    assert math.isclose(m.summary()["miou"], (0.75 + 0.8) / 2)
    assert math.isclose(m.summary()["pet_iou"], 0.8)


def test_boundary_band_and_width():
    assert boundary_width(100, 100) == round(0.02 * math.hypot(100, 100))  # 3 px
    mask = torch.zeros(1, 9, 9, dtype=torch.bool)
    mask[0, 2:7, 2:7] = True  # a 5x5 square
    band = boundary_band(mask, 1)
    assert band.sum() == 25 - 9  # the square minus its 3x3 interior
    full = torch.ones(1, 5, 5, dtype=torch.bool)
    assert boundary_band(full, 1).sum() == 25 - 9  # the image border counts as contour


def test_boundary_iou_by_hand():
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 2:8, 2:8] = 1
    assert boundary_iou(boundary_counts(target, target)) == 1.0
    pred = torch.zeros_like(target)
    pred[0, 2:8, 2:7] = 1  # one column short
    counts = boundary_counts(pred, target, ratio=0.02)  # width = round(0.02 * 14.1) = 0 -> 1 px
    pet = counts[1]
    bp = boundary_band(pred == 1, 1)
    bt = boundary_band(target == 1, 1)
    assert pet.tolist() == [int((bp & bt).sum()), int((bp | bt).sum())]
    assert 0 < boundary_iou(counts) < 1
