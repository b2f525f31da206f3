"""What CSPN and DySPN share: their result, the backend choice and the input checks."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .geometry import window_offsets, window_reach
from .neighbours import ring_sums

# plain: the steps as written in propagators.py and neighbours.py (autograd differentiates them;
# the student edition's only backend). torch: the same sums in one custom autograd function
# (fast.py). triton: fused kernels (kernels.py). auto: triton on CUDA, torch elsewhere, or plain in
# an edition without them.
BACKENDS = ("auto", "plain", "torch", "triton")
# the student edition leaves out the modules that compute exercises' answers faster
HAS_FAST_PATH = Path(__file__).with_name("fast.py").exists()
HAS_KERNELS = Path(__file__).with_name("kernels.py").exists()


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


class Propagator(nn.Module):
    """The part of a propagator that is not its update rule: ``iterations`` T, the ``backend``
    (:data:`BACKENDS`) and the checks of its inputs."""

    kernel = 3

    def __init__(self, iterations: int = 6, *, backend: str = "auto"):
        super().__init__()
        if iterations < 0:
            raise ValueError("iterations must be >= 0")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend in ("torch", "triton") and not HAS_FAST_PATH:
            raise ValueError(
                f"backend={backend!r} is not part of the student edition, which runs your own "
                "steps: use backend='plain' (or 'auto')"
            )
        self.iterations, self.backend = iterations, backend
        # set by the kernels' self-check on the propagators it runs (they must not check again)
        self.trusted = False
        self.last_backend: str | None = None  # the backend of the last forward pass

    def backend_for(self, x: torch.Tensor) -> str:
        """The backend that runs the steps for tensors like ``x``: ``"plain"``, ``"torch"`` or
        ``"triton"``. ``auto`` picks the fused kernels on CUDA (float64, as gradcheck uses,
        stays on the PyTorch path: the kernels compute in float32), the custom autograd path
        elsewhere, and the plain steps where this edition has neither. ``triton`` on CPU tensors
        runs only under ``TRITON_INTERPRET=1``, Triton's interpreter, as the tests do. Before the
        kernels are trusted on a device they check themselves against the PyTorch path
        (:mod:`.selfcheck`); if they fail, the PyTorch path runs instead, said in one line."""
        if self.backend == "plain" or not HAS_FAST_PATH:
            return "plain"
        if self.backend == "torch":
            return "torch"
        if self.backend == "auto":
            gpu = x.device.type == "cuda" and x.dtype != torch.float64
            has_triton = HAS_KERNELS and importlib.util.find_spec("triton") is not None
            if not (gpu and has_triton):
                return "torch"
        elif x.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                "backend='triton' on CPU tensors needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 before starting Python (or use backend='torch')"
            )
        if self.trusted:
            return "triton"
        from . import selfcheck

        return "torch" if selfcheck.kernel_problem(str(x.device), str(x.dtype)) else "triton"

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether the steps run as fused Triton kernels for tensors like ``x``."""
        return self.backend_for(x) == "triton"

    def ring_sums(self, x: torch.Tensor, w: torch.Tensor, centred: bool = False) -> torch.Tensor:
        """Per ring r of this propagator's window: sum_{j in r} w_j X_j (``centred``: w_j (X_j -
        X)); x (B, C, H, W), w (B, K, H, W) -> (B, R, C, H, W). The plain version
        (:func:`~helpers.models.propagation.neighbours.ring_sums`, exercise 8) or, on the faster
        backends, the same sums in one custom autograd function."""
        if self.backend_for(x) == "plain":
            return ring_sums(x, w, self.kernel, centred)
        return self._fast_ring_sums(x, w, centred)

    def _fast_ring_sums(self, x: torch.Tensor, w: torch.Tensor, centred: bool) -> torch.Tensor:
        """:meth:`ring_sums` in one custom autograd function (:mod:`.fast`)."""
        # BEGIN EXERCISE solution-only
        from .fast import ring_sums as fast_ring_sums

        return fast_ring_sums(x, w, self.kernel, centred)
        # END EXERCISE

    @property
    def affinity_channels(self) -> int:
        return len(window_offsets(self.kernel))

    @property
    def reach(self) -> int:
        """Pixels a value can travel in one iteration (chessboard): CSPN 1, DySPN 7x7 3, dilated 3
        d. After T iterations a pixel's map depends only on H^0 within T x reach of it."""
        return window_reach(self.kernel)

    def _check(
        self,
        h0: torch.Tensor,
        raw: torch.Tensor,
        attention: torch.Tensor | None = None,
        iterations: int = 0,
        confidence: torch.Tensor | None = None,
    ) -> None:
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
        if (
            raw.dim() != 4
            or raw.shape[1] != K
            or raw.shape[0] != h0.shape[0]
            or raw.shape[-2:] != h0.shape[-2:]
        ):
            raise ValueError(
                f"affinities must be (B, {K}, H, W) = ({h0.shape[0]}, {K}, {h0.shape[2]}, "
                f"{h0.shape[3]}) "
                f"to match the start map {tuple(h0.shape)}; got {tuple(raw.shape)}"
            )
        tensors = [h0, raw]
        if attention is not None:
            per = self.attention_channels
            if (
                attention.dim() != 4
                or attention.shape[0] != h0.shape[0]
                or attention.shape[-2:] != h0.shape[-2:]
                or attention.shape[1] % per
                or (iterations > 0 and attention.shape[1] == 0)
            ):
                raise ValueError(
                    f"attention must be (B, T*{per}, H, W) with B = {h0.shape[0]}, H x W = "
                    f"{h0.shape[2]} x {h0.shape[3]} and T >= 1 ({per} channels per iteration: one "
                    "per "
                    f"ring and one for the pixel itself); got {tuple(attention.shape)}"
                )
            tensors.append(attention)
        if confidence is not None:
            c = confidence
            if c.dim() != 4 or c.shape[:2] != (h0.shape[0], 1) or c.shape[-2:] != h0.shape[-2:]:
                raise ValueError(
                    f"confidence must be (B, 1, H, W) = ({h0.shape[0]}, 1, {h0.shape[2]}, "
                    f"{h0.shape[3]}) "
                    f"to match the start map {tuple(h0.shape)}; got {tuple(confidence.shape)}"
                )
            tensors.append(confidence)
        if h0.numel() == 0:
            return
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            # a training step: the value checks would cost a host sync per step on CUDA; there,
            # H^0 is the refiner's own softmax and a NaN stops training at the loss (fit)
            return
        # one reduction and one host sync for every value check, not one per check
        tol = 1e-3  # half-precision softmax outputs can overshoot 1 by a rounding step
        bad = torch.stack(
            [
                ~torch.isfinite(h0).all(),
                (h0 < -tol).any() | (h0 > 1 + tol).any(),
                *(t.isnan().any() for t in tensors[1:]),
            ]
        ).tolist()
        if bad[0] or bad[1]:
            lo, hi = h0.nan_to_num().aminmax()
            raise ValueError(
                f"start map H^0 must hold probabilities in [0, 1]; got values from {lo.item():.3g} "
                f"to {hi.item():.3g}{' and NaN or infinity' if bad[0] else ''} (apply softmax "
                "first)"
            )
        names = [
            name
            for name, t in (
                ("affinities", raw),
                ("attention", attention),
                ("confidence", confidence),
            )
            if t is not None
        ]
        for name, flag in zip(names, bad[2:]):
            if flag:
                raise ValueError(
                    f"the {name} hold NaN: check the guidance network's output (a diverged "
                    "training run, or NaN in the input image)"
                )
