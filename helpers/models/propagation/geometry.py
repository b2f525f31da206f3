"""The neighbourhoods of propagation: which pixels a pixel reads, ring by ring.

A window of odd ``size`` without its centre, split into rings of Chebyshev distance 1, 2, ...
(8, 16, 24 neighbours for 7x7); offsets are listed ring by ring, raster order inside a ring,
and every other module (the gather, the fast PyTorch path, the Triton kernels, the slow
reference) reads them from here so that all of them agree on which weight belongs to which
neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class Window:
    """A propagation neighbourhood: the ``size`` x ``size`` window without its centre, split into
    rings of Chebyshev distance 1 .. size // 2 (8, 16, 24, ... neighbours).

    With ``dilation`` d > 1, every ring but the first is spread d times farther out: ring r >= 2
    holds the same 8 r cells at distance r d (every offset times d), so one iteration of a window
    of size >= 5 reaches (size // 2) d pixels instead of size // 2, with the same number of
    neighbours and the same cost (a 3 x 3 window has only the first ring: nothing to dilate). The
    first ring stays at distance 1 because a window dilated throughout would split the image
    into d^2 interleaved grids that never exchange a value (every offset a multiple of d).
    Wherever a ``kernel`` is asked for, an int is the undilated window of that size.
    """

    size: int = 3
    dilation: int = 1

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 3 or self.size % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 3, got {self.size}")
        if (
            not isinstance(self.dilation, int)
            or isinstance(self.dilation, bool)
            or self.dilation < 1
        ):
            raise ValueError(f"dilation must be an integer >= 1, got {self.dilation}")


def as_window(kernel: int | Window) -> Window:
    """``7`` -> ``Window(7)``; a :class:`Window` is returned as is."""
    return kernel if isinstance(kernel, Window) else Window(kernel)


@lru_cache(maxsize=None)
def window_offsets(kernel: int | Window) -> tuple[tuple[int, int], ...]:
    """(dy, dx) of every neighbour in a ``kernel`` x ``kernel`` window without the centre,
    ordered ring by ring (Chebyshev distance 1, 2, ...), raster order inside a ring; a
    :class:`Window` with a dilation d spreads rings 2, 3, ... to distances 2 d, 3 d, ..."""
    win = as_window(kernel)
    r = win.size // 2
    cells = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    ring = lambda o: max(abs(o[0]), abs(o[1]))  # noqa: E731  (Chebyshev distance)
    spread = [1] + [win.dilation] * r  # ring 1 stays, rings 2.. move out d times
    return tuple(
        (dy * spread[ring((dy, dx)) - 1], dx * spread[ring((dy, dx)) - 1])
        for dy, dx in sorted(cells, key=lambda o: (ring(o), o))
    )


def ring_sizes(kernel: int | Window) -> tuple[int, ...]:
    """Neighbours per ring: 8, 16, 24, ... (8 d for ring d), dilated or not."""
    return tuple(8 * d for d in range(1, as_window(kernel).size // 2 + 1))


def window_reach(kernel: int | Window) -> int:
    """The farthest neighbour's Chebyshev distance: how far one iteration moves a value (the
    padding)."""
    return max(max(abs(dy), abs(dx)) for dy, dx in window_offsets(kernel))


def border_mask(
    kernel: int | Window, height: int, width: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """(K, H, W) with 1 where neighbour j of pixel (y, x) lies inside the image, else 0."""
    offsets = torch.tensor(window_offsets(kernel), device=device)  # (K, 2)
    ys = torch.arange(height, device=device)[None, :, None] + offsets[:, 0, None, None]
    xs = torch.arange(width, device=device)[None, None, :] + offsets[:, 1, None, None]
    # one broadcast, no loop
    return ((ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)).to(dtype)
