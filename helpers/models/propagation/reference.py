"""Slow, obviously-correct references for the propagation modules, used by tests and benchmarks.

Neighbours are gathered with ``F.unfold`` (:func:`unfold_neighbours`: a different route from
:func:`helpers.models.propagation.neighbours.gather`'s shifted views, so the two check each
other), the border handled by unfolding a map of ones; the update is written exactly as in the
docstrings of :mod:`helpers.models.propagation`, in the weighted-sum form, without the residual
rewrite. Only the solution edition has this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .autograd import AFFINITY_LIMIT
from .geometry import ring_sizes, window_offsets, window_reach
from .propagators import EPS


def unfold_neighbours(x: torch.Tensor, kernel) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, K, H, W): ``x`` at neighbour j of every pixel, in
    :func:`window_offsets` order, 0 outside the image, by ``F.unfold`` of the square that holds
    every neighbour (7 for 7x7; 13 for 7x7 at dilation 2) and a selection of its cells."""
    B, C, H, W = x.shape
    r = window_reach(kernel)
    side = 2 * r + 1
    order = torch.tensor(
        [(dy + r) * side + (dx + r) for dy, dx in window_offsets(kernel)], device=x.device
    )
    cols = F.unfold(x, side, padding=r).view(B, C, side * side, H, W)
    return cols.index_select(2, order)


def _valid(x: torch.Tensor, kernel) -> torch.Tensor:
    ones = torch.ones_like(x[:, :1])
    return unfold_neighbours(ones, kernel)[:, 0]  # (B, K, H, W)


def _confidences(h0: torch.Tensor, raw_confidence: torch.Tensor | None, kernel) -> torch.Tensor:
    """(B, K, H, W): c_j = sigmoid(raw confidence) at neighbour j; 1 without a confidence."""
    if raw_confidence is None:
        return torch.ones_like(_valid(h0, kernel))
    return unfold_neighbours(torch.sigmoid(raw_confidence), kernel)[:, 0]


def reference_cspn(
    h0: torch.Tensor,
    raw: torch.Tensor,
    iterations: int,
    neighbours=None,
    raw_confidence: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """H^0..H^T with kappa_j = c_j k_j^+ / max(1, sum|k|) and
    H^{t+1} = sum kappa H^t_j + (1 - sum kappa) H^0 (c_j = 1 without ``raw_confidence``).
    ``neighbours(x, kernel)`` -> (B, C, K, H, W) gathers them (default: ``F.unfold``)."""
    neighbours = neighbours or unfold_neighbours
    k = raw.clamp(-AFFINITY_LIMIT, AFFINITY_LIMIT) * _valid(h0, 3)
    kappa = (
        k.clamp(min=0)
        / k.abs().sum(1, keepdim=True).clamp(min=1)
        * _confidences(h0, raw_confidence, 3)
    )
    maps = [h0]
    for _ in range(iterations):
        nb = neighbours(maps[-1], 3)  # (B, C, 8, H, W)
        maps.append((kappa[:, None] * nb).sum(2) + (1 - kappa.sum(1, keepdim=True)) * h0)
    return maps


def reference_dyspn(
    h0: torch.Tensor,
    raw: torch.Tensor,
    raw_attention: torch.Tensor,
    iterations: int,
    kernel=7,
    neighbours=None,
    raw_confidence: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """H^0..H^T of the DySPN update in weighted-sum form (see helpers.models.propagation.DySPN);
    ``neighbours`` as for :func:`reference_cspn`; with ``raw_confidence`` the share
    (1 - c_j) w_j^+ of each neighbour goes to H^0."""
    neighbours = neighbours or unfold_neighbours
    B, C, H, W = h0.shape
    w = raw.clamp(-AFFINITY_LIMIT, AFFINITY_LIMIT) * _valid(h0, kernel)
    pos, neg = w.clamp(min=0), (-w).clamp(min=0)
    c = _confidences(h0, raw_confidence, kernel)
    sizes = ring_sizes(kernel)
    R = len(sizes)
    pi = torch.sigmoid(raw_attention).view(B, -1, R + 1, H, W)
    bounds = [sum(sizes[:i]) for i in range(R + 1)]
    maps = [h0]
    for t in range(iterations):
        p = pi[:, min(t, pi.shape[1] - 1)]
        nb = neighbours(maps[-1], kernel)
        num = p[:, R:] * maps[-1]
        to_h0 = torch.zeros_like(h0[:, :1])
        G = p[:, R:] + EPS
        for r in range(R):
            sl = slice(bounds[r], bounds[r + 1])
            num = num + p[:, r : r + 1] * (pos[:, None, sl] * c[:, None, sl] * nb[:, :, sl]).sum(2)
            to_h0 = to_h0 + p[:, r : r + 1] * (neg[:, sl] + (1 - c[:, sl]) * pos[:, sl]).sum(
                1, keepdim=True
            )
            G = G + p[:, r : r + 1] * (pos[:, sl] + neg[:, sl]).sum(1, keepdim=True)
        num = num + (to_h0 + EPS) * h0
        maps.append(num / G)
    return maps
