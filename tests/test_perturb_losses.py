"""Refiner training: degraded start maps, boundary-weighted and deeply supervised losses."""

import pytest
import torch

from helpers.analysis.metrics import boundary_band
from helpers.models.coarse import CoarseSegmenter
from helpers.models.losses import boundary_weights, refinement_loss, segmentation_loss
from helpers.models.perturb import blur, grow, perturb_map, resample, shift, truth_starts
from helpers.models.refiner import Refiner


def square_map(size=24, lo=8, hi=16):
    """(1, 2, S, S) probabilities: pet = 1 inside a square, 0 outside."""
    pet = torch.zeros(1, 1, size, size)
    pet[..., lo:hi, lo:hi] = 1.0
    return torch.cat([1 - pet, pet], 1)


def test_each_degradation_does_what_it_says():
    p = square_map()
    area = lambda q: float(q[:, 1].sum())  # noqa: E731
    ring = (8 + 4) ** 2 - 8**2  # the 2 px band around the pet
    assert area(grow(p, 1, 2)) == 8**2 + ring / 2  # pet grown: the band becomes 1/2 pet
    inner = 8**2 - (8 - 4) ** 2  # the 2 px band inside the pet
    # background grown: that band 1/2 pet
    assert area(grow(p, 0, 2)) == pytest.approx(8**2 - inner / 2)
    assert grow(p, 1, 2)[0, 1, 12, 12] == 1 and grow(p, 1, 2)[0, 1, 0, 0] == 0
    # away from the border: exact
    torch.testing.assert_close(shift(p, 3, -2), square_map().roll((3, -2), (-2, -1)))
    b = blur(p, 1)
    # corner smeared, inside kept
    assert b[0, 1, 8, 8] == pytest.approx(4 / 9) and b[0, 1, 12, 12] == 1.0
    assert resample(torch.full((1, 2, 16, 16), 0.5), 4).eq(0.5).all()
    for q in (grow(p, 1, 3), blur(p, 2), resample(p, 4), shift(p, -5, 4)):
        torch.testing.assert_close(q.sum(1), torch.ones(1, 24, 24))
        assert q.min() >= 0


def test_perturb_rate_zero_is_identity_rate_one_degrades_reproducibly():
    p = square_map().repeat(6, 1, 1, 1)
    assert perturb_map(p, 0.0) is p
    torch.manual_seed(0)
    a = perturb_map(p, 1.0)
    torch.manual_seed(0)
    b = perturb_map(p, 1.0)
    torch.testing.assert_close(a, b)  # the seed decides everything
    changed = [not torch.equal(a[i], p[i]) for i in range(6)]
    assert sum(changed) >= 4  # each step is taken with probability 1/2
    torch.testing.assert_close(a.sum(1), torch.ones(6, 24, 24))
    assert perturb_map(p[:0], 1.0).shape == (0, 2, 24, 24)


def test_refiner_perturbs_only_in_train_mode():
    torch.manual_seed(0)
    coarse = CoarseSegmenter(width=4, depth=2, coarse_size=12)
    model = Refiner(coarse, method="cspn", width=4, depth=2, iterations=2, perturb=1.0)
    image = torch.rand(4, 3, 24, 24)
    model.eval()
    out = model.refine(image)
    torch.testing.assert_close(out.coarse, coarse(image))  # evaluation sees the real coarse map
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(model.refine(image).coarse, out.coarse)


def test_truth_starts_replace_a_share_by_degraded_ground_truth():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(64, 1, 6, 6, generator=g) > 0.5).float()
    target = torch.nn.functional.interpolate(target, size=(24, 24), mode="nearest")[
        :, 0
    ].long()  # blobs
    flat = torch.full((64, 2, 24, 24), 0.5)
    assert truth_starts(flat, target, 0.0) is flat
    torch.manual_seed(0)
    out = truth_starts(flat, target, 0.5)
    assert flat.eq(0.5).all()  # the input is not changed
    torch.testing.assert_close(out.sum(1), torch.ones(64, 24, 24))  # still probability maps
    replaced = ~out.eq(0.5).flatten(1).all(1)
    assert 16 <= int(replaced.sum()) <= 48  # about half the batch
    agree = (out.argmax(1) == target).flatten(1).double().mean(1)
    assert agree[replaced].mean() > 0.8  # degraded, but the truth's shapes
    torch.manual_seed(0)
    every = truth_starts(flat, target, 1.0)
    exact = [
        torch.equal(m, torch.nn.functional.one_hot(t, 2).permute(2, 0, 1).float())
        for m, t in zip(every, target)
    ]
    assert any(exact) and not all(exact)  # the chain skips all its steps 1 in 16 times


def test_truth_starts_only_in_train_mode_and_only_when_asked():
    coarse = CoarseSegmenter(width=4, depth=2, coarse_size=12)
    image = torch.rand(4, 3, 24, 24)
    target = torch.zeros(4, 24, 24, dtype=torch.long)
    target[:, 6:18, 4:16] = 1  # a pet, not noise
    plain = Refiner(coarse, method="cspn", width=4, depth=2, iterations=2, perturb=0.5).train()
    torch.manual_seed(3)
    a = plain.refine(image, truth=target).coarse
    torch.manual_seed(3)
    # rate 0: the same random stream
    torch.testing.assert_close(a, plain.refine(image).coarse, rtol=0, atol=0)
    truth = Refiner(coarse, method="cspn", width=4, depth=2, iterations=2, perturb_truth=1.0)
    truth.eval()
    torch.testing.assert_close(truth.refine(image, truth=target).coarse, coarse(image))
    truth.train()
    torch.manual_seed(3)
    seen = truth.refine(image, truth=target).coarse
    assert ((seen.argmax(1) == target).double().mean()) > 0.8


def test_boundary_weights_mark_the_band_of_every_class():
    target = torch.zeros(2, 50, 50, dtype=torch.long)
    target[:, 10:30, 15:35] = 1
    assert boundary_weights(target, 1.0, 2) is None
    w = boundary_weights(target, 4.0, 2)
    band = boundary_band(target == 0, 1) | boundary_band(target == 1, 1)
    assert set(w.unique().tolist()) == {1.0, 4.0}
    assert (w[band] == 4.0).all() and w[0, 0, 0] == 4.0  # the image border is a contour too
    assert w[0, 20, 25] == 1.0 and w[0, 45, 25] == 1.0  # deep inside the pet / the background


def test_weighted_and_deep_losses_are_the_stated_means():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (2, 20, 20), generator=g)
    maps = [torch.softmax(torch.randn(2, 2, 20, 20, generator=g), 1) for _ in range(4)]
    ce = lambda h: -torch.log(h.gather(1, target[:, None])[:, 0].clamp_min(1e-6))  # noqa: E731
    # plain: the cross-entropy of the last map only
    assert refinement_loss(maps, target) == pytest.approx(float(ce(maps[-1]).mean()), rel=1e-5)
    # deep: the mean over t = 1..T (H^0 is the input, not an output)
    deep = sum(float(ce(h).mean()) for h in maps[1:]) / 3
    assert refinement_loss(maps, target, deep=True) == pytest.approx(deep, rel=1e-5)
    # weighted: sum(w ce) / sum(w)
    w = boundary_weights(target, 3.0, 2)
    expected = float((w * ce(maps[-1])).sum() / w.sum())
    assert refinement_loss(maps, target, boundary_weight=3.0) == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(maps[-1], target, torch.ones(2, 20, 20)) == pytest.approx(
        float(ce(maps[-1]).mean()), rel=1e-5
    )
    # a supervised start: + w x the (weighted) cross-entropy of H^0 on top of the deep mean
    start = float((w * ce(maps[0])).sum() / w.sum())
    deep_w = sum(float((w * ce(h)).sum() / w.sum()) for h in maps[1:]) / 3
    assert refinement_loss(maps, target, True, 3.0, start_weight=0.5) == pytest.approx(
        deep_w + 0.5 * start, rel=1e-5
    )


def test_start_weight_supervises_only_a_start_the_refiner_predicts():
    """start_weight adds w x CE(H^0) to a propagator's loss where H^0 is its corrected start; the
    control (its start is its output) and a coarse start (frozen) are unchanged; the gradient of
    the added term reaches the start head and nothing of the affinities."""
    image, target = torch.rand(2, 3, 24, 24), torch.randint(0, 2, (2, 24, 24))
    base = CoarseSegmenter(width=4, depth=2, coarse_size=12)
    for method, start, counts in (
        ("dyspn", "corrected", True),
        ("cspn", "corrected", True),
        ("dyspn", "coarse", False),
        ("control", "corrected", False),
    ):
        losses, grads = [], []
        for w in (0.0, 2.0):
            torch.manual_seed(0)
            m = Refiner(
                base,
                method=method,
                start=start,
                width=4,
                depth=2,
                iterations=3,
                kernel=5,
                deep_supervision=True,
                boundary_weight=4.0,
                start_weight=w,
            ).eval()  # eval: no random degradation
            # a head that is not the identity yet
            torch.nn.init.normal_(m.guidance.head.conv.weight, std=0.1)
            loss = m.training_loss(image, target)
            loss.backward()
            losses.append(loss.item())
            grads.append(m.guidance.head.conv.weight.grad.clone())
            if counts:
                with torch.no_grad():
                    ce0 = refinement_loss(
                        [m.refine(image).start], target, boundary_weight=4.0
                    ).item()
        if not counts:
            assert losses[1] == pytest.approx(losses[0], rel=1e-6) and torch.equal(
                grads[0], grads[1]
            )
            continue
        assert losses[1] == pytest.approx(losses[0] + 2.0 * ce0, rel=1e-5)
        s0, s1 = m.layout.start
        changed = (grads[1] - grads[0]).abs().flatten(1).sum(1) > 0  # per head channel
        assert changed[s0:s1].all() and not changed[:s0].any()
    with pytest.raises(ValueError, match="start_weight"):
        Refiner(base, method="dyspn", start="corrected", width=4, depth=2, start_weight=-1)


@pytest.mark.parametrize("method", ["control", "cspn", "dyspn"])
def test_training_loss_backpropagates_to_the_guidance_only(method):
    torch.manual_seed(0)
    model = Refiner(
        CoarseSegmenter(width=4, depth=2, coarse_size=12),
        method=method,
        width=4,
        depth=2,
        iterations=3,
        perturb=0.5,
        deep_supervision=True,
        boundary_weight=4.0,
    ).train()
    loss = model.training_loss(torch.rand(2, 3, 24, 24), torch.randint(0, 2, (2, 24, 24)))
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None for p in model.coarse.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.guidance.parameters())
