"""Building submissions for the grading tests: a copy of the student edition with some or all of
the solution put back, as a student who solved those exercises would hand it in."""

import shutil
from pathlib import Path

from helpers.course.edition import fill_back

ROOT = Path(__file__).resolve().parents[1]


def fill(student: Path, dest: Path, keys=None) -> Path:
    """A copy of the student edition with the solution put back (of ``keys`` only, if given)."""
    shutil.copytree(student, dest)
    for path in (dest / "helpers").rglob("*.py"):
        solution = (ROOT / path.relative_to(dest)).read_text(encoding="utf-8")
        path.write_text(
            fill_back(path.read_text(encoding="utf-8"), solution, keys), encoding="utf-8"
        )
    return dest
