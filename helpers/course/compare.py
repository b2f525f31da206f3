"""Comparing a package's outputs with the solution's: relative errors, exact equality and
gradient checks, each raising :class:`Mismatch` with what differs.
"""

from __future__ import annotations

import torch

# accepted relative error (normwise, see rel_error): float32 rounding, another thread count
TOLERANCE = 1e-5


class Mismatch(Exception):
    """Raised inside a check: why the student's result is not the reference's."""


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


def close(name: str, got, want, tol: float = TOLERANCE) -> float:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        raise Mismatch(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = rel_error(got, want)
    if not err <= tol:
        raise Mismatch(f"{name} differs from the reference (relative error {err:.2g} > {tol:g})")
    return err


def equal(name: str, got, want) -> None:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        raise Mismatch(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    wrong = int(
        (got.double() != want.double()).sum()
    )  # no cast to the reference's dtype: 0.3 is not True
    if wrong:
        raise Mismatch(f"{name} differs from the reference in {wrong} of {want.numel()} entries")


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
    return (
        t.grad if t.grad is not None else torch.zeros_like(t)
    )  # no gradient at all: zeros, which differ


def detached(tree):
    if isinstance(tree, dict):
        return {k: detached(v) for k, v in tree.items()}
    return tree.detach().clone().contiguous() if isinstance(tree, torch.Tensor) else tree
