"""Refining coarse segmentations with spatial propagation networks (CSPN, DySPN).

The package, layer by layer (each imports only from the layers above it in this list):

* ``core``: the run's settings (``Config``), files and checkpoints, process settings, progress;
* ``data``: Oxford-IIIT Pet in its official layout, the synthetic stand-in, batches;
* ``analysis``: metrics, paired bootstrap, error bands, figures, the iteration slider;
* ``models``: the U-Net, the coarse segmenter, propagation (CSPN, DySPN), refiners, guided filter;
* ``training``: ``fit`` and evaluation;
* ``workbook``: the stage registry, ``run_stage``, results and timing: what notebooks call;
* ``course``: the exercises, their checks, the student edition and grading;
* ``cli``: ``python -m helpers ...`` and the first notebook cell's set-up (``colab``).

The names below are importable from ``helpers`` directly and load their module on first use
(PEP 562), so ``from helpers import open_workbook`` does not import the propagation code, and a
student's unfinished or broken file breaks only the names that need it. Importing the package
has no side effects.
"""

import importlib

__version__ = "0.2.0"

# public name -> the module that defines it (relative to this package)
_NAMES = {
    # modules the notebooks use by name
    "colab": "cli.colab",
    "exercises": "course.notebook",
    "viz": "analysis.viz",
    # settings and runs
    "Config": "core.config",
    "load_config": "core.config",
    "open_workbook": "workbook.session",
    "Workbook": "workbook.session",
    "StageResult": "workbook.session",
    "run_stage": "workbook.workflow",
    "coarse_stage": "workbook.workflow",
    "load_coarse": "workbook.workflow",
    "load_coarse_predictions": "workbook.workflow",
    "refine_stage": "workbook.workflow",
    "all_stages": "workbook.workflow",
    "gains_and_losses": "workbook.workflow",
    "refine_images": "workbook.workflow",
    "SETTINGS": "workbook.stages",
    "get_stage": "workbook.stages",
    "record_results": "workbook.results",
    "compare_table": "workbook.results",
    "comparison_rows": "workbook.results",
    "format_table": "workbook.results",
    # models
    "UNet": "models.unet",
    "count_parameters": "models.unet",
    "CoarseSegmenter": "models.coarse",
    "Refiner": "models.refiner",
    "CSPN": "models.propagation",
    "DySPN": "models.propagation",
    "Window": "models.propagation",
    # training and analysis
    "fit": "training.loop",
    "iteration_sweep": "training.evaluation",
    "scrubber_for": "analysis.scrubber",
    "check_improves": "analysis.selfcheck",
    "check_learned": "analysis.selfcheck",
    "error_bands": "analysis.error_bands",
    "edges_with": "analysis.error_bands",
    "format_bands": "analysis.error_bands",
}
# names whose attribute in the module differs from the public name
_ATTRIBUTES = {"get_stage": "get"}
_MODULES = {"colab", "exercises", "viz"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    module = importlib.import_module(f".{_NAMES[name]}", __name__)
    value = module if name in _MODULES else getattr(module, _ATTRIBUTES.get(name, name))
    globals()[name] = value  # cached: the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
