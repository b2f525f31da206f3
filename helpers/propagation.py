"""Spatial propagation of a class-probability map: CSPN and DySPN.

* CSPN: Cheng, Wang, Yang, "Depth Estimation via Affinity Learned with Convolutional Spatial
  Propagation Network", ECCV 2018 / TPAMI 2020.
* DySPN: Lin, Cheng, Zhong, Zhou, "Dynamic Spatial Propagation Network for Depth Completion",
  AAAI 2022.

Both propagate ``H`` of shape (B, C, H, W), the class probabilities, from ``H^0`` (the start
map) for ``T`` iterations. Every update here is a **convex combination** of neighbour values of
``H^t``, the pixel's own value and ``H^0``, with the same weights for every class. Hence, for any
head output:

* the refined maps are valid probabilities (in [0, 1], summing to 1 over classes);
* a constant map stays constant, at the border too, because the update is evaluated in the
  residual form ``H^{t+1} = H^0 + sum_j a_j (H^t_j - H^0)`` (exactly zero for a constant map);
* out-of-image neighbours get weight zero before normalisation, so nothing leaks across a border
  and nothing wraps around (the report's horizontal-line artefact is this class of bug).

Signed affinities, as in the papers, would break the range guarantee: a negative weight on a
neighbour can push a probability below 0 or above 1. Here the head's signed output ``k`` keeps
its sign's *meaning* but not its arithmetic: the positive part weighs the neighbour, the
negative part is mass sent to ``H^0`` (the papers' "diffusion suppression"). Both parts count in
the normaliser ``sum_j |k_j|``, as in the papers. With a zero head every weight is 0 and the
propagation is the identity; the rectifier is taken with slope 1 at 0 so training can start.

Neighbours are shifted views of one zero-padded tensor; the ring sums run in a custom autograd
function that saves only ``H^t``, ``H^0`` and the weights, so memory grows by one map per
iteration instead of one copy per neighbour (as ``F.unfold`` would need).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

AFFINITY_LIMIT = 1e4   # raw affinities are clamped here: the normaliser dominates far earlier
EPS = 1e-6             # keeps DySPN's normaliser positive when every attention underflows


# ------------------------------------------------------------------------------ neighbourhoods
@lru_cache(maxsize=None)
def window_offsets(kernel: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) of every neighbour in a ``kernel`` x ``kernel`` window without the centre,
    ordered ring by ring (Chebyshev distance 1, 2, ...), raster order inside a ring."""
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"kernel must be odd and >= 3, got {kernel}")
    r = kernel // 2
    cells = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    return tuple(sorted(cells, key=lambda o: (max(abs(o[0]), abs(o[1])), o)))


def ring_sizes(kernel: int) -> tuple[int, ...]:
    """Neighbours per ring: 8, 16, 24, ... (8 d for ring d)."""
    return tuple(8 * d for d in range(1, kernel // 2 + 1))


def border_mask(kernel: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(K, H, W) with 1 where neighbour j of pixel (y, x) lies inside the image, else 0."""
    ys = torch.arange(height, device=device)[:, None]
    xs = torch.arange(width, device=device)[None, :]
    masks = [((ys + dy >= 0) & (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width))
             for dy, dx in window_offsets(kernel)]
    return torch.stack(masks).to(dtype)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half precision (from autocast) is promoted to float32; float64 stays (for gradcheck)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def rectify(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split signed affinities into (positive part, |k|). The positive part is taken with
    ``where(k >= 0)`` rather than ``clamp`` or ``relu``, whose slope at exactly 0 is 0: a
    zero-initialised head would never receive a gradient."""
    return torch.where(k >= 0, k, torch.zeros_like(k)), k.abs()


def prepare_affinity(raw: torch.Tensor, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp the raw head output (B, K, H, W) and zero the out-of-image neighbours.

    Returns (positive part, absolute value), both (B, K, H, W).
    """
    K = len(window_offsets(kernel))
    if raw.dim() != 4 or raw.shape[1] != K:
        raise ValueError(f"expected affinities of shape (B, {K}, H, W), got {tuple(raw.shape)}")
    raw = as_float(raw)
    mask = border_mask(kernel, raw.shape[-2], raw.shape[-1], raw.device, raw.dtype)
    k = torch.nan_to_num(raw).clamp(-AFFINITY_LIMIT, AFFINITY_LIMIT) * mask
    return rectify(k)


# ------------------------------------------------------------------------------ the ring sums
class _RingSums(torch.autograd.Function):
    """S_r = sum_{j in ring r} w_j * (shift_j(H) - H0), for every ring r.

    H, H0: (B, C, H, W); w: (B, K, H, W); returns (B, R, C, H, W).
    """

    @staticmethod
    def forward(ctx, h, h0, w, kernel):
        r = kernel // 2
        H, W = h.shape[-2:]
        hp = nn.functional.pad(h, (r, r, r, r))
        sizes = ring_sizes(kernel)
        out = h.new_zeros((h.shape[0], len(sizes)) + h.shape[1:])
        diff = torch.empty_like(h)
        offsets = window_offsets(kernel)
        j = 0
        for ring, size in enumerate(sizes):
            acc = out[:, ring]
            for dy, dx in offsets[j:j + size]:
                # the difference first: a constant map gives exactly zero, whatever w is
                torch.sub(hp[:, :, r + dy:r + dy + H, r + dx:r + dx + W], h0, out=diff)
                acc.addcmul_(w[:, j:j + 1], diff)
                j += 1
        ctx.save_for_backward(hp, h0, w)
        ctx.kernel = kernel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        hp, h0, w = ctx.saved_tensors
        kernel = ctx.kernel
        r = kernel // 2
        H, W = h0.shape[-2:]
        grad = grad.contiguous()
        grad_hp = torch.zeros_like(hp) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[2] else None
        grad_h0 = torch.zeros_like(h0) if ctx.needs_input_grad[1] else None
        offsets = window_offsets(kernel)
        j = 0
        for ring, size in enumerate(ring_sizes(kernel)):
            g = grad[:, ring]
            if grad_w is not None:
                g_h0 = (g * h0).sum(1)
            for dy, dx in offsets[j:j + size]:
                view = (slice(None), slice(None), slice(r + dy, r + dy + H), slice(r + dx, r + dx + W))
                if grad_w is not None:
                    torch.sub((g * hp[view]).sum(1), g_h0, out=grad_w[:, j])
                if grad_hp is not None:
                    grad_hp[view].addcmul_(w[:, j:j + 1], g)
                j += 1
            if grad_h0 is not None:
                grad_h0.addcmul_(w[:, j - size:j].sum(1, keepdim=True), g, value=-1.0)
        grad_h = grad_hp[:, :, r:r + H, r:r + W] if grad_hp is not None else None
        return grad_h, grad_h0, grad_w, None


def ring_sums(h: torch.Tensor, h0: torch.Tensor, w: torch.Tensor, kernel: int) -> torch.Tensor:
    """sum_{j in ring r} w_j (H_j - H0) for each ring r: (B, C, H, W) x2, (B, K, H, W) -> (B, R, C, H, W)."""
    return _RingSums.apply(h.contiguous(), h0.contiguous(), w.contiguous(), kernel)


# ------------------------------------------------------------------------------ results
@dataclass
class PropagationResult:
    """What both propagators return.

    final: (B, C, H, W) H^T.  maps: T + 1 tensors (B, C, H, W), H^0 .. H^T.
    affinity: (B, K, H, W) the normalised neighbour weights (CSPN kappa; DySPN w+ / sum|w|).
    attention: (B, T, R + 1, H, W) DySPN's pi^t per ring and for the pixel itself; None for CSPN.
    """

    final: torch.Tensor
    maps: list
    affinity: torch.Tensor
    attention: torch.Tensor | None = None


class _Propagator(nn.Module):
    kernel = 3

    def __init__(self, iterations: int = 6):
        super().__init__()
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        self.iterations = iterations

    @property
    def affinity_channels(self) -> int:
        return len(window_offsets(self.kernel))

    def _check(self, h0: torch.Tensor, raw: torch.Tensor) -> None:
        if h0.dim() != 4 or h0.shape[0] != raw.shape[0] or h0.shape[-2:] != raw.shape[-2:]:
            raise ValueError(f"start map {tuple(h0.shape)} and affinities {tuple(raw.shape)} do not match")


class CSPN(_Propagator):
    """Convolutional spatial propagation over the 8 neighbours of a 3x3 window.

    kappa_j = k_j^+ / max(1, sum_j |k_j|)   (k: the head's 8 signed affinities; the division only
    where the sum exceeds 1, so a zero head is the exact identity without a 1/eps gradient)

    H^{t+1} = sum_j kappa_j H^t_j + (1 - sum_j kappa_j) H^0

    The centre weight multiplies the *initial* map H^0, as in the authors' code, not H^t as in
    the paper's equation: the anchor to H^0 stops T iterations from diffusing the coarse map
    into a blur, and it is what makes a zero head the identity.
    """

    kernel = 3

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 8, H, W) raw head output -> kappa (B, 8, H, W), non-negative, sum <= 1."""
        pos, mag = prepare_affinity(raw, self.kernel)
        return pos / mag.sum(1, keepdim=True).clamp(min=1.0)

    def forward(self, h0: torch.Tensor, raw_affinity: torch.Tensor, iterations: int | None = None) -> PropagationResult:
        """h0 (B, C, H, W) probabilities; raw_affinity (B, 8, H, W) -> PropagationResult."""
        self._check(h0, raw_affinity)
        T = self.iterations if iterations is None else iterations
        with torch.autocast(h0.device.type, enabled=False):  # propagation stays in float32
            h0 = as_float(h0)
            kappa = self.normalise(raw_affinity)
            maps = [h0]
            for _ in range(T):
                maps.append(h0 + ring_sums(maps[-1], h0, kappa, self.kernel)[:, 0])
        return PropagationResult(maps[-1], maps, kappa)


class DySPN(_Propagator):
    """Dynamic spatial propagation over a 7x7 window split into distance rings (8, 16, 24).

    The 48 affinities w are predicted once; the attention pi^t (one channel per ring and one for
    the pixel itself, through a sigmoid) is new at every iteration t. With A_r = sum_{j in r} |w_j|:

    G^t = sum_r pi^t_r A_r + pi^t_self

    H^{t+1} = [ sum_r pi^t_r sum_{j in r} w_j^+ H^t_j + pi^t_self H^t + (sum_r pi^t_r sum_{j in r} w_j^-) H^0 ] / G^t

    The weights sum to one. As in the authors' ``Dynamic_7x7_naivev2``, the part of the
    affinity that is not spent on neighbours goes to H^0 (diffusion suppression); here that part
    is the negative affinity's magnitude, so every weight is non-negative.
    """

    def __init__(self, iterations: int = 6, kernel: int = 7):
        super().__init__(iterations)
        window_offsets(kernel)  # validates the kernel
        self.kernel = kernel
        self.rings = len(ring_sizes(kernel))
        # (K,) ring index of each neighbour, to sum |w| per ring with one scatter
        ring_of = torch.cat([torch.full((n,), i) for i, n in enumerate(ring_sizes(kernel))])
        self.register_buffer("ring_of", ring_of, persistent=False)

    @property
    def attention_channels(self) -> int:
        """pi channels per iteration: one per ring plus one for the pixel itself."""
        return self.rings + 1

    def ring_magnitudes(self, mag: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) |w| -> (B, R, H, W) A_r."""
        B, _, H, W = mag.shape
        out = mag.new_zeros(B, self.rings, H, W)
        return out.index_add_(1, self.ring_of, mag)

    def forward(self, h0: torch.Tensor, raw_affinity: torch.Tensor, raw_attention: torch.Tensor,
                iterations: int | None = None) -> PropagationResult:
        """h0 (B, C, H, W); raw_affinity (B, 48, H, W); raw_attention (B, T_a * (R + 1), H, W),
        T_a >= T (an iteration sweep beyond the trained T reuses the last attention)."""
        self._check(h0, raw_affinity)
        T = self.iterations if iterations is None else iterations
        B, _, H, W = h0.shape
        per = self.attention_channels
        if raw_attention.shape[1] % per or raw_attention.shape[-2:] != h0.shape[-2:]:
            raise ValueError(f"attention must be (B, T*{per}, H, W), got {tuple(raw_attention.shape)}")
        with torch.autocast(h0.device.type, enabled=False):
            h0 = as_float(h0)
            pos, mag = prepare_affinity(raw_affinity, self.kernel)
            A = self.ring_magnitudes(mag)                                   # (B, R, H, W)
            pi = torch.sigmoid(as_float(raw_attention)).view(B, -1, per, H, W)
            maps = [h0]
            for t in range(T):
                p = pi[:, min(t, pi.shape[1] - 1)]
                G = (p[:, :self.rings] * A).sum(1, keepdim=True) + p[:, self.rings:] + EPS
                S = ring_sums(maps[-1], h0, pos, self.kernel)                # (B, R, C, H, W)
                step = (p[:, :self.rings, None] * S).sum(1) + p[:, self.rings:] * (maps[-1] - h0)
                maps.append(h0 + step / G)
            total = mag.sum(1, keepdim=True).clamp(min=EPS)
        return PropagationResult(maps[-1], maps, pos / total, pi[:, :max(T, 1)])
