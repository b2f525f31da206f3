"""The affinity's preparation: the head's signed affinities k -> (k^+, |k|), clamped and with
the out-of-image neighbours zeroed (:func:`prepare_affinity`), in one custom autograd step
(:class:`_PreparedAffinity`) that computes exactly what plain autograd would (the tests compare
them), only in fewer passes.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .geometry import Window, border_mask, window_offsets

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
