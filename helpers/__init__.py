"""Refining coarse segmentations with spatial propagation networks (CSPN, DySPN).

Modules, one concept each (the README has the map): ``config`` (the run's settings), ``data``
and ``synthetic`` (Oxford-IIIT Pet layout), ``unet`` (parts), ``propagation`` (CSPN / DySPN),
``refiner`` (the models), ``guided_filter``, ``losses``, ``perturb``, ``metrics``, ``training``
(``fit``), ``checkpoint``, ``stages`` (the stage registry), ``workflow`` (``run_stage``),
``results`` (tables, ``results.json``), ``timing``, ``viz`` and ``scrubber`` (figures, the
iteration slider), ``exercises`` and ``assignment`` (the student edition and its grading),
``runner`` (``python -m helpers ...``). Importing the package has no side effects.
"""

__version__ = "0.1.0"
