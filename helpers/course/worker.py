"""The grading subprocess: run a submission's code on the grader's inputs and save what it
returns (tensors, or the error it raised); the grader compares, in its own process.

Started by :func:`helpers.course.grading.grade_one` with this subpackage loaded by path under a
private name, so that the submission's own ``helpers`` is the only one on the import path.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from .catalogue import EXERCISES
from .checking import attempt, load_package


def _save(obj, path: Path) -> None:
    """Written under another name, then renamed: the grader never reads half a file."""
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)


def main(submission: str, inputs_file: str, out_dir: str, *keys: str) -> None:
    """The grading subprocess: run the submission's code for ``keys`` (default: every exercise)
    on the grader's inputs and save what each returns (tensors, or the error it raised) as
    ``out_dir/<key>.pt`` as soon as it is done, after ``out_dir/ready`` once the package has
    imported: the grader times each exercise on its own and compares in its own process. Only
    the submission's own files count: an installed copy of the workbook is taken off the import
    path."""
    # where site ran after all (an interpreter without -S): no installed copy of the workbook
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [submission] + [
        p for p in sys.path if "__editable__" not in p and p != submission
    ]
    inputs = torch.load(inputs_file, map_location="cpu", weights_only=True)
    out = Path(out_dir)
    root = (Path(submission) / "helpers").resolve()
    try:  # the package itself; its modules are imported by the checks that need them
        importlib.import_module("helpers")
        pkg, error = load_package("helpers", root), None
    except Exception as exc:
        pkg, error = (
            None,
            (
                "raised",
                f"the submission's helpers package does not import: {type(exc).__name__}: {exc}",
            ),
        )
    _save({}, out / "ready")
    for key in keys or [e.key for e in EXERCISES]:
        outputs, err = (None, error) if error else attempt(key, pkg, inputs[key])
        _save({"outputs": outputs, "error": list(err) if err else None}, out / f"{key}.pt")
