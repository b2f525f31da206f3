"""Fused Triton kernels for one propagation step (CSPN and DySPN), forward and backward.

One step of either propagator, in the residual form of :mod:`helpers.models.propagation`, is

    D^{t+1}_p = ( b_p + sum_j a_{r(j), p} w_{j, p} D^t_{p + o_j} + s_p D^t_p ) / g_p

for every pixel p and propagated class, with o_j the neighbour offsets, r(j) the ring of
neighbour j, and per pixel: b the base term (B, C, H, W), w the neighbour weights (B, K, H, W),
a the ring coefficients (B, R, H, W), s the pixel's own coefficient and g the normaliser (both
(B, 1, H, W)). CSPN is a = 1, s = 0, g = 1 (one ring); DySPN is a = pi_r, s = pi_self,
g = G^t and b = sum_r pi_r base_r.

The PyTorch path (:func:`helpers.models.propagation.autograd.ring_sums`) reads every neighbour once
per ring sum and writes (B, R, C, H, W) partial sums that later passes read again. Here one kernel
reads each neighbour of each pixel once and writes D^{t+1}; the backward pass is two kernels (one
per pixel for the gradients of w, a, s and g; one gathering the gradient of D from the pixels that
read it), never materialising a per-neighbour tensor. Accumulation is in float32 whatever the
input precision. Out-of-image neighbours are masked (no wrap-around); their weights are zero
anyway (:func:`helpers.models.propagation.autograd.prepare_affinity`).

On CPU tensors the kernels run under ``TRITON_INTERPRET=1`` (slowly): that is how the tests
compare them with the PyTorch path without a GPU.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

BLOCK = 128  # pixels per program


@triton.jit
def _pixels(H, W, BLOCK: tl.constexpr):
    """This program's image (axis 0) and block of pixels (axis 1): (b, H * W, flat indices, in
    the image, row, column).

    The image index is int64, so every offset computed from it (``(b * K + j) * H * W + p``) is
    int64 too: in int32 such an offset wraps once a tensor holds 2**31 elements, e.g. DySPN's 48
    weights of a batch of 683 images at 256 px, and the kernel would read another image's memory.
    """
    HW = H * W
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return tl.program_id(0).to(tl.int64), HW, p, p < HW, p // W, p % W


@triton.jit
def _step_forward(
    d_ptr,
    w_ptr,
    a_ptr,
    s_ptr,
    b_ptr,
    g_ptr,
    out_ptr,
    dy_ptr,
    dx_ptr,
    ring_ptr,
    C,
    H,
    W,
    K: tl.constexpr,
    R: tl.constexpr,
    WEIGHTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_b, HW, p, inside, y, x = _pixels(H, W, BLOCK)
    if WEIGHTED:
        s = tl.load(s_ptr + pid_b * HW + p, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + pid_b * HW + p, mask=inside, other=1.0).to(tl.float32)
    for c in range(C):
        plane = (pid_b * C + c) * HW
        acc = tl.load(b_ptr + plane + p, mask=inside, other=0.0).to(tl.float32)
        for j in range(K):
            ny, nx = y + tl.load(dy_ptr + j), x + tl.load(dx_ptr + j)
            ok = inside & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
            w = tl.load(w_ptr + (pid_b * K + j) * HW + p, mask=inside, other=0.0).to(tl.float32)
            if WEIGHTED:
                w = w * tl.load(
                    a_ptr + (pid_b * R + tl.load(ring_ptr + j)) * HW + p, mask=inside, other=0.0
                ).to(tl.float32)
            acc += w * tl.load(d_ptr + plane + ny * W + nx, mask=ok, other=0.0).to(tl.float32)
        if WEIGHTED:
            acc = (acc + s * tl.load(d_ptr + plane + p, mask=inside, other=0.0).to(tl.float32)) / g
        tl.store(out_ptr + plane + p, acc, mask=inside)


@triton.jit
def _step_backward_pixel(
    go_ptr,
    d_ptr,
    w_ptr,
    a_ptr,
    s_ptr,
    g_ptr,
    out_ptr,
    dy_ptr,
    dx_ptr,
    ring_ptr,
    gw_ptr,
    ga_ptr,
    gs_ptr,
    gg_ptr,
    C,
    H,
    W,
    K: tl.constexpr,
    R: tl.constexpr,
    WEIGHTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per pixel p, with u = grad_out / g:
    grad w_j = a_r(j) sum_c u d_{p+o_j},   grad a_r = sum_{j in r} w_j sum_c u d_{p+o_j},
    grad s = sum_c u d_p,                  grad g = -sum_c u out_p."""
    pid_b, HW, p, inside, y, x = _pixels(H, W, BLOCK)
    inv_g = tl.full([BLOCK], 1.0, tl.float32)
    if WEIGHTED:
        inv_g = 1.0 / tl.load(g_ptr + pid_b * HW + p, mask=inside, other=1.0).to(tl.float32)
        gs = tl.zeros([BLOCK], tl.float32)
        gg = tl.zeros([BLOCK], tl.float32)
        for c in range(C):
            plane = (pid_b * C + c) * HW
            u = tl.load(go_ptr + plane + p, mask=inside, other=0.0).to(tl.float32) * inv_g
            gs += u * tl.load(d_ptr + plane + p, mask=inside, other=0.0).to(tl.float32)
            gg -= u * tl.load(out_ptr + plane + p, mask=inside, other=0.0).to(tl.float32)
        tl.store(gs_ptr + pid_b * HW + p, gs, mask=inside)
        tl.store(gg_ptr + pid_b * HW + p, gg, mask=inside)
        for r in range(R):  # zero the ring gradients, then accumulate neighbour by neighbour
            tl.store(ga_ptr + (pid_b * R + r) * HW + p, tl.zeros([BLOCK], tl.float32), mask=inside)
    for j in range(K):
        ny, nx = y + tl.load(dy_ptr + j), x + tl.load(dx_ptr + j)
        ok = inside & (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        ud = tl.zeros([BLOCK], tl.float32)  # sum_c u_p d_{p + o_j}
        for c in range(C):
            plane = (pid_b * C + c) * HW
            u = tl.load(go_ptr + plane + p, mask=inside, other=0.0).to(tl.float32) * inv_g
            ud += u * tl.load(d_ptr + plane + ny * W + nx, mask=ok, other=0.0).to(tl.float32)
        if WEIGHTED:
            ring = tl.load(ring_ptr + j)
            a = tl.load(a_ptr + (pid_b * R + ring) * HW + p, mask=inside, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + (pid_b * K + j) * HW + p, mask=inside, other=0.0).to(tl.float32)
            tl.store(gw_ptr + (pid_b * K + j) * HW + p, a * ud, mask=inside)
            ga = ga_ptr + (pid_b * R + ring) * HW + p
            tl.store(ga, tl.load(ga, mask=inside, other=0.0) + w * ud, mask=inside)
        else:
            tl.store(gw_ptr + (pid_b * K + j) * HW + p, ud, mask=inside)


@triton.jit
def _step_backward_gather(
    go_ptr,
    w_ptr,
    a_ptr,
    s_ptr,
    g_ptr,
    gd_ptr,
    dy_ptr,
    dx_ptr,
    ring_ptr,
    C,
    H,
    W,
    K: tl.constexpr,
    R: tl.constexpr,
    WEIGHTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per pixel q: grad d_q = s_q u_q + sum_j a_r(j) w_j u at q - o_j (the pixels that read q)."""
    pid_b, HW, q, inside, y, x = _pixels(H, W, BLOCK)
    for c in range(C):
        plane = (pid_b * C + c) * HW
        acc = tl.zeros([BLOCK], tl.float32)
        if WEIGHTED:
            u = tl.load(go_ptr + plane + q, mask=inside, other=0.0).to(tl.float32) / tl.load(
                g_ptr + pid_b * HW + q, mask=inside, other=1.0
            ).to(tl.float32)
            acc = tl.load(s_ptr + pid_b * HW + q, mask=inside, other=0.0).to(tl.float32) * u
        for j in range(K):
            py, px = y - tl.load(dy_ptr + j), x - tl.load(dx_ptr + j)
            ok = inside & (py >= 0) & (py < H) & (px >= 0) & (px < W)
            src = py * W + px
            weight = tl.load(w_ptr + (pid_b * K + j) * HW + src, mask=ok, other=0.0).to(tl.float32)
            u = tl.load(go_ptr + plane + src, mask=ok, other=0.0).to(tl.float32)
            if WEIGHTED:
                weight = weight * tl.load(
                    a_ptr + (pid_b * R + tl.load(ring_ptr + j)) * HW + src, mask=ok, other=0.0
                ).to(tl.float32)
                u = u / tl.load(g_ptr + pid_b * HW + src, mask=ok, other=1.0).to(tl.float32)
            acc += weight * u
        tl.store(gd_ptr + plane + q, acc, mask=inside)


@lru_cache(maxsize=None)
def _tables(kernel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, ring) int32 of every neighbour of ``kernel`` (an int size or a dilated
    :class:`helpers.models.propagation.Window`), in
    :func:`helpers.models.propagation.geometry.window_offsets` order."""
    from .geometry import ring_sizes, window_offsets

    offsets = window_offsets(kernel)
    rings = [r for r, size in enumerate(ring_sizes(kernel)) for _ in range(size)]
    as_int = lambda v: torch.tensor(v, dtype=torch.int32, device=device)  # noqa: E731
    return as_int([o[0] for o in offsets]), as_int([o[1] for o in offsets]), as_int(rings)


class _FusedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d, w, a, s, b, g, kernel):
        weighted = a is not None
        d, w, b = d.contiguous(), w.contiguous(), b.contiguous()
        # placeholders, never read
        a, s, g = (t.contiguous() for t in (a, s, g)) if weighted else (w, w, w)
        B, C, H, W = d.shape
        K, R = w.shape[1], (a.shape[1] if weighted else 1)
        dy, dx, ring = _tables(kernel, d.device)
        out = torch.empty(d.shape, dtype=torch.float32, device=d.device)
        grid = (B, triton.cdiv(H * W, BLOCK))
        _step_forward[grid](
            d, w, a, s, b, g, out, dy, dx, ring, C, H, W, K=K, R=R, WEIGHTED=weighted, BLOCK=BLOCK
        )
        ctx.save_for_backward(d, w, a, s, g, out)
        ctx.kernel, ctx.weighted = kernel, weighted
        return out

    @staticmethod
    def backward(ctx, grad):
        d, w, a, s, g, out = ctx.saved_tensors
        weighted = ctx.weighted
        grad = grad.contiguous().float()
        B, C, H, W = d.shape
        K, R = w.shape[1], (a.shape[1] if weighted else 1)
        dy, dx, ring = _tables(ctx.kernel, d.device)
        grid = (B, triton.cdiv(H * W, BLOCK))
        new = lambda *shape: torch.empty(shape, dtype=torch.float32, device=d.device)  # noqa: E731
        gw, gd = new(B, K, H, W), new(B, C, H, W)
        ga, gs, gg = (
            (new(B, R, H, W), new(B, 1, H, W), new(B, 1, H, W)) if weighted else (gw, gw, gw)
        )
        _step_backward_pixel[grid](
            grad,
            d,
            w,
            a,
            s,
            g,
            out,
            dy,
            dx,
            ring,
            gw,
            ga,
            gs,
            gg,
            C,
            H,
            W,
            K=K,
            R=R,
            WEIGHTED=weighted,
            BLOCK=BLOCK,
        )
        _step_backward_gather[grid](
            grad, w, a, s, g, gd, dy, dx, ring, C, H, W, K=K, R=R, WEIGHTED=weighted, BLOCK=BLOCK
        )
        gb = grad / g if weighted else grad
        if not weighted:
            return gd, gw, None, None, gb, None, None
        return gd, gw, ga, gs, gb, gg, None


def fused_step(
    d: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    kernel,
    a: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    g: torch.Tensor | None = None,
) -> torch.Tensor:
    """(b + sum_j a_r(j) w_j d_{p+o_j} + s d) / g, or b + sum_j w_j d_{p+o_j} without ``a``, ``s``,
    ``g`` (CSPN). d, b (B, C, H, W); w (B, K, H, W); a (B, R, H, W); s, g (B, 1, H, W); float32
    out."""
    return _FusedStep.apply(d, w, a, s, b, g, kernel)
