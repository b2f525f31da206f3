"""Grading one submission or a folder of them (``python -m helpers grade PATH``).

Each submission's code runs in a subprocess with a time limit, on fresh random inputs; the
outputs (tensors only) are compared here with what the instructor's solution computes on the same
inputs, and the points are this process's.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import io
import multiprocessing
import os
import platform
import secrets
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import isolation
from .catalogue import EXERCISES
from .checking import (
    Result,
    draw_inputs,
    load_package,
    load_references,
    outcome,
    own_package,
    run_exercise,
)
from .sandbox import import_path, run_submission
from .sources import EDITION, PACKAGE, package_files
from .submissions import find_submissions

# what the grader does and does not do about a submission's code (docs/instructors.md)
ISOLATION = (
    "partial: each submission's code runs on private copies, in its own session, with a time "
    "limit per exercise, and never sees where the solution is; it runs as the grader's user, so "
    "it could read what that user can read: for a sandbox of its own, grade as root (each "
    "submission then runs as an unprivileged user of its own) or on Gradescope (python -m "
    "helpers autograder)"
)
ISOLATION_FULL = (
    "full: each submission's code runs as an unprivileged user of its own, on private copies "
    "only that user can read, in its own session, with a time limit per exercise; the solution "
    "and the submissions as handed in are unreadable to it while grading runs, and every process "
    "of its user is killed when its grading ends"
)
TIMEOUT = 60.0  # seconds per exercise: a check takes well under one; the import a few


# ------------------------------------------------------------------------------ grading
def isolating() -> bool:
    """Whether submissions run as unprivileged users: the solution grading as root, on Linux (a
    student's own check needs no protection from itself)."""
    return EDITION == "solution" and isolation.available()


def solution_files() -> Path:
    """What holds the solution: the checkout (its tests hold answers too), or the installed
    package."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() else PACKAGE


def guard(submissions: list[Path]):
    """While grading as root: the solution and ``submissions`` unreadable to others, the
    interpreter and its import path reachable (:class:`~helpers.course.isolation.Guard`; a no-op
    otherwise). The changed folders are printed first, for a grader that gets killed."""
    if not isolating():
        return contextlib.nullcontext()
    needed = [Path(sys.executable), Path(os.path.realpath(sys.executable))]
    needed += [Path(p) for p in import_path()]
    # installed copies of the workbook (Gradescope's `pip install .` puts one in site-packages)
    installed = [Path(p) / PACKAGE.name for p in import_path()]
    installed = [p for p in installed if (p / "__init__.py").is_file()]
    hide = isolation.hidden_parts([solution_files(), *installed, *submissions], needed)
    return isolation.Guard(hide, needed)


def grade_one(
    submission: Path, timeout: float = TIMEOUT, seed: int | None = None, guarded: bool = False
) -> list[Result]:
    """Grade one submission: fresh random inputs for every check (those of ``seed`` if given); the
    submission's code runs on them in a subprocess, ``timeout`` seconds per exercise
    (:func:`helpers.course.sandbox.run_submission`); its outputs (tensors only, loaded with
    ``weights_only=True``) are compared here with what the instructor's solution computes on the
    same inputs, and the points are this process's. Nothing the submission prints or writes
    decides its grade, and a table of the shipped reference outputs does not help. As root, the
    code runs as an unprivileged user of its own (:mod:`helpers.course.isolation`); ``guarded``
    says the caller already holds :func:`guard` for the whole run."""
    if EDITION == "solution":
        seed = secrets.randbits(31) if seed is None else seed
        inputs = {e.key: draw_inputs(e.key, seed) for e in EXERCISES}
        solution = load_package(own_package())
        wanted = {e.key: (lambda k=e.key: run_exercise(k, solution, inputs[k])) for e in EXERCISES}
    else:  # a student's own check: the shipped reference inputs and the solution's outputs
        refs = load_references()
        inputs = {e.key: refs[e.key]["inputs"] for e in EXERCISES}
        wanted = {e.key: (lambda k=e.key: refs[k]["outputs"]) for e in EXERCISES}
    account = isolation.claim_uid() if isolating() else None
    held = contextlib.nullcontext() if guarded else guard([submission])
    try:
        with held, tempfile.TemporaryDirectory(prefix="workbook-grade-") as tmp:
            work = Path(tmp)
            if account is not None:  # root's folder: the account may pass through, not list it
                os.chmod(tmp, 0o711)
                work = work / "work"
                work.mkdir()
            inputs_file = work / "inputs.pt"
            torch.save(inputs, inputs_file)
            produced = run_submission(
                submission.resolve(),
                inputs_file,
                work,
                [e.key for e in EXERCISES],
                timeout,
                account,
            )
    finally:
        if account is not None:
            account.release()
    results = []
    for e in EXERCISES:
        got = produced.get(e.key) if isinstance(produced, dict) else None
        if not isinstance(got, dict):
            results.append(_all_failed("the grading process returned nothing for it")[e.number - 1])
            continue
        error = got.get("error")
        if error and not (
            isinstance(error, (list, tuple))
            and len(error) == 2
            and all(isinstance(x, str) for x in error)
        ):  # what the worker writes is (kind, message); anything else was forged
            error = ("raised", "its result is not what the grading process writes")
        results.append(
            outcome(e.key, got.get("outputs"), wanted[e.key](), tuple(error) if error else None)
        )
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
        "seed": seed if EDITION == "solution" else None,
        "inputs": "fresh, drawn with the seed"
        if EDITION == "solution"
        else "the shipped references",
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


def _grade_in_own_process(args: tuple[Path, float, int, bool]) -> list[Result]:
    """:func:`grade_one` in a pool's process: each process is the subreaper of its own workers."""
    return grade_one(*args)


def grade(
    path: str | Path, timeout: float = TIMEOUT, seed: int | None = None, jobs: int = 1
) -> dict:
    """Grades of every submission under ``path`` (see :func:`find_submissions`), all on the
    inputs drawn with ``seed`` (fresh when None; recorded, so that ``seed`` replays the run),
    ``jobs`` submissions at a time: ``{"grader": {...}, "warnings": [...], "submissions":
    [{name, path, score, max_score, exercises}]}``."""
    seed = secrets.randbits(31) if seed is None else seed
    with tempfile.TemporaryDirectory(prefix="workbook-submissions-") as unpacked:
        found, warnings = find_submissions(path, Path(unpacked))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        tasks = [(sub.path, timeout, seed, True) for sub in found]
        with guard([Path(path)]) as held:
            if held is not None and held.changed:
                changed = ", ".join(str(p) for p, _ in held.changed)
                print(f"permissions changed while grading (restored after): {changed}")
            if jobs > 1 and len(tasks) > 1:
                # processes, not threads: each must be the only one reaping what its workers leave
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context) as pool:
                    graded = list(pool.map(_grade_in_own_process, tasks))
            else:
                graded = [grade_one(*task) for task in tasks]
    out = [
        {
            "name": sub.name,
            "path": str(sub.source),
            "score": sum(r.points for r in results),
            "max_score": sum(r.max_points for r in results),
            "exercises": [r.__dict__ for r in results],
        }
        for sub, results in zip(found, graded)
    ]
    info = {
        **grader_info(seed, timeout),
        "jobs": jobs,
        "isolation": ISOLATION_FULL if isolating() else ISOLATION,
    }
    return {"grader": info, "warnings": warnings, "submissions": out}


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
    if doc.get("grader", {}).get("seed") is None and "grader" in doc:
        lines.append(
            "checked on the shipped reference inputs, as the notebooks' check cells do; "
            "your instructor grades on fresh inputs of the same kind"
        )
    elif "grader" in doc:
        g = doc["grader"]
        if g.get("isolation"):
            lines.append(f"isolation {g['isolation']}")
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
