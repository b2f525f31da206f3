"""Slow, obviously-correct references for the propagation modules, used by tests and benchmarks.

Neighbours are gathered with ``F.unfold`` (one copy per neighbour,
:func:`helpers.models.propagation.geometry.neighbour_values`), the border handled by unfolding a map
of ones; the update is written exactly as in the docstrings of :mod:`helpers.models.propagation`, in
the weighted-sum form, without the residual rewrite.
"""

from __future__ import annotations

import torch

from .autograd import AFFINITY_LIMIT
from .geometry import neighbour_values, ring_sizes
from .propagators import EPS


def _valid(x: torch.Tensor, kernel) -> torch.Tensor:
    ones = torch.ones_like(x[:, :1])
    return neighbour_values(ones, kernel)[:, 0]  # (B, K, H, W)


def _confidences(h0: torch.Tensor, raw_confidence: torch.Tensor | None, kernel) -> torch.Tensor:
    """(B, K, H, W): c_j = sigmoid(raw confidence) at neighbour j; 1 without a confidence."""
    if raw_confidence is None:
        return torch.ones_like(_valid(h0, kernel))
    return neighbour_values(torch.sigmoid(raw_confidence), kernel)[:, 0]


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
    # BEGIN EXERCISE solution-only
    neighbours = neighbours or neighbour_values
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
    # END EXERCISE


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
    # BEGIN EXERCISE solution-only
    neighbours = neighbours or neighbour_values
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
    # END EXERCISE
