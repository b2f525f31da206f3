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
function that saves only the propagated map and the weights, so memory grows by one map per
iteration instead of one copy per neighbour (as ``F.unfold`` would need). Two savings keep it
fast: the change ``D^t = H^t - H^0`` is propagated (the ``H^0`` part of every neighbour term is
summed once, not every iteration), and for C classes only C - 1 are propagated, the first
class's change being minus the sum of the others' (all classes share the weights).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

AFFINITY_LIMIT = 1e4   # raw affinities are clamped here: the normaliser dominates far earlier
EPS = 1e-6             # keeps DySPN's normaliser positive when every attention underflows
BACKENDS = ("auto", "torch", "triton")   # auto: the fused Triton kernels on CUDA, PyTorch elsewhere


# ------------------------------------------------------------------------------ neighbourhoods
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
        if not isinstance(self.dilation, int) or isinstance(self.dilation, bool) or self.dilation < 1:
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
    ring = lambda o: max(abs(o[0]), abs(o[1]))   # noqa: E731  (Chebyshev distance)
    spread = [1] + [win.dilation] * r              # ring 1 stays, rings 2.. move out d times
    return tuple((dy * spread[ring((dy, dx)) - 1], dx * spread[ring((dy, dx)) - 1])
                 for dy, dx in sorted(cells, key=lambda o: (ring(o), o)))


def ring_sizes(kernel: int | Window) -> tuple[int, ...]:
    """Neighbours per ring: 8, 16, 24, ... (8 d for ring d), dilated or not."""
    return tuple(8 * d for d in range(1, as_window(kernel).size // 2 + 1))


def window_reach(kernel: int | Window) -> int:
    """The farthest neighbour's Chebyshev distance: how far one iteration moves a value (the padding)."""
    return max(max(abs(dy), abs(dx)) for dy, dx in window_offsets(kernel))


def border_mask(kernel: int | Window, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(K, H, W) with 1 where neighbour j of pixel (y, x) lies inside the image, else 0."""
    offsets = torch.tensor(window_offsets(kernel), device=device)            # (K, 2)
    ys = torch.arange(height, device=device)[None, :, None] + offsets[:, 0, None, None]
    xs = torch.arange(width, device=device)[None, None, :] + offsets[:, 1, None, None]
    return ((ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)).to(dtype)   # one broadcast, no loop


def neighbour_values(x: torch.Tensor, kernel: int | Window) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, K, H, W): the value of ``x`` at neighbour j of every pixel, in
    :func:`window_offsets` order, 0 outside the image. ``F.unfold`` (one copy per neighbour,
    which the propagation itself avoids; used for the confidence's one channel and by the
    reference), whose backward is one ``fold``, not a zero-filled copy per shifted slice."""
    B, C, H, W = x.shape
    r = window_reach(kernel)
    side = 2 * r + 1   # the square that holds every neighbour (7 for 7x7; 13 for 7x7 at dilation 2)
    order = torch.tensor([(dy + r) * side + (dx + r) for dy, dx in window_offsets(kernel)], device=x.device)
    cols = nn.functional.unfold(x, side, padding=r).view(B, C, side * side, H, W)
    return cols.index_select(2, order)


def confident_weights(pos: torch.Tensor, raw_confidence: torch.Tensor | None, kernel: int | Window) -> torch.Tensor:
    """NLSPN's confidence-incorporated affinity: w_j^+ c_j with c = sigmoid(raw confidence)
    (B, 1, H, W) read at the neighbour j, so an unreliable pixel spreads less of its value.
    pos (B, K, H, W) -> (B, K, H, W). The normaliser keeps counting the full |w_j|, so the
    share (1 - c_j) w_j^+ goes to H^0: the update stays a convex combination."""
    if raw_confidence is None:
        return pos
    return pos * neighbour_values(torch.sigmoid(as_float(raw_confidence)), kernel)[:, 0]


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


# ------------------------------------------------------------------------------ the ring sums
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
            for dy, dx in offsets[j:j + size]:
                view = xp[:, :, r + dy:r + dy + H, r + dx:r + dx + W]
                if centred:
                    view = torch.sub(view, x, out=diff)
                acc.addcmul_(w[:, j:j + 1], view)
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
        x = xp[:, :, r:r + H, r:r + W]
        grad = grad.contiguous()
        grad_xp = torch.zeros_like(xp) if ctx.needs_input_grad[0] else None
        # neighbour-major (K, B, H, W): each grad_w[j] is contiguous, which makes the writes fast
        grad_w = w.new_empty((w.shape[1], w.shape[0]) + w.shape[2:]) if ctx.needs_input_grad[1] else None
        single = xp.shape[1] == 1      # one channel: the product needs no reduction
        offsets = window_offsets(kernel)
        j = 0
        for ring, size in enumerate(ring_sizes(kernel)):
            g = grad[:, ring]
            g_x = (g * x).sum(1) if grad_w is not None and centred else None
            for dy, dx in offsets[j:j + size]:
                view = (slice(None), slice(None), slice(r + dy, r + dy + H), slice(r + dx, r + dx + W))
                if grad_w is not None:
                    if single:
                        torch.mul(g[:, 0], xp[view][:, 0], out=grad_w[j])
                    else:
                        torch.sum(g * xp[view], 1, out=grad_w[j])
                    if centred:
                        grad_w[j].sub_(g_x)
                if grad_xp is not None:
                    grad_xp[view].addcmul_(w[:, j:j + 1], g)
                j += 1
            if grad_xp is not None and centred:
                grad_xp[:, :, r:r + H, r:r + W].addcmul_(w[:, j - size:j].sum(1, keepdim=True), g, value=-1.0)
        grad_x = grad_xp[:, :, r:r + H, r:r + W] if grad_xp is not None else None
        return grad_x, grad_w.transpose(0, 1) if grad_w is not None else None, None, None


def ring_sums(x: torch.Tensor, w: torch.Tensor, kernel: int | Window, centred: bool = False) -> torch.Tensor:
    """Per ring r: sum_{j in r} w_j X_j, or with ``centred`` sum_{j in r} w_j (X_j - X).

    x (B, C, H, W), w (B, K, H, W) -> (B, R, C, H, W).
    """
    return _RingSums.apply(x.contiguous(), w.contiguous(), kernel, centred)


def free_channels(h: torch.Tensor) -> torch.Tensor:
    """The classes that are propagated: all but the first (whose change is minus the sum of
    the others', since every class shares the weights). Halves the work for two classes."""
    return h[:, 1:] if h.shape[1] > 1 else h


def with_all_channels(d: torch.Tensor, classes: int) -> torch.Tensor:
    """Inverse of :func:`free_channels` for a *change* D = H - H^0, whose classes sum to zero."""
    return torch.cat([-d.sum(1, keepdim=True), d], 1) if classes > 1 else d


# ------------------------------------------------------------------------------ results
@dataclass
class PropagationResult:
    """What both propagators return.

    final: (B, C, H, W) H^T.  maps: T + 1 tensors (B, C, H, W), H^0 .. H^T.
    affinity: (B, K, H, W) the normalised neighbour weights (CSPN kappa; DySPN w+ / sum|w|).
    attention: (B, T, R + 1, H, W) DySPN's pi^t per ring and for the pixel itself; None for CSPN.
    confidence: (B, 1, H, W) the confidence c of each pixel as a neighbour; None without it.
    """

    final: torch.Tensor
    maps: list
    affinity: torch.Tensor
    attention: torch.Tensor | None = None
    confidence: torch.Tensor | None = None


class _Propagator(nn.Module):
    kernel = 3

    def __init__(self, iterations: int = 6, backend: str = "auto"):
        super().__init__()
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.iterations, self.backend = iterations, backend

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether the steps run as fused Triton kernels (:mod:`helpers.propagation_kernels`) for
        tensors like ``x``: on CUDA with ``backend="auto"``, always with ``"triton"`` (on the CPU
        only under ``TRITON_INTERPRET=1``, Triton's interpreter, as the tests do)."""
        if self.backend == "torch" or (self.backend == "auto" and (x.device.type != "cuda" or x.dtype == torch.float64)):
            return False   # float64 (gradcheck) stays on the PyTorch path: the kernels compute in float32
        if self.backend == "auto":
            import importlib.util

            return importlib.util.find_spec("triton") is not None
        if x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
                               "before starting Python (or use backend='torch')")
        return True

    @property
    def affinity_channels(self) -> int:
        return len(window_offsets(self.kernel))

    @property
    def reach(self) -> int:
        """Pixels a value can travel in one iteration (chessboard): CSPN 1, DySPN 7x7 3, dilated 3 d.
        After T iterations a pixel's map depends only on H^0 within T x reach of it."""
        return window_reach(self.kernel)

    def _check(self, h0: torch.Tensor, raw: torch.Tensor, attention: torch.Tensor | None = None,
               iterations: int = 0, confidence: torch.Tensor | None = None) -> None:
        """Refuse what would propagate garbage, with a message naming the input.

        Shapes: H^0 (B, C, H, W), affinities (B, K, H, W), attention (B, T_a (R + 1), H, W) with
        T_a >= 1 when T >= 1, confidence (B, 1, H, W). Values: H^0 must be probabilities
        (finite, in [0, 1]): the range guarantee only holds for a convex combination of values
        in range; affinities, attention and confidence must not hold NaN (one NaN weight spreads
        over the whole map in T steps; infinities are fine, they are clamped or saturate the
        sigmoid). The value checks run for every call except training steps (inputs that require
        gradients), where ``fit`` stops on the first non-finite loss instead."""
        if h0.dim() != 4:
            raise ValueError(f"start map H^0 must be (B, C, H, W), got shape {tuple(h0.shape)}")
        K = self.affinity_channels
        if raw.dim() != 4 or raw.shape[1] != K or raw.shape[0] != h0.shape[0] or raw.shape[-2:] != h0.shape[-2:]:
            raise ValueError(f"affinities must be (B, {K}, H, W) = ({h0.shape[0]}, {K}, {h0.shape[2]}, {h0.shape[3]}) "
                             f"to match the start map {tuple(h0.shape)}; got {tuple(raw.shape)}")
        tensors = [h0, raw]
        if attention is not None:
            per = self.attention_channels
            if (attention.dim() != 4 or attention.shape[0] != h0.shape[0] or attention.shape[-2:] != h0.shape[-2:]
                    or attention.shape[1] % per or (iterations > 0 and attention.shape[1] == 0)):
                raise ValueError(f"attention must be (B, T*{per}, H, W) with B = {h0.shape[0]}, H x W = "
                                 f"{h0.shape[2]} x {h0.shape[3]} and T >= 1 ({per} channels per iteration: one per "
                                 f"ring and one for the pixel itself); got {tuple(attention.shape)}")
            tensors.append(attention)
        if confidence is not None:
            c = confidence
            if c.dim() != 4 or c.shape[:2] != (h0.shape[0], 1) or c.shape[-2:] != h0.shape[-2:]:
                raise ValueError(f"confidence must be (B, 1, H, W) = ({h0.shape[0]}, 1, {h0.shape[2]}, {h0.shape[3]}) "
                                 f"to match the start map {tuple(h0.shape)}; got {tuple(confidence.shape)}")
            tensors.append(confidence)
        if h0.numel() == 0:
            return
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            # a training step: the value checks would cost a host sync per step on CUDA; there,
            # H^0 is the refiner's own softmax and a NaN stops training at the loss (fit)
            return
        # one reduction and one host sync for every value check, not one per check
        tol = 1e-3   # half-precision softmax outputs can overshoot 1 by a rounding step
        bad = torch.stack([~torch.isfinite(h0).all(), (h0 < -tol).any() | (h0 > 1 + tol).any(),
                           *(t.isnan().any() for t in tensors[1:])]).tolist()
        if bad[0] or bad[1]:
            lo, hi = h0.nan_to_num().aminmax()
            raise ValueError(f"start map H^0 must hold probabilities in [0, 1]; got values from {lo.item():.3g} "
                             f"to {hi.item():.3g}{' and NaN or infinity' if bad[0] else ''} (apply softmax first)")
        names = [name for name, t in (("affinities", raw), ("attention", attention), ("confidence", confidence))
                 if t is not None]
        for name, flag in zip(names, bad[2:]):
            if flag:
                raise ValueError(f"the {name} hold NaN: check the guidance network's output (a diverged "
                                 "training run, or NaN in the input image)")


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
        """(B, 8, H, W) raw head output k -> kappa (B, 8, H, W), non-negative, sum <= 1:

        kappa_j = k_j^+ / max(1, sum_j |k_j|), with k clamped and its out-of-image neighbours
        zeroed first (:func:`prepare_affinity` returns k^+ and |k|).
        """
        # BEGIN EXERCISE cspn-affinity
        pos, mag = prepare_affinity(raw, self.kernel)
        return pos / mag.sum(1, keepdim=True).clamp(min=1.0)
        # END EXERCISE

    def step(self, d: torch.Tensor | None, base: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """One iteration in residual form, on the change D^t = H^t - H^0 of the propagated classes:

        D^{t+1} = sum_j kappa_j D^t_j + base,   base = sum_j kappa_j (H^0_j - H^0)

        (subtract H^0 from both sides of the update). d (B, C', H, W), or None for D^0 = 0;
        base (B, C', H, W); kappa (B, 8, H, W) -> D^{t+1} (B, C', H, W).
        ``ring_sums(d, kappa, 3)[:, 0]`` is sum_j kappa_j D^t_j (one ring for a 3x3 window).
        """
        # BEGIN EXERCISE cspn-step
        if d is None:   # D^0 = 0: the neighbour sum vanishes
            return base
        return base + ring_sums(d, kappa, self.kernel)[:, 0]
        # END EXERCISE

    def _fused_step(self, d: torch.Tensor | None, base: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """:meth:`step` as one fused Triton kernel (the CUDA path)."""
        from .propagation_kernels import fused_step

        return base if d is None else fused_step(d, kappa, base, self.kernel)

    def forward(self, h0: torch.Tensor, raw_affinity: torch.Tensor, iterations: int | None = None,
                raw_confidence: torch.Tensor | None = None) -> PropagationResult:
        """h0 (B, C, H, W) probabilities; raw_affinity (B, 8, H, W) -> PropagationResult.
        With ``raw_confidence`` (B, 1, H, W), kappa_j is multiplied by c_j = sigmoid(raw)_j at
        the neighbour (:func:`confident_weights`, NLSPN); the rest of the weight goes to H^0."""
        T = self.iterations if iterations is None else iterations
        self._check(h0, raw_affinity, iterations=T, confidence=raw_confidence)
        with torch.autocast(h0.device.type, enabled=False):  # propagation stays in float32
            h0 = as_float(h0)
            kappa = confident_weights(self.normalise(raw_affinity), raw_confidence, self.kernel)
            # D^t = H^t - H^0 obeys D^{t+1} = sum_j kappa_j D^t_j + base, base = sum_j kappa_j (H^0_j - H^0):
            # base is computed once, and D is exactly 0 for a constant map
            base = ring_sums(free_channels(h0), kappa, self.kernel, centred=True)[:, 0]
            maps, d = [h0], None
            step = self._fused_step if self.uses_kernel(h0) else self.step
            for _ in range(T):
                d = step(d, base, kappa)
                maps.append(h0 + with_all_channels(d, h0.shape[1]))
        return PropagationResult(maps[-1], maps, kappa, confidence=_confidence(raw_confidence))


class DySPN(_Propagator):
    """Dynamic spatial propagation over a 7x7 window split into distance rings (8, 16, 24).

    The 48 affinities w are predicted once; the attention pi^t (one channel per ring and one for
    the pixel itself, through a sigmoid) is new at every iteration t. With A_r = sum_{j in r} |w_j|:

    G^t = sum_r pi^t_r A_r + pi^t_self

    H^{t+1} = [ sum_r pi^t_r sum_{j in r} w_j^+ H^t_j + pi^t_self H^t + (sum_r pi^t_r sum_{j in r} w_j^-) H^0 ] / G^t

    The weights sum to one. As in the authors' ``Dynamic_7x7_naivev2``, the part of the
    affinity that is not spent on neighbours goes to H^0 (diffusion suppression); here that part
    is the negative affinity's magnitude, so every weight is non-negative.

    With ``dilation`` d > 1 the rings 2 and 3 sit at distances 2 d and 3 d (:class:`Window`): the
    same 48 neighbours, one iteration reaching 3 d pixels instead of 3 (the authors' ring sums
    take a dilation too).
    """

    def __init__(self, iterations: int = 6, kernel: int | Window = 7, backend: str = "auto", dilation: int = 1):
        super().__init__(iterations, backend)
        if isinstance(kernel, Window) and dilation != 1:
            raise ValueError(f"give the dilation once: in the window {kernel} or as dilation={dilation}, not both")
        # the window, rings 2.. spread ``dilation`` apart (:class:`Window`); every neighbourhood
        # function takes it where an int size would go
        self.kernel = kernel if isinstance(kernel, Window) else Window(kernel, dilation)
        self.rings = len(ring_sizes(kernel))
        self.sizes = list(ring_sizes(kernel))

    @property
    def attention_channels(self) -> int:
        """pi channels per iteration: one per ring plus one for the pixel itself."""
        return self.rings + 1

    def ring_magnitudes(self, mag: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) |w| -> (B, R, H, W) A_r = sum_{j in ring r} |w_j| (K = 8 + 16 + 24 = 48
        neighbours for 7x7, ring by ring, ``self.sizes`` per ring)."""
        # BEGIN EXERCISE dyspn-step
        # split, not slicing: its backward is one concatenation instead of a zero-filled copy per ring
        return torch.stack([part.sum(1) for part in torch.split(mag, self.sizes, 1)], 1)
        # END EXERCISE

    def step(self, d: torch.Tensor | None, base: torch.Tensor, pos: torch.Tensor, A: torch.Tensor,
             p: torch.Tensor) -> torch.Tensor:
        """One iteration in residual form, on D^t = H^t - H^0 of the propagated classes:

        D^{t+1} = [ sum_r pi^t_r (base_r + sum_{j in r} w_j^+ D^t_j) + pi^t_self D^t ] / G^t
        G^t = sum_r pi^t_r A_r + pi^t_self + eps,   base_r = sum_{j in r} w_j^+ (H^0_j - H^0)

        Diffusion suppression is the |w| in G^t: the negative affinities count in the normaliser
        but weigh no neighbour, so their share of the weight goes to H^0 (whose D is 0).
        d (B, C', H, W) or None for D^0 = 0; base (B, R, C', H, W); pos (B, K, H, W) = w^+;
        A (B, R, H, W); p (B, R + 1, H, W) = pi^t (rings, then the pixel itself) -> (B, C', H, W).
        ``ring_sums(d, pos, self.kernel)`` (B, R, C', H, W) is sum_{j in r} w_j^+ D^t_j for every ring
        (``self.kernel`` is the window, dilated or not: never write its size as a number).
        """
        # BEGIN EXERCISE dyspn-step
        G = (p[:, :self.rings] * A).sum(1, keepdim=True) + p[:, self.rings:] + EPS
        S = base if d is None else base + ring_sums(d, pos, self.kernel)
        step = (p[:, :self.rings, None] * S).sum(1)
        if d is not None:
            step = step + p[:, self.rings:] * d
        return step / G
        # END EXERCISE

    def _fused_step(self, d: torch.Tensor | None, base: torch.Tensor, pos: torch.Tensor, A: torch.Tensor,
                    p: torch.Tensor) -> torch.Tensor:
        """:meth:`step` with the neighbour sums, the pixel's own term and the division in one fused
        Triton kernel (the CUDA path); G^t and the attention-weighted base are per-pixel sums."""
        # BEGIN EXERCISE solution-only
        from .propagation_kernels import fused_step

        G = (p[:, :self.rings] * A).sum(1, keepdim=True) + p[:, self.rings:] + EPS
        weighted_base = (p[:, :self.rings, None] * base).sum(1)
        if d is None:
            return weighted_base / G
        return fused_step(d, pos, weighted_base, self.kernel, a=p[:, :self.rings], s=p[:, self.rings:], g=G)
        # END EXERCISE

    def forward(self, h0: torch.Tensor, raw_affinity: torch.Tensor, raw_attention: torch.Tensor,
                iterations: int | None = None, suppression: bool = True,
                raw_confidence: torch.Tensor | None = None) -> PropagationResult:
        """h0 (B, C, H, W); raw_affinity (B, 48, H, W); raw_attention (B, T_a * (R + 1), H, W),
        T_a >= T (an iteration sweep beyond the trained T reuses the last attention).

        ``suppression=False`` is an ablation for inference: the negative affinities are dropped
        instead of being sent to H^0 (A_r counts only w^+), so nothing anchors the map to H^0
        but the attention on the pixel itself.

        With ``raw_confidence`` (B, 1, H, W), w_j^+ is multiplied by c_j = sigmoid(raw)_j at the
        neighbour (:func:`confident_weights`, NLSPN) while A_r keeps the full |w_j|: the
        confidence's share goes to H^0, as diffusion suppression does."""
        T = self.iterations if iterations is None else iterations
        self._check(h0, raw_affinity, raw_attention, T, raw_confidence)
        B, _, H, W = h0.shape
        per = self.attention_channels
        with torch.autocast(h0.device.type, enabled=False):
            h0 = as_float(h0)
            pos, mag = prepare_affinity(raw_affinity, self.kernel)
            norm = mag if suppression else pos                               # what the normaliser counts
            A = self.ring_magnitudes(norm)                                   # (B, R, H, W)
            pos = confident_weights(pos, raw_confidence, self.kernel)       # after A: c_j never renormalises
            # the iteration count is spelled out: with B = 0, view(B, -1, ...) cannot infer it
            pi = torch.sigmoid(as_float(raw_attention)).view(B, raw_attention.shape[1] // per, per, H, W)
            # in D^t = H^t - H^0 the neighbour terms split into sum_j w_j D^t_j and a per-ring
            # base_r = sum_{j in r} w_j (H^0_j - H^0), computed once (see CSPN.forward)
            base = ring_sums(free_channels(h0), pos, self.kernel, centred=True)   # (B, R, C', H, W)
            maps, d = [h0], None
            step = self._fused_step if self.uses_kernel(h0) else self.step
            for t in range(T):
                d = step(d, base, pos, A, pi[:, min(t, pi.shape[1] - 1)])
                maps.append(h0 + with_all_channels(d, h0.shape[1]))
            with torch.no_grad():  # for figures only: keep it out of the backward pass
                affinity = pos / norm.sum(1, keepdim=True).clamp(min=EPS)
        return PropagationResult(maps[-1], maps, affinity, pi[:, :max(T, 1)], _confidence(raw_confidence))


def _confidence(raw: torch.Tensor | None) -> torch.Tensor | None:
    """c = sigmoid(raw confidence), detached, for figures; None without a confidence."""
    return None if raw is None else torch.sigmoid(as_float(raw.detach()))
