"""The two custom autograd functions the propagators are built on, and the affinity's preparation.

* :func:`prepare_affinity`: the head's signed affinities k -> (k^+, |k|), clamped and with the
  out-of-image neighbours zeroed, in one pass (:class:`_PreparedAffinity`);
* :func:`ring_sums`: per ring, the weighted sum of shifted views of one zero-padded map
  (:class:`_RingSums`), saving only the map and the weights, so memory grows by one map per
  iteration instead of one copy per neighbour (as ``F.unfold`` would need).

Both compute exactly what plain autograd would (the tests compare them), only in fewer passes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from .geometry import (
    Window,
    border_mask,
    neighbour_values,
    ring_sizes,
    window_offsets,
    window_reach,
)

AFFINITY_LIMIT = 1e4  # raw affinities are clamped here: the normaliser dominates far earlier


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half precision (from autocast) is promoted to float32; float64 stays (for gradcheck)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rectify(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split signed affinities into (positive part, |k|). The positive part has slope 1 at
    exactly 0 (``where(k >= 0)``), not 0 as ``clamp`` or ``relu`` have: a zero-initialised head
    would never receive a gradient. The reference form; :func:`prepare_affinity` computes the
    same values and gradients in fewer passes."""
    return torch.where(k >= 0, k, torch.zeros_like(k)), k.abs()


class _PreparedAffinity(torch.autograd.Function):
    """raw (B, K, H, W), inside (K, H, W) in {0, 1} -> (k^+, |k|) with k = clamp(raw) * inside.

    The same values and gradients as :func:`rectify` of the clamped, masked ``raw`` under
    autograd, bit for bit:

        d/d raw = inside * [|raw| < limit] * ( g_pos * [k >= 0] + g_mag * sign(k) )

    Why a custom function: autograd's chain (clamp, mul, where, abs, and the sum of the two
    gradients) makes about ten passes over DySPN's 48 channels per training step, among them two
    ``torch.where`` and a ``sgn``, which are several times slower than a multiply on the CPU.
    Here every pass is a multiply, an add or a clamp, and only ``raw`` is saved: 3.4x faster on
    this project's 2-core CPU (batch 16, 128 px, forward and backward). k and raw share their
    sign wherever inside = 1; elsewhere the gradient is zeroed anyway.
    """

    @staticmethod
    def forward(ctx, raw, inside):
        k = raw.clamp(-AFFINITY_LIMIT, AFFINITY_LIMIT).mul_(inside)
        ctx.save_for_backward(raw, inside)
        return k.clamp_min(0.0), k.abs()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_pos, g_mag):
        raw, inside = ctx.saved_tensors
        # every step below is a plain elementwise multiply or add: torch.where, torch.heaviside
        # and boolean masks are several times slower on the CPU than a float multiply
        sign = torch.sign(raw)
        # [k >= 0] = min(sign + 1, 1): 1 at k = 0, where sign(0) = 0 keeps g_mag from flowing
        nonneg = (sign + 1).clamp_max_(1.0)
        grad = sign.mul_(g_mag).addcmul_(nonneg, g_pos)
        # clamp's gradient is zero where |raw| >= limit (the limit itself included, as torch's)
        grad.mul_(nonneg.copy_(raw).abs_().lt_(AFFINITY_LIMIT)).mul_(inside)
        return grad, None


def prepare_affinity(raw: torch.Tensor, kernel: int | Window) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp the raw head output (B, K, H, W) and zero the out-of-image neighbours.

    Returns (positive part, absolute value), both (B, K, H, W): :func:`rectify` of
    ``clamp(raw) * border_mask``, in one custom autograd step (:class:`_PreparedAffinity`).
    """
    K = len(window_offsets(kernel))
    if raw.dim() != 4 or raw.shape[1] != K:
        raise ValueError(f"expected affinities of shape (B, {K}, H, W), got {tuple(raw.shape)}")
    raw = as_float(raw)
    mask = border_mask(kernel, raw.shape[-2], raw.shape[-1], raw.device, raw.dtype)
    return _PreparedAffinity.apply(raw, mask)


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


def confident_weights(
    pos: torch.Tensor, raw_confidence: torch.Tensor | None, kernel: int | Window
) -> torch.Tensor:
    """NLSPN's confidence-incorporated affinity: w_j^+ c_j with c = sigmoid(raw confidence)
    (B, 1, H, W) read at the neighbour j, so an unreliable pixel spreads less of its value.
    pos (B, K, H, W) -> (B, K, H, W). The normaliser keeps counting the full |w_j|, so the
    share (1 - c_j) w_j^+ goes to H^0: the update stays a convex combination."""
    if raw_confidence is None:
        return pos
    return pos * neighbour_values(torch.sigmoid(as_float(raw_confidence)), kernel)[:, 0]
