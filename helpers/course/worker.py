"""The grading subprocess: run a submission's code on the grader's inputs and save what it
returns (tensors, or the error it raised); the grader compares, in its own process.

Started by :func:`helpers.course.grading.grade_one` with this subpackage loaded by path under a
private name, so that the submission's own ``helpers`` is the only one on the import path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .catalogue import EXERCISES
from .checking import attempt, load_package


def main(submission: str, inputs_file: str, out: str) -> None:
    """The grading subprocess: run the submission's code on the grader's inputs and save what it
    returns (tensors, or the error it raised); the grader compares, in its own process. Only the
    submission's own files count: an installed copy of the workbook is taken off the import path."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [submission] + [p for p in sys.path if "__editable__" not in p]
    inputs = torch.load(inputs_file, map_location="cpu", weights_only=True)
    root = (Path(submission) / "helpers").resolve()
    try:
        pkg = load_package("helpers")
        stray = [
            m.__name__ for m in vars(pkg).values() if root not in Path(m.__file__).resolve().parents
        ]
        error = (
            ("raised", f"helpers/{stray[0].split('.')[-1]}.py is missing from the submission")
            if stray
            else None
        )
    except Exception as exc:  # a module that does not import
        pkg, error = (
            None,
            (
                "raised",
                f"the submission's helpers package does not import: {type(exc).__name__}: {exc}",
            ),
        )
    results = {}
    for e in EXERCISES:
        outputs, err = (None, error) if error else attempt(e.key, pkg, inputs[e.key])
        results[e.key] = {"outputs": outputs, "error": list(err) if err else None}
    torch.save(results, out)
