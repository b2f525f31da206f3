"""The guidance U-Net's head and warm starts: which output channels feed what, and how the
guidance net starts from a trained base net or from another trained refiner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .unet import UNet

FIRST_CONV = (
    "inc.block.0."  # the U-Net's first convolution: the only layer that reads the coarse map
)


def init_from_base(guidance: UNet, base: UNet) -> None:
    """Start the guidance U-Net from the trained base U-Net's weights (as NLSPN and DySPN start
    their guidance encoders from an ImageNet-trained ResNet): every layer but the first
    convolution's extra input channels and the head.

    The guidance net reads (RGB, coarse map), (B, 3 + C, H, W), the base net RGB alone: the RGB
    filters are copied and the map's are zeroed, so at step 0 the guidance net computes exactly
    the base net's features of the image (at the refiner's resolution) and learns from there how
    to use the map. The head keeps its zero initialisation (the refiner starts as the identity).
    Both nets must have the same width and depth."""
    theirs, ours = base.state_dict(), guidance.state_dict()
    first = FIRST_CONV + "weight"  # (width, in_channels, 3, 3)
    if len(guidance.downs) != len(base.downs) or ours[first].shape[0] != theirs[first].shape[0]:
        raise ValueError(
            "guidance_init='base' needs a guidance U-Net of the base net's width and depth: set "
            "refiner_width = coarse_width and refiner_depth = coarse_depth"
        )
    for name, tensor in theirs.items():
        if name == first:
            ours[name] = torch.zeros_like(ours[name])
            ours[name][:, : tensor.shape[1]] = tensor
        elif not name.startswith("head."):
            ours[name] = tensor  # load_state_dict copies
    guidance.load_state_dict(ours)


def init_from_refiner(refiner: nn.Module, trained: nn.Module) -> None:
    """Start ``refiner``'s guidance U-Net from another, trained refiner's (both
    :class:`~helpers.models.refiner.Refiner`) (typically the
    no-propagation control's): every layer copied, and of the head the start map's channels
    (the correction ``delta``); its affinity, attention and confidence channels keep their zero
    initialisation. Both must share the base net and the guidance net's shape, and ``refiner``
    must have a corrected start.

    Propagation with zero affinities is the identity, so at step 0 ``refiner`` computes exactly
    ``trained``'s map, and what training adds from there is propagation on top of a good
    correction: the question the README's *Where the remaining errors lie* leaves (the trained
    affinities lifted the control's map there, with two guidance U-Nets)."""
    if refiner.coarse is not trained.coarse:
        raise ValueError("init_from_refiner needs both refiners built on the same base net")
    ours, theirs = refiner.guidance.state_dict(), trained.guidance.state_dict()
    if {k: v.shape for k, v in ours.items() if not k.startswith("head.")} != {
        k: v.shape for k, v in theirs.items() if not k.startswith("head.")
    }:
        raise ValueError("init_from_refiner needs guidance U-Nets of the same width and depth")
    (a, b), (c, d) = refiner.layout.start, trained.layout.start
    if b - a != refiner.classes or d - c != trained.classes or refiner.classes != trained.classes:
        raise ValueError(
            "init_from_refiner needs both refiners to correct the map (start='corrected', or the "
            "control)"
        )
    for name, tensor in theirs.items():
        if name.startswith("head."):
            ours[name] = ours[name].clone()
            ours[name][a:b] = tensor[c:d]
        else:
            ours[name] = tensor  # load_state_dict copies
    refiner.guidance.load_state_dict(ours)


@dataclass(frozen=True)
class HeadLayout:
    """Named channel ranges of the guidance head, derived from the method and the config."""

    affinity: tuple[int, int] = (0, 0)
    attention: tuple[int, int] = (0, 0)
    start: tuple[int, int] = (0, 0)
    confidence: tuple[int, int] = (0, 0)

    @property
    def channels(self) -> int:
        return max(self.affinity[1], self.attention[1], self.start[1], self.confidence[1])

    def split(self, head: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, channels, H, W) -> {"affinity", "attention", "start", "confidence"}: views of
        consecutive ranges. One ``torch.split``, not a slice each: the backward of a slice is a
        zero-filled copy of the whole head (per slice and training step, the size of DySPN's
        72-channel head)."""
        names = ("affinity", "attention", "start", "confidence")
        parts = torch.split(head, [getattr(self, n)[1] - getattr(self, n)[0] for n in names], 1)
        return dict(zip(names, parts))

    @classmethod
    def build(
        cls,
        method: str,
        start: str,
        classes: int,
        affinity: int = 0,
        attention: int = 0,
        confidence: int = 0,
    ) -> "HeadLayout":
        a = (0, affinity)
        b = (a[1], a[1] + attention)
        s = (b[1], b[1] + (classes if start == "corrected" or method == "control" else 0))
        # last: without a confidence the earlier ranges, and so older checkpoints, are unchanged
        c = (s[1], s[1] + confidence)
        return cls(a, b, s, c)
