"""The lean GPU path (helpers/batches.py), checked on the CPU: batches served from the device,
the batched flip-and-crop, evaluation without copies, and the thread cap."""

import pytest
import torch
from toys import toy_data

from helpers.core.checkpoint import safe_load
from helpers.core.runtime import limit_cpu_threads
from helpers.data.batches import (
    DeviceBatches,
    crop_boxes,
    flip_and_crop,
    make_batches,
    make_loader,
    split_batches,
)
from helpers.data.dataset import CROP_RATIO, CROP_SCALE, train_transforms
from helpers.models.coarse import CoarseSegmenter
from helpers.training.evaluation import evaluate, evaluate_probs, predict
from helpers.training.loop import fit


def test_split_batches_equal_the_dataloader_bit_for_bit():
    data = toy_data(10)
    fast = list(split_batches(data, 4, "cpu"))
    slow = list(make_loader(data, 4, shuffle=False))
    assert [len(x) for x, _ in fast] == [4, 4, 2]
    for (a, ta), (b, tb) in zip(fast, slow):
        assert a.dtype == b.dtype == torch.float32 and ta.dtype == tb.dtype == torch.int64
        assert torch.equal(a, b) and torch.equal(ta, tb)


def test_device_batches_visit_every_image_once_per_pass_reproducibly():
    data = toy_data(10)
    # a tag per image (no augmentation)
    data.images[:, 0, 0, 0] = torch.arange(10, dtype=torch.uint8)
    batches = DeviceBatches(data, 4, shuffle=True, seed=3, device="cpu")
    assert len(batches) == 3

    def tags(b):
        return [int(round(v * 255)) for x, _ in b for v in x[:, 0, 0, 0].tolist()]

    first, second = tags(batches), tags(batches)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # a new order every pass
    assert first == tags(DeviceBatches(data, 4, shuffle=True, seed=3, device="cpu"))
    # the generator's state is what a checkpoint saves: restoring it replays the next pass
    state = batches.generator.get_state()
    third = tags(batches)
    batches.generator.set_state(state)
    assert tags(batches) == third
    assert tags(DeviceBatches(data, 4, shuffle=False, seed=0, device="cpu")) == list(range(10))


def test_crop_boxes_follow_the_random_resized_crop_rule():
    g = torch.Generator().manual_seed(0)
    H, W = 40, 50
    boxes = crop_boxes(4000, (H, W), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    assert (h > 0).all() and (w > 0).all()
    share, aspect = (h * w).double() / (H * W), w.double() / h.double()
    # sides are rounded, so the ranges hold to a pixel's worth
    assert share.min() >= CROP_SCALE[0] - 0.05 and share.max() <= CROP_SCALE[1] + 0.05
    assert aspect.min() >= CROP_RATIO[0] - 0.06 and aspect.max() <= CROP_RATIO[1] + 0.06
    # positions spread over every place a box fits: both ends are reached
    assert top.min() == 0 and left.min() == 0 and ((top + h) == H).any() and ((left + w) == W).any()
    # a box that can never fit falls back to the whole image
    whole = crop_boxes(5, (H, W), g, scale=(1.0, 1.0), ratio=(3.0, 3.0))
    assert whole.tolist() == [[0, 0, H, W]] * 5


def test_a_whole_image_crop_is_the_image_or_its_mirror_and_the_mask_follows():
    data = toy_data(8, size=20)
    images, targets = next(iter(split_batches(data, 8, "cpu")))
    g = torch.Generator().manual_seed(1)
    out, labels = flip_and_crop(images, targets, g, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = []
    for x, t, y, lab in zip(images, targets, out, labels):
        if torch.allclose(y, x, atol=1e-5):
            assert torch.equal(lab, t)
            flipped.append(False)
        else:
            assert torch.allclose(y, x.flip(-1), atol=1e-5) and torch.equal(lab, t.flip(-1))
            flipped.append(True)
    assert any(flipped) and not all(flipped)


def test_random_crops_keep_image_and_mask_aligned():
    data = toy_data(16, size=32)
    # the image shows the mask
    data.images[:] = (data.targets[:, None] * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    images, targets = next(iter(split_batches(data, 16, "cpu")))
    out, labels = flip_and_crop(images, targets, torch.Generator().manual_seed(2))
    assert (
        out.shape == images.shape and labels.shape == targets.shape and labels.dtype == torch.int64
    )
    assert set(labels.unique().tolist()) <= {0, 1}
    agree = ((out[:, 0] > 0.5).long() == labels).double().mean()
    assert agree > 0.97  # only boundary pixels may differ (bilinear vs nearest)
    assert (labels != targets).any()  # and the crops did change the maps


def test_device_batches_augment_where_the_split_has_transforms():
    data = toy_data(8, size=24)
    plain = [t for _, t in DeviceBatches(data, 8, shuffle=False, seed=0, device="cpu")][0]
    data.transforms = train_transforms(24)
    augmented = [t for _, t in DeviceBatches(data, 8, shuffle=False, seed=0, device="cpu")][0]
    assert torch.equal(plain, data.targets.long()) and not torch.equal(augmented, plain)
    # CPU: the DataLoader
    assert isinstance(make_batches(data, 4, True, 0, "cpu"), torch.utils.data.DataLoader)
    assert isinstance(make_batches(data, 4, True, 0, "cpu", on_device=True), DeviceBatches)


def test_evaluate_on_the_device_equals_the_metrics_of_the_predictions():
    torch.manual_seed(0)
    model = CoarseSegmenter(classes=2, width=4, depth=2, coarse_size=16)
    data = toy_data(9)
    probs = predict(model, data, 4, "cpu")
    assert evaluate(model, data, 4, "cpu") == evaluate_probs(probs, data)[0]
    # counted in chunks on a device (as workflow does on a GPU): the same pooled and per-image
    # figures
    assert evaluate_probs(probs, data, "cpu", batch_size=2) == evaluate_probs(
        probs, data, batch_size=64
    )
    with pytest.raises(ValueError, match="2 probability maps for a dataset of 9"):
        evaluate_probs(probs[:2], data, batch_size=2)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, toy_data(0), 4, "cpu")


def test_training_from_device_batches_learns_and_resumes_exactly(tmp_path, monkeypatch):
    """Interrupted in epoch 2 of 3 and resumed: the same history and weights as a run that was
    not, so the device batches' random state travels in the checkpoint."""
    import helpers.training.loop as tr

    train, val = toy_data(), toy_data(6, seed=1)
    train.transforms = train_transforms(24)
    kw = dict(
        epochs=3,
        lr=5e-3,
        batch_size=4,
        device="cpu",
        seed=0,
        progress=False,
        data_on_device=True,
        spec={"stage": "t"},
    )

    def model():
        torch.manual_seed(0)
        return CoarseSegmenter(classes=2, width=4, depth=2, coarse_size=16)

    straight = model()
    whole = fit(straight, train_set=train, val_set=val, checkpoint=tmp_path / "a.pt", **kw)
    assert whole.train_loss[-1] < whole.train_loss[0]

    class Stop(Exception):
        pass

    real_evaluate, calls = tr.evaluate, []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise Stop
        return real_evaluate(*a, **k)

    monkeypatch.setattr(tr, "evaluate", interrupting)
    with pytest.raises(Stop):
        fit(model(), train_set=train, val_set=val, checkpoint=tmp_path / "b.pt", **kw)
    assert safe_load(tmp_path / "b.pt")["epoch"] == 1
    # fit is deterministic, so a restart from scratch would match too: count the evaluated epochs
    evaluated = []
    monkeypatch.setattr(
        tr, "evaluate", lambda *a, **k: (evaluated.append(1), real_evaluate(*a, **k))[1]
    )
    resumed = model()
    again = fit(resumed, train_set=train, val_set=val, checkpoint=tmp_path / "b.pt", **kw)
    assert len(evaluated) == 2, (
        "the resumed run retrained from epoch 0 instead of continuing after epoch 1"
    )
    assert again.val == whole.val and again.train_loss == whole.train_loss
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_thread_cap_leaves_an_explicit_choice_alone(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert limit_cpu_threads(1) == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        assert limit_cpu_threads(1) == before
    finally:
        torch.set_num_threads(before)
