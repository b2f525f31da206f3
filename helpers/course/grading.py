"""Grading one submission or a folder of them (``python -m helpers grade PATH``).

Each submission's code runs in a subprocess with a time limit, on fresh random inputs; the
outputs (tensors only) are compared here with what the instructor's solution computes on the same
inputs, and the points are this process's.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from .catalogue import EXERCISES
from .checking import (
    Result,
    draw_inputs,
    load_package,
    outcome,
    own_package,
    run_exercise,
)
from .sources import PACKAGE, package_files
from .submissions import find_submissions


# ------------------------------------------------------------------------------ grading
def grade_one(submission: Path, timeout: float = 120.0, seed: int | None = None) -> list[Result]:
    """Grade one submission: fresh random inputs for every check; the submission's code runs on
    them in a subprocess with a time limit; its outputs (tensors only, loaded with
    ``weights_only=True``) are compared here with what the instructor's solution computes on the
    same inputs, and the points are this process's. Nothing the submission prints or writes
    decides its grade, and a table of the shipped reference outputs does not help."""
    grader = Path(__file__).resolve().with_name("__init__.py")  # this subpackage, loaded by path
    seed = secrets.randbits(31) if seed is None else seed
    inputs = {e.key: draw_inputs(e.key, seed) for e in EXERCISES}
    solution = load_package(own_package())
    with tempfile.TemporaryDirectory(prefix="workbook-grade-") as tmp:
        inputs_file, out = Path(tmp) / "inputs.pt", Path(tmp) / "outputs.pt"
        torch.save(inputs, inputs_file)
        code = (
            "import importlib.util, pathlib, sys\n"
            "init = pathlib.Path(sys.argv[1])\n"
            "spec = importlib.util.spec_from_file_location(\n"
            "    'workbook_grader', init, submodule_search_locations=[str(init.parent)])\n"
            "mod = importlib.util.module_from_spec(spec); sys.modules['workbook_grader'] = mod\n"
            "spec.loader.exec_module(mod)\n"
            "from workbook_grader.worker import main\n"
            "main(sys.argv[2], sys.argv[3], sys.argv[4])\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
        env.update(WORKBOOK_HEADLESS="1", OMP_NUM_THREADS="1")
        cmd = [
            sys.executable,
            "-I",
            "-c",
            code,
            str(grader),
            str(submission.resolve()),
            str(inputs_file),
            str(out),
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return _all_failed(
                f"the checks did not finish within {timeout:g} s (an endless loop, or work at "
                "import?)"
            )
        try:
            produced = torch.load(out, map_location="cpu", weights_only=True)
        except Exception:  # no file, or one that is not plain tensors
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return _all_failed(f"the submission's package could not be checked: {last}")
    results = []
    for e in EXERCISES:
        got = produced.get(e.key) if isinstance(produced, dict) else None
        if not isinstance(got, dict):
            results.append(_all_failed("the grading process returned nothing for it")[e.number - 1])
            continue
        error = tuple(got["error"]) if got.get("error") else None
        want = run_exercise(e.key, solution, inputs[e.key])
        results.append(outcome(e.key, got.get("outputs"), want, error))
    return results


def _all_failed(why: str) -> list[Result]:
    return [
        Result(e.key, e.number, e.title, 0, e.points, False, f"{e.label}: {why}") for e in EXERCISES
    ]


def grader_info(seed: int, timeout: float) -> dict:
    """What a regrade needs to replay a grading run: the seed of its inputs, the grader's version
    (the package's, and a hash of the solution's files), the limits, the date and the versions."""
    digest = hashlib.sha256()
    for path in package_files():
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "seed": seed,
        "version": version(),
        "solution_sha256": digest.hexdigest(),
        "timeout_s": timeout,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def version() -> str:
    """The grading package's version (``helpers.__version__``)."""
    try:
        return importlib.import_module(own_package()).__version__
    except (ImportError, AttributeError):
        return "unknown"


def grade(path: str | Path, timeout: float = 120.0, seed: int | None = None) -> dict:
    """Grades of every submission under ``path`` (see :func:`find_submissions`), all on the
    inputs drawn with ``seed`` (fresh when None; recorded, so that ``seed`` replays the run):
    ``{"grader": {...}, "warnings": [...], "submissions": [{name, path, score, max_score,
    exercises}]}``."""
    seed = secrets.randbits(31) if seed is None else seed
    out = []
    with tempfile.TemporaryDirectory(prefix="workbook-submissions-") as unpacked:
        found, warnings = find_submissions(path, Path(unpacked))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for sub in found:
            results = grade_one(sub.path, timeout, seed)
            out.append(
                {
                    "name": sub.name,
                    "path": str(sub.path) if Path(path).is_dir() else str(path),
                    "score": sum(r.points for r in results),
                    "max_score": sum(r.max_points for r in results),
                    "exercises": [r.__dict__ for r in results],
                }
            )
    return {"grader": grader_info(seed, timeout), "warnings": warnings, "submissions": out}


def grades_csv(doc: dict) -> str:
    """One row per submission: name, score, max_score, then the points of each exercise (its key
    as the column), for a gradebook's import."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "score", "max_score", *(e.key for e in EXERCISES)])
    for sub in doc["submissions"]:
        points = {r["key"]: r["points"] for r in sub["exercises"]}
        writer.writerow(
            [
                sub["name"],
                sub["score"],
                sub["max_score"],
                *(points.get(e.key, 0) for e in EXERCISES),
            ]
        )
    return buffer.getvalue()


def format_grades(doc: dict) -> str:
    """A plain-text table per submission: exercise, points, passed, message."""
    lines = []
    if "grader" in doc:
        g = doc["grader"]
        lines.append(
            f"graded with seed {g['seed']} (--seed {g['seed']} replays it), grader "
            f"{g['version']} ({g['solution_sha256'][:12]}), {g['date']}"
        )
    for sub in doc["submissions"]:
        lines.append(f"{sub['name']}: {sub['score']} / {sub['max_score']} points")
        lines.append(f"  {'exercise':36s} {'points':>7s}  passed  message")
        for r in sub["exercises"]:
            label = f"{r['number']} {r['title']}"
            detail = (
                r["message"]
                .removeprefix(f"Exercise {label[: len(str(r['number']))]} ({r['title']})")
                .lstrip(": ")
            )
            lines.append(
                f"  {label:36s} {r['points']:>3d} / {r['max_points']:<3d} "
                f"{'yes' if r['passed'] else 'no ':6s}  "
                f"{detail}"
            )
    return "\n".join(lines)
