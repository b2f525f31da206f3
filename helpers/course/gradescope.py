"""Gradescope: the autograder zip (``python -m helpers autograder OUT.zip``) and the results file
its ``run_autograder`` writes (``grade PATH --gradescope FILE``), in Gradescope's documented
format: top-level ``score``, ``execution_time``, ``output`` and ``tests``, one per exercise with
``name``, ``number``, ``score``, ``max_score``, ``output`` and ``visibility``.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from .sources import workbook_files

SCRIPTS = Path(__file__).resolve().with_name("autograder")  # setup.sh, run_autograder


def results(doc: dict, seconds: float, error: str | None = None) -> dict:
    """Gradescope's results of one submission from :func:`helpers.course.grading.grade`'s
    document (or a score of 0 with ``error`` when nothing could be graded)."""
    if error is not None or not doc.get("submissions"):
        return {
            "score": 0,
            "execution_time": round(seconds),
            "tests": [],
            "output": error or "no submission found",
        }
    sub = doc["submissions"][0]
    grader = doc.get("grader", {})
    tests = [
        {
            "name": f"Exercise {r['number']}: {r['title']}",
            "number": str(r["number"]),
            "score": r["points"],
            "max_score": r["max_points"],
            "output": r["message"],
            "visibility": "visible",
        }
        for r in sub["exercises"]
    ]
    output = (
        f"graded with seed {grader.get('seed')} by grader {grader.get('version')} "
        f"({str(grader.get('solution_sha256', ''))[:12]})"
    )
    warnings = doc.get("warnings") or []
    if warnings:
        output += "\n" + "\n".join(f"warning: {w}" for w in warnings)
    return {
        "score": sub["score"],
        "execution_time": round(seconds),
        "output": output,
        "tests": tests,
    }


def build_autograder(out_zip: str | Path, root: Path | None = None) -> Path:
    """The zip to upload as a Gradescope autograder: the solution workbook (the grader) with
    ``setup.sh`` and ``run_autograder`` at its top."""
    out_zip = Path(out_zip)
    if out_zip.exists():
        raise FileExistsError(f"{out_zip} exists: choose a new name (nothing is overwritten)")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, path in sorted(workbook_files(root).items()):
            zf.write(path, rel)
        for script in ("setup.sh", "run_autograder"):
            info = zipfile.ZipInfo(script)
            info.external_attr = (stat.S_IFREG | 0o755) << 16  # executable once unpacked
            zf.writestr(info, (SCRIPTS / script).read_text(encoding="utf-8"))
    return out_zip
