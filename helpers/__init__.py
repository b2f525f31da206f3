"""Refining coarse segmentations with spatial propagation networks (CSPN, DySPN).

Modules, one concept each: ``config`` (profiles), ``data`` and ``synthetic`` (Oxford-IIIT Pet
layout), ``metrics``, ``unet`` (parts), ``propagation`` (CSPN / DySPN), ``refiner`` (the models),
``training`` (``fit``), ``checkpoint``, ``workflow`` (the notebook stages), ``viz`` and
``scrubber`` (figures and the iteration slider), ``runner`` (``python -m helpers run``).
Importing the package has no side effects.
"""

__version__ = "0.1.0"
