"""Where a segmentation's errors lie: wrong pixels binned by a distance, in bands.

Two distances, two questions:

* ``"boundary"``: the chessboard distance of a pixel to the nearest pixel of *another class* in
  the ground truth (1 for a pixel touching the boundary, 2 one further in, ...). Is an error an
  edge placed a pixel or two off, or a whole region taken for the wrong class? The image border
  is not a boundary here (unlike :func:`helpers.analysis.metrics.boundary_band`, whose band follows
  the Boundary IoU paper), and an image of one class has none: its pixels are farther than any band.
* ``"label"``: for a wrong pixel, the chessboard distance to the nearest pixel *the map itself*
  gives the pixel's true class. Propagation moves a label at most ``reach`` pixels per
  iteration (CSPN's 3x3 window: 1, DySPN's 7x7: 3), so T iterations starting from this map
  could fix the pixel only if that distance is at most T x reach; beyond it, no affinities
  could, and only a network that knows what is there can. (Within it, propagation also needs
  affinities that carry the right label and stop at the true edge.) A map without the class
  anywhere in the image puts the pixel farther than any band.

An error next to the true boundary may still be out of reach (a missed leg 5 px wide whose
tip is 20 px from any pet label), and one far from it may be within reach (a small hole in the
pet): the two distances answer different questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# upper edges of the distance bands, in pixels: 1, 2, 3, 4-6, 7-12, 13-18, 19-36, then farther.
# 6 and 18 are CSPN's and DySPN's reach after the workbook's T = 6 iterations
DISTANCE_EDGES = (1, 2, 3, 6, 12, 18, 36)


def boundary_distance(target: torch.Tensor, classes: int, max_distance: int) -> torch.Tensor:
    """Chessboard distance of every pixel to the nearest pixel of another class.

    target (N, H, W) integer labels 0..classes-1 -> (N, H, W) int64 in 1..max_distance, or
    max_distance + 1 for "farther" (and for every pixel of a one-class image).

    Growing each class's mask by one 3x3 step at a time, a pixel is within distance k once k
    steps have brought a second class into its (2k + 1)^2 window: its own class is always there.
    """
    if max_distance < 1:
        raise ValueError(f"max_distance must be >= 1, got {max_distance}")
    present = F.one_hot(target.long(), classes).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    start = torch.full(target.shape, max_distance + 1, dtype=torch.int64, device=target.device)
    return _first_reached(present, lambda grown: grown.sum(1) > 1.5, start, max_distance)


def _first_reached(
    present: torch.Tensor, reached, distance: torch.Tensor, max_distance: int
) -> torch.Tensor:
    """Grow the class masks ``present`` (N, C, H, W) by one 3x3 step at a time, k = 1..max_distance;
    where ``reached(grown)`` (N, H, W) first holds and ``distance`` is still "farther"
    (max_distance + 1), write k. The max-pool pads with -inf: nothing grows in from beyond the
    border."""
    for k in range(1, max_distance + 1):
        present = F.max_pool2d(present, 3, stride=1, padding=1)
        distance = torch.where(reached(present) & (distance > max_distance), k, distance)
    return distance


def label_distance(
    pred: torch.Tensor, target: torch.Tensor, classes: int, max_distance: int
) -> torch.Tensor:
    """For every pixel, the chessboard distance to the nearest pixel that ``pred`` labels with the
    pixel's true class: 0 where ``pred`` is right, 1..max_distance, or max_distance + 1 for
    "farther" (and where ``pred`` has no pixel of that class at all).

    pred, target (N, H, W) integer labels 0..classes-1 -> (N, H, W) int64. Each class's mask in
    ``pred`` grows by one 3x3 step at a time; a pixel is within k once k steps bring its true class
    in.
    """
    if max_distance < 1:
        raise ValueError(f"max_distance must be >= 1, got {max_distance}")
    present = F.one_hot(pred.long(), classes).permute(0, 3, 1, 2).float()  # (N, C, H, W)
    truth = target.long().unsqueeze(1)  # (N, 1, H, W)
    start = torch.where(pred == target, 0, max_distance + 1).to(torch.int64)
    return _first_reached(
        present, lambda grown: grown.gather(1, truth).squeeze(1) > 0.5, start, max_distance
    )


def edges_with(*distances: int, edges: tuple[int, ...] = DISTANCE_EDGES) -> tuple[int, ...]:
    """``edges`` with ``distances`` added (e.g. each propagator's reach T x r), sorted, so that
    :meth:`ErrorBands.within` can be asked about them."""
    if any(d < 1 for d in distances):
        raise ValueError(f"distances must be >= 1, got {distances}")
    return tuple(sorted(set(edges) | set(distances)))


def band_index(distance: torch.Tensor, edges: tuple[int, ...] = DISTANCE_EDGES) -> torch.Tensor:
    """Band of each distance: 0 for d <= edges[0], i for edges[i-1] < d <= edges[i], and
    len(edges) for d > edges[-1]. Same shape as ``distance``."""
    return torch.bucketize(distance, torch.tensor(edges, device=distance.device), right=False)


def band_labels(edges: tuple[int, ...] = DISTANCE_EDGES) -> list[str]:
    """Column names of the bands: "1", "2", "3", "4-6", ..., ">36"."""
    labels, low = [], 1
    for edge in edges:
        labels.append(str(edge) if edge == low else f"{low}-{edge}")
        low = edge + 1
    return labels + [f">{edges[-1]}"]


MEASURES = ("boundary", "label")


# eq=False: a generated __eq__ would compare tensors (an ambiguous truth value)
@dataclass(frozen=True, eq=False)
class ErrorBands:
    """Wrong pixels per distance band, pooled over images (and over runs: ``+``).

    edges: the bands' upper edges; errors (len(edges) + 1,) int64: the wrong pixels of each band,
    band k as :func:`band_index` numbers it; total: every pixel counted (right or wrong);
    pixels (len(edges) + 1,) int64: the pixels of each band, right or wrong. Under the
    ``"label"`` measure only a wrong pixel has a distance, so there pixels equal errors.
    """

    edges: tuple[int, ...]
    pixels: torch.Tensor
    errors: torch.Tensor
    total: int
    measure: str = "boundary"

    def __add__(self, other: "ErrorBands") -> "ErrorBands":
        if (self.edges, self.measure) != (other.edges, other.measure):
            raise ValueError(
                f"cannot pool bands of {self.measure} distance with edges {self.edges} and "
                f"bands of {other.measure} distance with edges {other.edges}"
            )
        return ErrorBands(
            self.edges,
            self.pixels + other.pixels,
            self.errors + other.errors,
            self.total + other.total,
            self.measure,
        )

    @property
    def labels(self) -> list[str]:
        return band_labels(self.edges)

    def share_of_pixels(self) -> torch.Tensor:
        """(bands,) float64: wrong pixels of each band as a share of *all* pixels. Summed over the
        bands, the stage's pixel error (1 - accuracy): a row difference says where a gain was
        made."""
        return self.errors.double() / max(self.total, 1)

    def error_rate(self) -> torch.Tensor:
        """(bands,) float64: the share of each band's own pixels that are wrong (nan for an empty
        band); boundary distance only (under the label distance every binned pixel is wrong)."""
        if self.measure != "boundary":
            raise ValueError(
                "an error rate per band needs the boundary distance: every pixel with a label "
                "distance is wrong"
            )
        return torch.where(
            self.pixels > 0, self.errors.double() / self.pixels.clamp(min=1), float("nan")
        )

    def within(self, distance: int) -> float:
        """Share of the wrong pixels at a distance of at most ``distance`` px (an edge)."""
        if distance not in self.edges:
            raise ValueError(f"{distance} is not a band edge: choose one of {self.edges}")
        inside = self.errors[: self.edges.index(distance) + 1].sum()
        return float(inside.double() / self.errors.sum().clamp(min=1))


def error_bands(
    pred: torch.Tensor,
    target: torch.Tensor,
    classes: int = 2,
    edges: tuple[int, ...] = DISTANCE_EDGES,
    batch_size: int = 64,
    measure: str = "boundary",
) -> ErrorBands:
    """Wrong pixels of label maps pred (N, H, W) against target (N, H, W), per band of the
    ``measure`` distance (``"boundary"``: :func:`boundary_distance` of the target; ``"label"``:
    :func:`label_distance` of pred to each pixel's true class).

    Counted where the maps are, ``batch_size`` images at a time; the counts come back to the CPU."""
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    if not edges or list(edges) != sorted(set(edges)) or edges[0] < 1:
        raise ValueError(f"band edges must increase from 1 on, got {edges}")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    bands = len(edges) + 1
    pixels = torch.zeros(bands, dtype=torch.int64)
    errors = torch.zeros(bands, dtype=torch.int64)
    for lo in range(0, len(pred), batch_size):
        p, t = pred[lo : lo + batch_size], target[lo : lo + batch_size].to(pred.device)
        wrong = (p != t).reshape(-1)
        if measure == "boundary":
            band = band_index(boundary_distance(t, classes, edges[-1]), edges).reshape(-1)
            pixels += torch.bincount(band, minlength=bands).cpu()
        else:
            band = band_index(label_distance(p, t, classes, edges[-1]), edges).reshape(-1)
        counted = torch.bincount(band[wrong], minlength=bands).cpu()
        errors += counted
        if measure == "label":  # only a wrong pixel has a label distance
            pixels += counted
    return ErrorBands(tuple(edges), pixels, errors, pred.numel(), measure)


def format_bands(rows: dict[str, ErrorBands], reach: dict[str, int] | None = None) -> str:
    """A text table: one row per stage, the % of all pixels wrong in each band and in total.

    ``reach`` (optional, e.g. ``{"CSPN": 6, "DySPN": 18}``) adds a column per entry: the share
    of the stage's wrong pixels within that many px (an edge of the bands)."""
    if not rows:
        raise ValueError("no stages to tabulate")
    first = next(iter(rows.values()))
    reach = reach or {}
    head = (
        ["stage"]
        + [f"{b} px" for b in first.labels]
        + ["total"]
        + [f"within {r} px ({n})" for n, r in reach.items()]
    )
    lines = [head]
    for name, bands in rows.items():
        share = bands.share_of_pixels()
        lines.append(
            [name]
            + [f"{100 * s:.2f}" for s in share.tolist()]
            + [f"{100 * share.sum():.2f}"]
            + [f"{100 * bands.within(r):.0f}%" for r in reach.values()]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))
        )
        for line in lines
    )
