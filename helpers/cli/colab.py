"""First-cell set-up: the few steps Colab needs, and one-line messages for the exercises
everywhere."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from ..core.runtime import in_colab

WORKBOOK = Path(__file__).resolve().parents[2]  # the folder holding this copy of helpers/

# what the workbook needs beyond Colab's own image (torch, torchvision, matplotlib, tqdm, ipywidgets
# ship there)
COLAB_EXTRAS = ("nbval",)


def foreign_copy(folder: str | Path | None = None) -> str | None:
    """One line when the notebook in ``folder`` (default: the current one) belongs to a workbook
    (a ``helpers/`` beside its ``notebooks/``) whose ``helpers`` is not the one imported: edits to
    that folder would not run. None otherwise."""
    own = Path(folder or Path.cwd()).resolve().parent
    if not (own / "helpers" / "__init__.py").is_file() or own == WORKBOOK:
        return None
    return (
        f"note: this kernel imported helpers from {WORKBOOK}, not from this notebook's "
        f"workbook {own}: restart the kernel and run this cell first"
    )


def setup(verbose: bool = True) -> list[str]:
    """Prepare the environment and return what was done (printed unless ``verbose=False``).

    On Colab: installs only the missing extras (never torch), enables the widget manager so the
    iteration slider renders, and picks the ``full`` profile on a GPU unless one was chosen.
    Everywhere, in IPython: the exercises' errors are shown in one line (see
    :func:`helpers.course.notebook.install_one_line_errors`).
    """
    from ..course.notebook import install_one_line_errors

    install_one_line_errors()  # an unsolved or failing exercise shows as one line, not a traceback
    done = []
    note = foreign_copy()
    if note:
        print(note)  # always: the student's edits would silently not run
    if in_colab():
        missing = [p for p in COLAB_EXTRAS if importlib.util.find_spec(p) is None]
        if missing:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
            done.append(f"installed {', '.join(missing)}")
        from google.colab import output  # type: ignore[import-not-found]

        output.enable_custom_widget_manager()
        done.append("enabled the Colab widget manager")
        import torch

        if "WORKBOOK_PROFILE" not in os.environ:
            os.environ["WORKBOOK_PROFILE"] = "full" if torch.cuda.is_available() else "cpu"
            done.append(
                f"profile {os.environ['WORKBOOK_PROFILE']} "
                f"({'GPU' if torch.cuda.is_available() else 'no GPU'})"
            )
        from .doctor import colab_line

        # the doctor's line: device, profile and the propagation backend after its self-check
        done.append(colab_line())
        done.append(
            budget_hint(gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
        )
    if verbose and done:
        # what was done on one line; the machine (the doctor's line) and the budget on their own
        said = done[:-2] if in_colab() else done
        print("\n".join(["Colab set-up: " + "; ".join(said), *done[len(said) :]]))
    return done


# GPUs on which the full profile does not fit a 60-minute session even at the budget's floor
# (docs/running.md#the-full-profile-on-the-gpus-students-get: a T4 4 hours, an L4 3.5, for the
# report's setting alone)
SLOW_GPUS = ("T4", "L4")


def budget_hint(session_minutes: float = 60, gpu: str | None = None) -> str:
    """What to do about a session's time limit: the budget in use, or one to set (the training
    of a ``session_minutes`` session; :func:`helpers.workbook.plan.suggested_budget`); on a GPU
    too slow for the ``full`` profile in such a session, the ``cpu`` profile instead."""
    from ..core.config import budget_minutes
    from ..workbook.plan import suggested_budget

    minutes = budget_minutes()
    if minutes is not None:
        return f"budget {minutes:g} min (WORKBOOK_BUDGET)"
    if (
        gpu
        and os.environ.get("WORKBOOK_PROFILE") == "full"
        and any(g in gpu.split() for g in SLOW_GPUS)
    ):
        return (
            f"budget: on a {gpu} the full profile takes hours and does not fit a "
            f"{session_minutes:g}-minute session even at a quarter of its epochs; run "
            "%env WORKBOOK_PROFILE=cpu in every notebook before wb = open_workbook() (128 px, "
            "about half an hour on the whole dataset)"
        )
    n = suggested_budget(session_minutes)
    return (
        f"budget: none; for a {session_minutes:g}-minute session run %env WORKBOOK_BUDGET={n} "
        "in every notebook before wb = open_workbook() (or !python -m helpers run --budget "
        f"{n})"
    )
