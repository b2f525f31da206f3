"""Building submissions and running notebook cells for the course's tests, as a student or a
grader would."""

from pathlib import Path

import nbclient
import nbformat

from helpers.course.edition import solved_copy


def fill(student: Path, dest: Path, keys=None) -> Path:
    """A copy of the student edition with the solution put back (of ``keys`` only, if given)."""
    return solved_copy(student, dest, keys)


def run_cells(cells: list[str], folder: Path, allow_errors: bool = False) -> list:
    """Execute ``cells`` as one notebook in ``folder`` (a fresh kernel); each cell's outputs."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(folder)}},
    ).execute()
    return [cell.outputs for cell in nb.cells]
