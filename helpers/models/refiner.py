"""Segmenters: the deliberately coarse U-Net, and the refiners built on top of it.

* :class:`CoarseSegmenter` runs a small U-Net on a down-scaled image and up-samples its
  probabilities: (B, 3, H, W) -> (B, C, H, W). Its boundaries are blobby by design.
* :class:`Refiner` freezes a coarse segmenter and adds a guidance U-Net that reads the RGB image
  and the coarse probabilities, (B, 3 + C, H, W), and predicts what the chosen method needs:

  ========  ==================================================================================
  cspn      8 affinities, times the gain g (cspn_gain); CSPN propagates T iterations from H^0
  dyspn     48 ring affinities + T x 4 attention maps; DySPN propagates (rings 2, 3 dilated)
  control   nothing to propagate: the same U-Net corrects the coarse map directly
  ========  ==================================================================================

  With ``start="corrected"`` the head also predicts a correction ``delta`` (C channels) and the
  propagation starts from ``softmax(log P_coarse + delta)`` (as NLSPN and DySPN predict an
  initial depth); ``start="coarse"`` starts from the coarse map, as the report did. The control
  is exactly the corrected start with no propagation. Every head is zero-initialised, so each
  refiner starts as the identity on the coarse map. With ``guidance_init="base"`` the guidance
  U-Net starts from the coarse U-Net's trained weights (:func:`init_from_base`), and
  ``warm_lr_factor`` may train those copied layers at a lower rate than the new ones
  (:meth:`Refiner.parameter_groups`).

With ``tune_base`` the refiner fine-tunes its own copy of the coarse segmenter end to end, through
the refiner's loss (the coarse map then carries gradients into the start map and the guidance
input); its BatchNorm statistics stay frozen either way.

Training (see :meth:`Refiner.training_loss`): in train mode a share ``perturb`` of the coarse
maps is degraded before the refiner sees them (:mod:`helpers.models.perturb`), and the loss may
supervise every iteration and weigh the boundary band (:mod:`helpers.models.losses`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.config import Config
from .coarse import CoarseSegmenter
from .guidance import FIRST_CONV, HeadLayout, init_from_base
from .losses import refinement_loss
from .perturb import perturb_map, truth_starts
from .propagation import CSPN, DySPN, PropagationResult
from .unet import UNet

METHODS = ("control", "cspn", "dyspn")
STARTS = ("coarse", "corrected")
GUIDANCE_INITS = ("scratch", "base")


def supervises_start(method: str, start: str) -> bool:
    """Whether ``start_weight`` applies: only to a propagator with a corrected start. The control's
    start is its output (already supervised); a coarse start is the frozen coarse map."""
    return method != "control" and start == "corrected"


@dataclass
class RefineOutput:
    """probs (B, C, H, W) the refined map; coarse and start (B, C, H, W); propagation or None."""

    probs: torch.Tensor
    coarse: torch.Tensor
    start: torch.Tensor
    propagation: PropagationResult | None


class Refiner(nn.Module):
    """Coarse segmenter (frozen unless ``tune_base``) + guidance U-Net + propagation:
    (B, 3, H, W) -> (B, C, H, W). ``self.coarse`` is the caller's base net, or with ``tune_base``
    the refiner's own copy of it (so ``RefineOutput.coarse`` is then that copy's map)."""

    def __init__(
        self,
        coarse: CoarseSegmenter,
        *,
        method: str = "cspn",
        start: str = "coarse",
        classes: int = 2,
        width: int = 16,
        depth: int = 4,
        iterations: int = 6,
        kernel: int = 7,
        dilation: int = 1,
        backend: str = "auto",
        perturb: float = 0.0,
        perturb_truth: float = 0.0,
        deep_supervision: bool = False,
        boundary_weight: float = 1.0,
        start_weight: float = 0.0,
        tune_base: bool = False,
        confidence: bool = False,
        cspn_gain: float = 1.0,
        guidance_init: str = "scratch",
        warm_lr_factor: float = 1.0,
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {start!r}")
        # a tuned base is a copy: the caller's net (shared by the other stages) never changes
        self.tune_base = tune_base
        self.coarse = (
            (copy.deepcopy(coarse) if tune_base else coarse).requires_grad_(tune_base).eval()
        )
        self.method, self.start_mode, self.classes = method, start, classes
        self.perturb, self.deep_supervision, self.boundary_weight = (
            perturb,
            deep_supervision,
            boundary_weight,
        )
        self.perturb_truth = perturb_truth
        # NLSPN's confidence: one channel, c = sigmoid, how much each pixel may spread (propagators
        # only)
        self.confidence = confidence and method != "control"
        # CSPN's head output k is scaled by g before kappa_j = (g k_j)^+ / max(1, g sum_j |k_j|):
        # the weights saturate from sum_j |k_j| = 1 / g on, so a head that starts at zero reaches
        # strong propagation g times sooner (Adam moves a weight by about the learning rate per
        # step)
        if cspn_gain <= 0:
            raise ValueError(f"cspn_gain must be > 0, got {cspn_gain}")
        self.cspn_gain = cspn_gain
        if method == "cspn":
            self.propagator = CSPN(iterations, backend=backend)
            layout = HeadLayout.build(
                method,
                start,
                classes,
                affinity=self.propagator.affinity_channels,
                confidence=int(self.confidence),
            )
        elif method == "dyspn":
            self.propagator = DySPN(iterations, kernel, backend=backend, dilation=dilation)
            layout = HeadLayout.build(
                method,
                start,
                classes,
                affinity=self.propagator.affinity_channels,
                attention=iterations * self.propagator.attention_channels,
                confidence=int(self.confidence),
            )
        else:
            self.propagator = None
            layout = HeadLayout.build(method, start, classes)
        self.layout = layout
        self.guidance = UNet(
            3 + classes, layout.channels, width=width, depth=depth, zero_init_head=True
        )
        if guidance_init not in GUIDANCE_INITS:
            raise ValueError(
                f"guidance_init must be one of {GUIDANCE_INITS}, got {guidance_init!r}"
            )
        if guidance_init == "base":
            init_from_base(self.guidance, self.coarse.unet)
        if warm_lr_factor <= 0:
            raise ValueError(f"warm_lr_factor must be > 0, got {warm_lr_factor}")
        # only layers that were copied have anything to preserve: from scratch every layer is new
        self.warm_lr_factor = warm_lr_factor if guidance_init == "base" else 1.0
        if start_weight < 0:
            raise ValueError(f"start_weight must be >= 0, got {start_weight}")
        self.start_weight = start_weight if supervises_start(method, start) else 0.0

    def parameter_groups(self, lr: float) -> list[dict]:
        """The optimiser's parameter groups, each ``{"params": [...], "lr": ...}``: the guidance
        U-Net's layers copied from the base net (:func:`init_from_base`) at ``lr * warm_lr_factor``,
        its new ones (the head, and the first convolution, whose coarse-map filters start at zero)
        and anything else trainable (a tuned base) at ``lr``. One group when the factor is 1."""
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if self.warm_lr_factor == 1.0:
            return [{"params": [p for _, p in trainable], "lr": lr}]
        new = ("guidance.head.", "guidance." + FIRST_CONV)
        copied = [p for n, p in trainable if n.startswith("guidance.") and not n.startswith(new)]
        rest = [p for n, p in trainable if not n.startswith("guidance.") or n.startswith(new)]
        return [{"params": rest, "lr": lr}, {"params": copied, "lr": lr * self.warm_lr_factor}]

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        coarse: CoarseSegmenter,
        method: str,
        start: str | None = None,
        classes: int = 2,
        cspn_gain: float | None = None,
        guidance_init: str | None = None,
    ) -> "Refiner":
        """The refiner of the report's setting unless ``start``, ``cspn_gain`` and
        ``guidance_init`` say otherwise (a :class:`~helpers.workbook.stages.Stage` passes its own
        setting's)."""
        return cls(
            coarse,
            method=method,
            start=start or cfg.start_map,
            classes=classes,
            width=cfg.refiner_width,
            depth=cfg.refiner_depth,
            iterations=cfg.iterations,
            kernel=cfg.dyspn_kernel,
            dilation=cfg.dyspn_dilation,
            backend=cfg.propagation_backend,
            perturb=cfg.perturb,
            perturb_truth=cfg.perturb_truth,
            deep_supervision=cfg.deep_supervision,
            boundary_weight=cfg.boundary_weight,
            start_weight=cfg.start_weight,
            tune_base=cfg.tune_base,
            confidence=cfg.confidence,
            cspn_gain=cfg.cspn_gain if cspn_gain is None else cspn_gain,
            guidance_init=cfg.guidance_init if guidance_init is None else guidance_init,
            warm_lr_factor=cfg.warm_lr_factor,
        )

    def train(self, mode: bool = True) -> "Refiner":
        """Train (or eval) mode for the guidance U-Net; the coarse net stays in eval mode (frozen,
        or with ``tune_base`` trained with its BatchNorm statistics frozen)."""
        # BEGIN EXERCISE refiner-loss
        super().train(mode)
        self.coarse.eval()  # frozen: its BatchNorm statistics must not drift
        return self
        # END EXERCISE

    def refine(
        self,
        image: torch.Tensor,
        iterations: int | None = None,
        suppression: bool = True,
        truth: torch.Tensor | None = None,
        start: torch.Tensor | None = None,
    ) -> RefineOutput:
        """image (B, 3, H, W) -> :class:`RefineOutput`; ``iterations`` overrides T (an iteration
        sweep); ``suppression=False`` drops DySPN's diffusion suppression (an ablation).
        In train mode the coarse map is degraded first (``perturb``), and given the ground truth
        ``truth`` (B, H, W) a share ``perturb_truth`` of the maps is replaced by degraded truth;
        never in eval mode. ``start`` (B, C, H, W) probabilities, propagators only: propagate
        from this map instead of the refiner's own H^0, with the affinities (and attention) the
        guidance net predicts for ``image`` (a diagnostic: another refiner's map as H^0)."""
        if start is not None and self.propagator is None:
            raise ValueError(
                "start= needs a propagator: the no-propagation control has nothing to propagate"
            )
        with torch.set_grad_enabled(self.tune_base and torch.is_grad_enabled()):
            coarse = self.coarse(image)
        if self.training:
            # differentiable: a tuned base learns through it
            coarse = perturb_map(coarse, self.perturb)
            if truth is not None:
                coarse = truth_starts(coarse, truth, self.perturb_truth)
        head = self.layout.split(
            self.guidance(torch.cat([image, coarse.to(image.dtype)], 1)).float()
        )
        if start is not None:
            start = start.float()
        elif head["start"].shape[1]:
            start = (torch.log(coarse.clamp_min(1e-6)) + head["start"]).softmax(1)
        else:
            start = coarse
        # passed only when used: a propagator without the option (an exercise's stand-in) still fits
        extra = {"raw_confidence": head["confidence"]} if self.confidence else {}
        if self.method == "cspn":
            # x 1.0 is exact
            result = self.propagator(start, self.cspn_gain * head["affinity"], iterations, **extra)
        elif self.method == "dyspn":
            result = self.propagator(
                start, head["affinity"], head["attention"], iterations, suppression, **extra
            )
        else:
            return RefineOutput(start, coarse, start, None)
        return RefineOutput(result.final, coarse, start, result)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.refine(image).probs

    def training_loss(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one batch, image (B, 3, H, W) and target (B, H, W): cross-entropy of H^T, or of
        every H^t with ``deep_supervision``, plus ``start_weight`` x that of a corrected start H^0,
        boundary band weighted by ``boundary_weight``.

        :meth:`refine` gives the maps H^0 .. H^T (``out.propagation.maps``; the control has no
        propagation: its maps are the coarse map and its output) and computes the coarse map
        without gradients (with them where ``tune_base`` trains it);
        :func:`~helpers.models.losses.refinement_loss` is the cross-entropy."""
        # BEGIN EXERCISE refiner-loss
        out = self.refine(image, truth=target)
        # the control has no iterations: its corrected map is its only output
        maps = out.propagation.maps if out.propagation is not None else [out.coarse, out.probs]
        return refinement_loss(
            maps, target, self.deep_supervision, self.boundary_weight, self.start_weight
        )
        # END EXERCISE
