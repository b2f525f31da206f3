"""Comparing a package's outputs with the solution's: relative errors, exact equality and
gradient checks, each raising :class:`Mismatch` with what differs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

# accepted relative error (normwise, see rel_error): float32 rounding, another thread count
TOLERANCE = 1e-5


class Mismatch(Exception):
    """Raised inside a check: why the student's result is not the reference's."""


@dataclass
class Part:
    """One named part of an exercise's check and its points (earned only if it passed)."""

    name: str
    max_points: int
    passed: bool = False
    message: str = ""

    @property
    def points(self) -> int:
        return self.max_points if self.passed else 0


@dataclass
class Parts:
    """The parts of one check, in order: ``with parts.part("three steps", 5): close(...)``. A part
    fails on its first :class:`Mismatch`, or on outputs of the wrong kind; the others still run."""

    parts: list = field(default_factory=list)

    @contextlib.contextmanager
    def part(self, name: str, points: int):
        part = Part(name, points)
        self.parts.append(part)
        try:
            yield part
        except Mismatch as exc:
            part.message = str(exc)
            return
        except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
            part.message = f"its outputs could not be compared ({type(exc).__name__}: {exc})"
            return
        part.passed = True


# ------------------------------------------------------------------------------ comparisons
def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max |y|: the largest difference relative to the reference's scale (``inf`` if
    the shapes differ; entries that are nan in both agree). Normwise rather than per element, so
    that float32 rounding in entries near zero does not read as an error."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    if x.shape != y.shape:
        return float("inf")
    if x.numel() == 0:
        return 0.0
    both_nan = torch.isnan(x) & torch.isnan(y)
    x, y = torch.where(both_nan, 0.0, x), torch.where(both_nan, 0.0, y)
    err = ((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item()
    return float("inf") if err != err else err


def where_differs(
    got: torch.Tensor,
    want: torch.Tensor,
    steps_axis: int | None = None,
    axes: dict[int, str] | None = None,
    reach: int = 1,
) -> str:
    """Where the largest difference of two same-shaped tensors is: its index, the iteration
    (``t``, when ``steps_axis`` stacks D^1, D^2, ...), the named dimensions (``axes``: dimension ->
    name, e.g. ``{2: "neighbour j"}``), whether the pixel lies within ``reach`` of the map's border
    (its window leaves the image) or inside it (the last two dimensions are H and W), and both
    values."""
    diff = (got.double() - want.double()).abs().nan_to_num(nan=float("inf"))
    index = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    parts = []
    if steps_axis is not None:
        parts.append(f"t = {index[steps_axis] + 1}")
    parts += [f"{name} = {index[dim]}" for dim, name in sorted((axes or {}).items())]
    if got.dim() >= 2:
        (y, x), (h, w) = index[-2:], got.shape[-2:]
        near = min(y, x, h - 1 - y, w - 1 - x) < reach
        if reach == 1:
            side = "on the border" if near else "inside the map"
        else:
            side = f"within {reach} px of the border" if near else "inside the map"
        parts.append(f"pixel (y={y}, x={x}) {side} of {h} x {w}")
    parts.append(f"index {index}: {float(got[index]):.4g} instead of {float(want[index]):.4g}")
    return "largest difference at " + ", ".join(parts)


def close(
    name: str,
    got,
    want,
    tol: float = TOLERANCE,
    steps_axis: int | None = None,
    axes: dict[int, str] | None = None,
    reach: int = 1,
) -> float:
    """The relative error of ``got`` against ``want``; :class:`Mismatch` saying where they differ
    most (:func:`where_differs`) when it exceeds ``tol``."""
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        raise Mismatch(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = rel_error(got, want)
    if not err <= tol:
        raise Mismatch(
            f"{name} differs from the reference (relative error {err:.2g} > {tol:g}); "
            + where_differs(got, want, steps_axis, axes, reach)
        )
    return err


def equal(name: str, got, want) -> None:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        raise Mismatch(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    # no cast to the reference's dtype: 0.3 is not True
    wrong = int((got.double() != want.double()).sum())
    if wrong:
        raise Mismatch(
            f"{name} differs from the reference in {wrong} of {want.numel()} entries; "
            + where_differs(got, want)
        )


def gradcheck(name: str, fn, inputs) -> None:
    try:
        ok = torch.autograd.gradcheck(
            fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=False
        )
    except RuntimeError as exc:  # e.g. an in-place edit of a tensor autograd needs
        raise Mismatch(f"gradcheck of {name} could not run: {str(exc).splitlines()[0]}") from None
    if not ok:
        raise Mismatch(
            f"gradcheck of {name} failed: the backward pass does not match finite differences "
            "(detach, .data, in-place edits or integer casts break the gradient)"
        )


def grad_of(t: torch.Tensor) -> torch.Tensor:
    """``t``'s gradient; zeros where none reached it (which then differ from the reference's)."""
    return t.grad if t.grad is not None else torch.zeros_like(t)


def detached(tree):
    if isinstance(tree, dict):
        return {k: detached(v) for k, v in tree.items()}
    return tree.detach().clone().contiguous() if isinstance(tree, torch.Tensor) else tree
