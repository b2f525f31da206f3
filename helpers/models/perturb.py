"""Degrading a start map during refiner training, so the refiner learns the errors it will meet.

The coarse U-Net is better on the images it was trained on than on new ones: trained on its own
training images, a refiner sees start maps that are already nearly right and learns little more
than the identity. Cheng et al.'s CascadePSP (CVPR 2020) trains its refiner on deliberately
damaged masks instead; here the same idea is applied to the coarse probabilities P (B, C, H, W):
each map of a batch is, with probability ``rate``, put through a random chain of

* **grow**: one class c grows by r px (grey dilation of P_c, renormalised, so the band it grows
  into becomes uncertain; for two classes, growing the pet blurs it outwards, growing the
  background inwards);
* **blur**: a box blur of radius r (soft, smeared boundaries);
* **resample**: down-sampling by 2 or 4 and bilinear up-sampling (blocky, shifted boundaries);
* **shift**: a translation by up to ``max_shift`` px with the border replicated,

each step taken with probability 1/2, radii up to ``max_radius`` (both fractions of the side).
:func:`truth_starts` applies the same chain to the ground truth instead (CascadePSP's own recipe),
for a share of the batch.
The result is renormalised so that it stays a probability map. Randomness comes from torch's
global generator, which :func:`helpers.training.loop.fit` seeds, so training stays reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grow(p: torch.Tensor, cls: int, radius: int) -> torch.Tensor:
    """(1, C, H, W): class ``cls`` dilated by ``radius`` px (max filter), then renormalised: the
    band it grows into becomes uncertain (1/2 each, for a hard two-class map), not flipped."""
    grown = F.max_pool2d(p[:, cls : cls + 1], 2 * radius + 1, stride=1, padding=radius)
    q = torch.cat([p[:, :cls], grown, p[:, cls + 1 :]], 1)
    return q / q.sum(1, keepdim=True)


def blur(p: torch.Tensor, radius: int) -> torch.Tensor:
    """(1, C, H, W): box blur of radius ``radius`` (borders averaged over the pixels inside)."""
    return F.avg_pool2d(p, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def resample(p: torch.Tensor, factor: int) -> torch.Tensor:
    """(1, C, H, W): area down-sampling by ``factor``, bilinear up-sampling back."""
    H, W = p.shape[-2:]
    small = F.interpolate(p, size=(max(1, H // factor), max(1, W // factor)), mode="area")
    return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)


def shift(p: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(1, C, H, W) translated by (dy, dx) px, the border row / column replicated."""
    H, W = p.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    q = F.pad(p, pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return q[..., top : top + H, left : left + W]


def _randint(low: int, high: int) -> int:
    """An integer in [low, high] from torch's global generator."""
    return int(torch.randint(low, high + 1, (1,)))


def perturb_map(
    p: torch.Tensor, rate: float, max_radius: float = 0.04, max_shift: float = 0.03
) -> torch.Tensor:
    """Degrade each map of ``p`` (B, C, H, W) with probability ``rate``; returns a new tensor.

    Maps that are not chosen are returned unchanged; every output is a probability map.
    """
    if rate <= 0 or p.shape[0] == 0:
        return p
    side = min(p.shape[-2:])
    r_max = max(1, round(max_radius * side))
    s_max = max(1, round(max_shift * side))
    out = []
    for q in p.split(1):
        if float(torch.rand(())) < rate:
            if float(torch.rand(())) < 0.5:
                q = grow(q, _randint(0, q.shape[1] - 1), _randint(1, r_max))
            if float(torch.rand(())) < 0.5:
                q = blur(q, _randint(1, r_max))
            if float(torch.rand(())) < 0.5:
                q = resample(q, 2 ** _randint(1, 2))
            if float(torch.rand(())) < 0.5:
                q = shift(q, _randint(-s_max, s_max), _randint(-s_max, s_max))
        out.append(q)
    return torch.cat(out)


def truth_starts(p: torch.Tensor, target: torch.Tensor, rate: float) -> torch.Tensor:
    """Replace each map of ``p`` (B, C, H, W), with probability ``rate``, by the ground truth
    ``target`` (B, H, W) as a one-hot map, degraded by :func:`perturb_map` (every chosen map
    goes through the random chain). CascadePSP trains on such maps only; here they are a share,
    so the refiner also meets the coarse net's own errors. Returns a new tensor."""
    if rate <= 0 or p.shape[0] == 0:
        return p
    chosen = torch.rand(p.shape[0]) < rate
    if not chosen.any():
        return p
    index = chosen.nonzero()[:, 0].to(p.device)
    truth = F.one_hot(target[index].long(), p.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    out = p.clone()
    out[index] = perturb_map(truth, 1.0)
    return out
