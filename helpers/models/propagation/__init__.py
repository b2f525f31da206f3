"""Spatial propagation, CSPN and DySPN, in five parts read in this order:

``propagators`` (CSPN and DySPN: the update rules a student reads), ``geometry`` (windows,
neighbour offsets, rings), ``autograd`` (the two custom autograd functions), ``base`` (the result,
the backend choice and the input checks), ``kernels`` (the fused Triton steps for CUDA) and
``reference`` (a slow ``F.unfold`` transcription the tests compare with).
"""

from .base import BACKENDS, PropagationResult, Propagator
from .geometry import Window, ring_sizes, window_offsets, window_reach
from .propagators import CSPN, EPS, DySPN

__all__ = [
    "BACKENDS",
    "CSPN",
    "EPS",
    "DySPN",
    "PropagationResult",
    "Propagator",
    "Window",
    "ring_sizes",
    "window_offsets",
    "window_reach",
]
