"""The PyTorch fast path of the propagation: ring sums in one custom autograd function.

:func:`ring_sums` computes, per ring r, the weighted sum of shifted views of one zero-padded map
(:class:`_RingSums`), saving only the map and the weights for the backward pass: memory grows by
one map per call instead of one copy per neighbour, as the plain version
(:func:`helpers.models.propagation.neighbours.ring_sums`, which autograd differentiates) needs. It
computes exactly what the plain version does (the tests compare values and gradients).

Only the solution edition has this module: it computes exercise 8's answer, so the student
edition leaves it out and its propagators run the student's own steps (backend ``plain``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .geometry import Window, ring_sizes, window_offsets, window_reach


class _RingSums(torch.autograd.Function):
    """S_r = sum_{j in ring r} w_j * shift_j(X)            (centred=False), or
    S_r = sum_{j in ring r} w_j * (shift_j(X) - X)       (centred=True), for every ring r.

    X: (B, C, H, W), zero-padded (out-of-image weights are zero anyway); w: (B, K, H, W);
    returns (B, R, C, H, W). The centred form takes each difference before weighting, so a
    constant X gives exactly zero whatever w is.
    """

    @staticmethod
    def forward(ctx, x, w, kernel, centred):
        r = window_reach(kernel)
        H, W = x.shape[-2:]
        xp = nn.functional.pad(x, (r, r, r, r))
        sizes = ring_sizes(kernel)
        out = x.new_zeros((x.shape[0], len(sizes)) + x.shape[1:])
        diff = torch.empty_like(x) if centred else None
        offsets = window_offsets(kernel)
        j = 0
        for ring, size in enumerate(sizes):
            acc = out[:, ring]
            for dy, dx in offsets[j : j + size]:
                view = xp[:, :, r + dy : r + dy + H, r + dx : r + dx + W]
                if centred:
                    view = torch.sub(view, x, out=diff)
                acc.addcmul_(w[:, j : j + 1], view)
                j += 1
        ctx.save_for_backward(xp, w)
        ctx.kernel, ctx.centred = kernel, centred
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        xp, w = ctx.saved_tensors
        kernel, centred = ctx.kernel, ctx.centred
        r = window_reach(kernel)
        H, W = xp.shape[-2] - 2 * r, xp.shape[-1] - 2 * r
        x = xp[:, :, r : r + H, r : r + W]
        grad = grad.contiguous()
        grad_xp = torch.zeros_like(xp) if ctx.needs_input_grad[0] else None
        # neighbour-major (K, B, H, W): each grad_w[j] is contiguous, which makes the writes fast
        grad_w = (
            w.new_empty((w.shape[1], w.shape[0]) + w.shape[2:]) if ctx.needs_input_grad[1] else None
        )
        single = xp.shape[1] == 1  # one channel: the product needs no reduction
        offsets = window_offsets(kernel)
        j = 0
        for ring, size in enumerate(ring_sizes(kernel)):
            g = grad[:, ring]
            g_x = (g * x).sum(1) if grad_w is not None and centred else None
            for dy, dx in offsets[j : j + size]:
                view = (
                    slice(None),
                    slice(None),
                    slice(r + dy, r + dy + H),
                    slice(r + dx, r + dx + W),
                )
                if grad_w is not None:
                    if single:
                        torch.mul(g[:, 0], xp[view][:, 0], out=grad_w[j])
                    else:
                        torch.sum(g * xp[view], 1, out=grad_w[j])
                    if centred:
                        grad_w[j].sub_(g_x)
                if grad_xp is not None:
                    grad_xp[view].addcmul_(w[:, j : j + 1], g)
                j += 1
            if grad_xp is not None and centred:
                grad_xp[:, :, r : r + H, r : r + W].addcmul_(
                    w[:, j - size : j].sum(1, keepdim=True), g, value=-1.0
                )
        grad_x = grad_xp[:, :, r : r + H, r : r + W] if grad_xp is not None else None
        return grad_x, grad_w.transpose(0, 1) if grad_w is not None else None, None, None


def ring_sums(
    x: torch.Tensor, w: torch.Tensor, kernel: int | Window, centred: bool = False
) -> torch.Tensor:
    """Per ring r: sum_{j in r} w_j X_j, or with ``centred`` sum_{j in r} w_j (X_j - X).

    x (B, C, H, W), w (B, K, H, W) -> (B, R, C, H, W).
    """
    return _RingSums.apply(x.contiguous(), w.contiguous(), kernel, centred)
