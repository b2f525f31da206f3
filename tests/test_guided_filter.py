"""The guided filter against its defining properties and a slow per-window reference."""

import pytest
import torch

from helpers.models.guided_filter import (
    GuidedFilterRefiner,
    box_mean,
    filter_probabilities,
    guided_filter,
)


def test_box_mean_matches_a_loop_with_windows_clipped_at_the_border():
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    r = 2
    out = box_mean(x, r)
    for y in range(7):
        for z in range(9):
            window = x[:, :, max(0, y - r) : y + r + 1, max(0, z - r) : z + r + 1]
            torch.testing.assert_close(out[:, :, y, z], window.mean((-2, -1)))


def test_matches_the_per_window_definition():
    """q_i = mean over windows k containing i of (a_k^T I_i + b_k), a_k and b_k by ridge
    regression."""
    g = torch.Generator().manual_seed(0)
    I = torch.rand(1, 3, 6, 7, generator=g, dtype=torch.float64)
    p = torch.rand(1, 1, 6, 7, generator=g, dtype=torch.float64)
    r, eps = 1, 1e-2
    H, W = 6, 7
    coef = {}
    for y in range(H):
        for x in range(W):
            win = (slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1))
            Iw = I[0][:, win[0], win[1]].reshape(3, -1)
            pw = p[0, 0][win].reshape(-1)
            mu = Iw.mean(1)
            cov = (Iw - mu[:, None]) @ (Iw - mu[:, None]).T / Iw.shape[1]
            a = torch.linalg.solve(
                cov + eps * torch.eye(3, dtype=I.dtype),
                ((Iw - mu[:, None]) * (pw - pw.mean())).mean(1),
            )
            coef[y, x] = (a, pw.mean() - a @ mu)
    expected = torch.zeros(H, W, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            ks = [
                (ky, kx)
                for ky in range(max(0, y - r), min(H, y + r + 1))
                for kx in range(max(0, x - r), min(W, x + r + 1))
            ]
            expected[y, x] = sum(coef[k][0] @ I[0, :, y, x] + coef[k][1] for k in ks) / len(ks)
    torch.testing.assert_close(guided_filter(I, p, r, eps)[0, 0], expected)


def test_reproduces_a_linear_function_of_the_guide_and_keeps_constants():
    I = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    p = 0.5 * I[:, :1] - 0.2 * I[:, 1:2] + 0.3 * I[:, 2:] + 0.1
    torch.testing.assert_close(guided_filter(I, p, 3, 1e-12), p, atol=1e-6, rtol=0)
    c = torch.full((2, 1, 16, 16), 0.7, dtype=torch.float64)
    torch.testing.assert_close(guided_filter(I, c, 3, 1e-2), c)


def test_large_eps_is_a_plain_box_blur():
    I, p = (
        torch.rand(1, 3, 12, 12, dtype=torch.float64),
        torch.rand(1, 1, 12, 12, dtype=torch.float64),
    )
    torch.testing.assert_close(
        guided_filter(I, p, 2, 1e12), box_mean(box_mean(p, 2), 2), atol=1e-9, rtol=0
    )


def test_edges_of_the_guide_are_kept():
    """A blurry step whose edge is sharp in the image: the jump across the edge grows (the more,
    the smaller eps), and the result stays a probability map."""
    I = torch.zeros(1, 3, 20, 20)
    I[..., 10:] = 1.0
    blurry = box_mean((I[:, :1] > 0.5).float(), 3)
    jump = lambda m: float((m[..., 10] - m[..., 9]).mean())  # noqa: E731
    out = filter_probabilities(I, torch.cat([1 - blurry, blurry], 1), 4, 1e-3)
    softer = filter_probabilities(I, torch.cat([1 - blurry, blurry], 1), 4, 1.0)
    assert jump(out[:, 1:]) > 3 * jump(blurry) and jump(out[:, 1:]) > jump(softer[:, 1:])
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out.sum(1), torch.ones(1, 20, 20))


def test_refiner_trains_nothing_and_rejects_mismatched_inputs():
    from helpers.models.coarse import CoarseSegmenter

    m = GuidedFilterRefiner(CoarseSegmenter(width=4, depth=2, coarse_size=16), radius=2, eps=1e-2)
    assert not any(p.requires_grad for p in m.parameters())
    out = m(torch.rand(2, 3, 24, 24))
    assert out.shape == (2, 2, 24, 24)
    with pytest.raises(ValueError, match="do not match"):
        guided_filter(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 9), 1, 1e-2)
