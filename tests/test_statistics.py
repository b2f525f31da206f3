"""Paired bootstrap of pooled gains: pooled metrics as the meter computes them, intervals that
behave as intervals must."""

import pytest
import torch

from helpers.analysis.metrics import SegmentationMeter, boundary_counts, confusion_matrix
from helpers.analysis.statistics import (
    counts_summary,
    image_counts,
    paired_bootstrap,
    pooled_metrics,
)


def random_maps(n=10, seed=0, flip=0.2):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, 32, 32, dtype=torch.long)
    for i in range(n):
        y, x = torch.randint(2, 14, (2,), generator=g).tolist()
        target[i, y : y + 14, x : x + 14] = 1
    noise = torch.rand(n, 32, 32, generator=g) < flip
    return torch.where(noise, 1 - target, target), target


def test_summed_image_counts_give_the_meters_pooled_metrics():
    pred, target = random_maps()
    meter = SegmentationMeter()
    meter.update(pred, target)
    cms, bcs = image_counts(pred, target)
    assert cms.shape == (10, 2, 2) and bcs.shape == (10, 2, 2)
    pooled = pooled_metrics(cms.sum(0), bcs.sum(0))
    assert {k: float(v) for k, v in pooled.items()} == pytest.approx(meter.summary(), abs=1e-12)
    assert cms.device.type == "cpu"
    if torch.cuda.is_available():  # where the counting runs changes nothing (the counts come back)
        on_device = image_counts(pred, target, device="cuda")
        assert torch.equal(on_device[0], cms) and torch.equal(on_device[1], bcs)


def test_per_image_counts_are_each_images_own_and_summarise_as_the_meter_does():
    pred, target = random_maps(n=7, seed=3)
    pred[2], target[2] = 0, 0  # an all-background image: the pet's IoU is undefined there
    cms, bcs = image_counts(pred, target, batch_size=3)  # counted in uneven batches
    for i in range(7):  # row i is image i alone, counted the meter's way
        assert torch.equal(cms[i], confusion_matrix(pred[i], target[i]))
        assert torch.equal(bcs[i], boundary_counts(pred[i], target[i]))
    meter = SegmentationMeter()
    meter.update(pred, target)
    metrics, image_miou = counts_summary(cms, bcs)
    assert metrics == meter.summary()  # exactly: the stages' figures did not move
    assert image_miou == meter.image_miou and image_miou[2] == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        image_counts(pred[:, :16], target)


def test_no_change_gives_a_zero_interval_and_a_real_gain_excludes_zero():
    worse, target = random_maps(flip=0.25)
    better, _ = random_maps(flip=0.05)
    runs = lambda pred: [image_counts(pred, target)] * 2  # noqa: E731  two "seeds"
    same = paired_bootstrap(runs(worse), runs(worse), resamples=200)
    assert same["miou"] == {"gain": 0.0, "low": 0.0, "high": 0.0, "excludes_zero": False}
    gain = paired_bootstrap(runs(worse), runs(better), resamples=200)
    for m in ("miou", "pet_iou", "boundary_iou"):
        assert gain[m]["low"] > 0 and gain[m]["excludes_zero"]
        assert gain[m]["low"] <= gain[m]["gain"] <= gain[m]["high"]
    real = (
        pooled_metrics(
            image_counts(better, target)[0].sum(0), image_counts(better, target)[1].sum(0)
        )["miou"]
        - pooled_metrics(
            image_counts(worse, target)[0].sum(0), image_counts(worse, target)[1].sum(0)
        )["miou"]
    )
    assert gain["miou"]["gain"] == pytest.approx(float(real))
    # swapped, the interval is mirrored
    loss = paired_bootstrap(runs(better), runs(worse), resamples=200)
    assert (
        loss["miou"]["high"] == pytest.approx(-gain["miou"]["low"])
        and loss["miou"]["excludes_zero"]
    )


def test_gain_is_averaged_over_seeds_and_inputs_are_checked():
    a, target = random_maps(flip=0.2)
    b, _ = random_maps(flip=0.1)
    c, _ = random_maps(flip=0.15)
    ca, cb, cc = (image_counts(p, target) for p in (a, b, c))
    both = paired_bootstrap([ca, ca], [cb, cc], resamples=50)["miou"]["gain"]
    one = [paired_bootstrap([ca], [x], resamples=50)["miou"]["gain"] for x in (cb, cc)]
    assert both == pytest.approx(sum(one) / 2)
    with pytest.raises(ValueError, match="same, non-zero number of seeds"):
        paired_bootstrap([ca], [cb, cc])
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([ca], [image_counts(b[:5], target[:5])])
