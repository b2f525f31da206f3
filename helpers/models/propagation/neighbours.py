"""Reading a pixel's neighbours: the two operations every propagation step is made of.

* :func:`gather`: the value of a map at each neighbour of every pixel (exercise 5), zero outside
  the image: a pixel on the left border has no left neighbour, and it must not read the right
  border's value instead (wrap-around is the report's horizontal-line artefact);
* :func:`ring_sums`: per ring of the window, the affinity-weighted sum of those values (exercise
  8), what DySPN weighs with its attention pi^t_r.

Both are plain tensor code that autograd differentiates, and what the propagators run with
``backend="plain"`` (a student's copy of the workbook has no other backend). Where the faster
backends exist, they compute the same sums (``"torch"``: one custom autograd function that saves
one map instead of K neighbour copies; ``"triton"``: fused kernels on CUDA), and the tests check
that all of them agree, values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .autograd import as_float
from .geometry import Window, ring_sizes, window_offsets, window_reach


def gather(x: torch.Tensor, kernel: int | Window) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, K, H, W): ``out[:, :, j, y, x] = x[:, :, y + dy_j, x + dx_j]`` for
    the K neighbours (dy_j, dx_j) of :func:`window_offsets` (8 for CSPN's 3x3 window, in that
    order), and 0 where the neighbour lies outside the image (no wrap-around)."""
    # BEGIN EXERCISE neighbours
    H, W = x.shape[-2:]
    r = window_reach(kernel)
    # zeros around the image: a neighbour beyond the border reads 0, never the other side's value
    padded = F.pad(x, (r, r, r, r))
    shifted = [
        padded[..., r + dy : r + dy + H, r + dx : r + dx + W] for dy, dx in window_offsets(kernel)
    ]
    return torch.stack(shifted, 2)
    # END EXERCISE


def ring_sums(
    x: torch.Tensor, w: torch.Tensor, kernel: int | Window, centred: bool = False
) -> torch.Tensor:
    """Per ring r of the window: S_r = sum_{j in r} w_j X_j, or with ``centred``
    S_r = sum_{j in r} w_j (X_j - X), where X_j is X at neighbour j (0 outside the image).

    x (B, C, H, W), w (B, K, H, W) -> (B, R, C, H, W): the neighbours come ring by ring, as
    :func:`window_offsets` lists them, :func:`ring_sizes` per ring (8, 16, 24 for 7x7); every
    class of X shares the weights. The centred form is exactly 0 for a constant X.
    """
    # BEGIN EXERCISE ring-sums
    values = gather(x, kernel)  # (B, C, K, H, W)
    if centred:
        values = values - x[:, :, None]
    weighted = w[:, None] * values
    # one ring after the other: the neighbours are listed ring by ring
    return torch.stack([ring.sum(2) for ring in torch.split(weighted, ring_sizes(kernel), 2)], 1)
    # END EXERCISE


def confident_weights(
    pos: torch.Tensor, raw_confidence: torch.Tensor | None, kernel: int | Window
) -> torch.Tensor:
    """NLSPN's confidence-incorporated affinity: w_j^+ c_j with c = sigmoid(raw confidence)
    (B, 1, H, W) read at the neighbour j, so an unreliable pixel spreads less of its value.
    pos (B, K, H, W) -> (B, K, H, W). The normaliser keeps counting the full |w_j|, so the
    share (1 - c_j) w_j^+ goes to H^0: the update stays a convex combination."""
    if raw_confidence is None:
        return pos
    return pos * gather(torch.sigmoid(as_float(raw_confidence)), kernel)[:, 0]
