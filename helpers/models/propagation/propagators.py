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

Neighbours are shifted views of one zero-padded tensor (:mod:`.neighbours`: the gather and the
ring sums, written as plain tensor code: ``backend="plain"``). The faster backends compute the
same sums in a custom autograd function that saves only the propagated map and the weights, so
memory grows by one map per iteration instead of one copy per neighbour (``backend="torch"``),
or in fused Triton kernels on CUDA (``"triton"``). Two savings keep every backend fast: the
change ``D^t = H^t - H^0`` is propagated (the ``H^0`` part of every neighbour term is summed
once, not every iteration), and for C classes only C - 1 are propagated, the first
class's change being minus the sum of the others' (all classes share the weights).
"""

from __future__ import annotations

import torch

from .autograd import as_float, prepare_affinity
from .base import PropagationResult, Propagator
from .geometry import Window, ring_sizes
from .neighbours import confident_weights, gather

EPS = 1e-6  # keeps DySPN's normaliser positive when every attention underflows


def free_channels(h: torch.Tensor) -> torch.Tensor:
    """The classes that are propagated: all but the first (whose change is minus the sum of
    the others', since every class shares the weights). Halves the work for two classes."""
    return h[:, 1:] if h.shape[1] > 1 else h


def with_all_channels(d: torch.Tensor, classes: int) -> torch.Tensor:
    """Inverse of :func:`free_channels` for a *change* D = H - H^0, whose classes sum to zero."""
    return torch.cat([-d.sum(1, keepdim=True), d], 1) if classes > 1 else d


class CSPN(Propagator):
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

    def base(self, h0: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """The constant term of the residual form, computed once per propagation:

        base = sum_j kappa_j (H^0_j - H^0)

        h0 (B, C', H, W) the propagated classes of H^0; kappa (B, 8, H, W) -> (B, C', H, W).
        Each difference is taken before weighting, so a constant map gives exactly 0 (and stays
        constant, at the border too). :func:`gather` reads the neighbours.
        """
        # BEGIN EXERCISE cspn-step
        return (kappa[:, None] * (gather(h0, self.kernel) - h0[:, :, None])).sum(2)
        # END EXERCISE

    def step(self, d: torch.Tensor | None, base: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """One iteration in residual form, on the change D^t = H^t - H^0 of the propagated classes:

        D^{t+1} = sum_j kappa_j D^t_j + base,   base = sum_j kappa_j (H^0_j - H^0)

        (subtract H^0 from both sides of the update). d (B, C', H, W), or None for D^0 = 0;
        base (B, C', H, W); kappa (B, 8, H, W) -> D^{t+1} (B, C', H, W).
        :func:`gather` reads the 8 neighbours of every pixel.
        """
        # BEGIN EXERCISE cspn-step
        if d is None:  # D^0 = 0: the neighbour sum vanishes
            return base
        return base + (kappa[:, None] * gather(d, self.kernel)).sum(2)
        # END EXERCISE

    def _fast_step(
        self, d: torch.Tensor | None, base: torch.Tensor, kappa: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`step` with the neighbour sum in one custom autograd function (backend torch)."""
        # BEGIN EXERCISE solution-only
        return base if d is None else base + self._fast_ring_sums(d, kappa, False)[:, 0]
        # END EXERCISE

    def _fused_step(
        self, d: torch.Tensor | None, base: torch.Tensor, kappa: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`step` as one fused Triton kernel (the CUDA path)."""
        # BEGIN EXERCISE solution-only
        from .kernels import fused_step

        return base if d is None else fused_step(d, kappa, base, self.kernel)
        # END EXERCISE

    def forward(
        self,
        h0: torch.Tensor,
        raw_affinity: torch.Tensor,
        iterations: int | None = None,
        raw_confidence: torch.Tensor | None = None,
    ) -> PropagationResult:
        """h0 (B, C, H, W) probabilities; raw_affinity (B, 8, H, W) -> PropagationResult.
        With ``raw_confidence`` (B, 1, H, W), kappa_j is multiplied by c_j = sigmoid(raw)_j at
        the neighbour (:func:`confident_weights`, NLSPN); the rest of the weight goes to H^0."""
        T = self.iterations if iterations is None else iterations
        self._check(h0, raw_affinity, iterations=T, confidence=raw_confidence)
        with torch.autocast(h0.device.type, enabled=False):  # propagation stays in float32
            h0 = as_float(h0)
            kappa = confident_weights(self.normalise(raw_affinity), raw_confidence, self.kernel)
            # D^t = H^t - H^0 obeys D^{t+1} = sum_j kappa_j D^t_j + base, base = sum_j kappa_j
            # (H^0_j - H^0): base is computed once, and D is exactly 0 for a constant map
            backend = self.last_backend = self.backend_for(h0)
            if backend == "plain":
                base = self.base(free_channels(h0), kappa)
            else:  # the same sum, in one custom autograd function
                base = self._fast_ring_sums(free_channels(h0), kappa, True)[:, 0]
            step = {"plain": self.step, "torch": self._fast_step, "triton": self._fused_step}
            maps, d, step = [h0], None, step[backend]
            for _ in range(T):
                d = step(d, base, kappa)
                maps.append(h0 + with_all_channels(d, h0.shape[1]))
        return PropagationResult(maps[-1], maps, kappa, confidence=_confidence(raw_confidence))


class DySPN(Propagator):
    """Dynamic spatial propagation over a 7x7 window split into distance rings (8, 16, 24).

    The 48 affinities w are predicted once; the attention pi^t (one channel per ring and one for
    the pixel itself, through a sigmoid) is new at every iteration t. With A_r = sum_{j in r} |w_j|:

    G^t = sum_r pi^t_r A_r + pi^t_self

    H^{t+1} = [ sum_r pi^t_r sum_{j in r} w_j^+ H^t_j + pi^t_self H^t
                + (sum_r pi^t_r sum_{j in r} w_j^-) H^0 ] / G^t

    The weights sum to one. As in the authors' ``Dynamic_7x7_naivev2``, the part of the
    affinity that is not spent on neighbours goes to H^0 (diffusion suppression); here that part
    is the negative affinity's magnitude, so every weight is non-negative.

    With ``dilation`` d > 1 the rings 2 and 3 sit at distances 2 d and 3 d (:class:`Window`): the
    same 48 neighbours, one iteration reaching 3 d pixels instead of 3 (the authors' ring sums
    take a dilation too).
    """

    def __init__(
        self,
        iterations: int = 6,
        kernel: int | Window = 7,
        *,
        backend: str = "auto",
        dilation: int = 1,
    ):
        super().__init__(iterations, backend=backend)
        if isinstance(kernel, Window) and dilation != 1:
            raise ValueError(
                f"give the dilation once: in the window {kernel} or as dilation={dilation}, not "
                "both"
            )
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
        # split, not slicing: its backward is one concatenation instead of a zero-filled copy per
        # ring
        return torch.stack([part.sum(1) for part in torch.split(mag, self.sizes, 1)], 1)
        # END EXERCISE

    def step(
        self,
        d: torch.Tensor | None,
        base: torch.Tensor,
        pos: torch.Tensor,
        A: torch.Tensor,
        p: torch.Tensor,
    ) -> torch.Tensor:
        """One iteration in residual form, on D^t = H^t - H^0 of the propagated classes:

        D^{t+1} = [ sum_r pi^t_r (base_r + sum_{j in r} w_j^+ D^t_j) + pi^t_self D^t ] / G^t
        G^t = sum_r pi^t_r A_r + pi^t_self + eps,   base_r = sum_{j in r} w_j^+ (H^0_j - H^0)

        Diffusion suppression is the |w| in G^t: the negative affinities count in the normaliser
        but weigh no neighbour, so their share of the weight goes to H^0 (whose D is 0).
        d (B, C', H, W) or None for D^0 = 0; base (B, R, C', H, W); pos (B, K, H, W) = w^+;
        A (B, R, H, W); p (B, R + 1, H, W) = pi^t (rings, then the pixel itself) -> (B, C', H, W).
        :meth:`ring_sums` gives the weighted neighbour sums of every ring, (B, R, C', H, W).
        """
        # BEGIN EXERCISE dyspn-step
        G = (p[:, : self.rings] * A).sum(1, keepdim=True) + p[:, self.rings :] + EPS
        S = base if d is None else base + self.ring_sums(d, pos)
        step = (p[:, : self.rings, None] * S).sum(1)
        if d is not None:
            step = step + p[:, self.rings :] * d
        return step / G
        # END EXERCISE

    def _fused_step(
        self,
        d: torch.Tensor | None,
        base: torch.Tensor,
        pos: torch.Tensor,
        A: torch.Tensor,
        p: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`step` with the neighbour sums, the pixel's own term and the division in one fused
        Triton kernel (the CUDA path); G^t and the attention-weighted base are per-pixel sums."""
        # BEGIN EXERCISE solution-only
        from .kernels import fused_step

        G = (p[:, : self.rings] * A).sum(1, keepdim=True) + p[:, self.rings :] + EPS
        weighted_base = (p[:, : self.rings, None] * base).sum(1)
        if d is None:
            return weighted_base / G
        return fused_step(
            d, pos, weighted_base, self.kernel, a=p[:, : self.rings], s=p[:, self.rings :], g=G
        )
        # END EXERCISE

    def forward(
        self,
        h0: torch.Tensor,
        raw_affinity: torch.Tensor,
        raw_attention: torch.Tensor,
        iterations: int | None = None,
        suppression: bool = True,
        raw_confidence: torch.Tensor | None = None,
    ) -> PropagationResult:
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
            norm = mag if suppression else pos  # what the normaliser counts
            A = self.ring_magnitudes(norm)  # (B, R, H, W)
            # after A: c_j never renormalises
            pos = confident_weights(pos, raw_confidence, self.kernel)
            # the iteration count is spelled out: with B = 0, view(B, -1, ...) cannot infer it
            pi = torch.sigmoid(as_float(raw_attention)).view(
                B, raw_attention.shape[1] // per, per, H, W
            )
            # in D^t = H^t - H^0 the neighbour terms split into sum_j w_j D^t_j and a per-ring
            # base_r = sum_{j in r} w_j (H^0_j - H^0), computed once (see CSPN.forward)
            base = self.ring_sums(free_channels(h0), pos, centred=True)  # (B, R, C', H, W)
            maps, d = [h0], None
            self.last_backend = self.backend_for(h0)
            step = self._fused_step if self.last_backend == "triton" else self.step
            for t in range(T):
                d = step(d, base, pos, A, pi[:, min(t, pi.shape[1] - 1)])
                maps.append(h0 + with_all_channels(d, h0.shape[1]))
            with torch.no_grad():  # for figures only: keep it out of the backward pass
                affinity = pos / norm.sum(1, keepdim=True).clamp(min=EPS)
        return PropagationResult(
            maps[-1], maps, affinity, pi[:, : max(T, 1)], _confidence(raw_confidence)
        )


def _confidence(raw: torch.Tensor | None) -> torch.Tensor | None:
    """c = sigmoid(raw confidence), detached, for figures; None without a confidence."""
    return None if raw is None else torch.sigmoid(as_float(raw.detach()))
