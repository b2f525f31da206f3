"""The two editions of the workbook, and grading a folder of submissions.

The solution edition is this repository: every exercise region is marked in ``helpers/`` by
two comment lines, so it runs exactly as without them: a line ``# BEGIN EXERCISE`` followed by
the exercise's key (``cspn-step``) opens a region, a line ``# END EXERCISE`` closes it. Regions
keyed ``solution-only`` hold code that would give an exercise away (the slow reference, the
fused step's set-up): the student edition replaces them too, with a note instead of a hint.

* :func:`make_student_edition` (``python -m helpers assignment OUT``) copies the workbook and
  replaces each region by ``raise NotImplementedError("Exercise 5 (CSPN step): ... Hint: ...")``,
  keeping the markers, the signatures and the docstrings; the notebooks' outputs are cleared.
* :func:`fill_back` puts the solution back into a student's file (the round trip the tests use).
* :func:`grade` (``python -m helpers grade PATH``) runs the checks of :mod:`helpers.exercises` on
  one submission or a folder of them, each in a subprocess with a time limit, using the
  instructor's checks and reference tensors, never the submission's.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .exercises import BY_KEY, EXERCISES, Result

REPO_ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN EXERCISE (?P<key>[a-z0-9-]+)[ \t]*$")
END = re.compile(r"^[ \t]*# END EXERCISE[ \t]*$")
MARKER = re.compile(r"^[ \t]*#\s*(BEGIN|END)\s+EXERCISE", re.IGNORECASE)   # anything that looks like one
SOLUTION_ONLY = "solution-only"
NOT_IN_STUDENT_EDITION = ("not part of the student edition (it would give an exercise away); "
                          "the workbook runs without it")
# settings that differ in the student edition: on a GPU the propagators would otherwise run the
# fused Triton kernels (the solution) instead of the student's CSPN.step / DySPN.step
STUDENT_SETTINGS = {"helpers/config.py": (('propagation_backend: str = "auto"', 'propagation_backend: str = "torch"'),)}
# never copied into a student edition: local runs, data, caches, a failed notebook's copy
SKIP_DIRS = {".git", "runs", "data", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".benchmarks"}


class AssignmentError(ValueError):
    """A malformed exercise marker, or an output folder that is not empty."""


@dataclass(frozen=True)
class Region:
    """Lines ``begin`` (the BEGIN marker) to ``end`` (the END marker), 0-based, of one exercise."""

    key: str
    begin: int
    end: int
    indent: str


def find_regions(text: str, name: str = "<text>") -> list[Region]:
    """The exercise regions of a source file, checked: known keys, no nesting, every BEGIN closed."""
    regions, open_ = [], None
    for i, line in enumerate(text.splitlines()):
        if m := BEGIN.match(line):
            if open_ is not None:
                raise AssignmentError(f"{name}:{i + 1}: BEGIN EXERCISE {m['key']} inside the region opened at "
                                      f"line {open_[1] + 1}")
            if m["key"] not in BY_KEY and m["key"] != SOLUTION_ONLY:
                raise AssignmentError(f"{name}:{i + 1}: unknown exercise {m['key']!r} (known: {', '.join(BY_KEY)}, "
                                      f"{SOLUTION_ONLY})")
            open_ = (m["key"], i, m["indent"])
        elif END.match(line):
            if open_ is None:
                raise AssignmentError(f"{name}:{i + 1}: END EXERCISE without a BEGIN")
            regions.append(Region(open_[0], open_[1], i, open_[2]))
            open_ = None
        elif MARKER.match(line):   # a near miss would leave its solution in the student edition
            raise AssignmentError(f"{name}:{i + 1}: malformed exercise marker {line.strip()!r}: write "
                                  "'# BEGIN EXERCISE <key>' or '# END EXERCISE', nothing else on the line")
    if open_ is not None:
        raise AssignmentError(f"{name}:{open_[1] + 1}: BEGIN EXERCISE {open_[0]} is never closed")
    return regions


def _replace_regions(text: str, body_for) -> str:
    lines = text.splitlines(keepends=True)
    out, last = [], 0
    for region in find_regions(text):
        out += lines[last:region.begin + 1]
        out += body_for(region)
        last = region.end
    return "".join(out + lines[last:])


def strip_solutions(text: str) -> str:
    """The student version of a source file: each region's body becomes the exercise's stub."""
    def stub(region: Region) -> list[str]:
        if region.key == SOLUTION_ONLY:
            return [f"{region.indent}raise NotImplementedError({NOT_IN_STUDENT_EDITION!r})\n"]
        ex = BY_KEY[region.key]
        return [f"{region.indent}# Your code here: replace the raise below (see {ex.label} in notebook {ex.notebook}).\n",
                f"{region.indent}raise NotImplementedError({ex.stub_message()!r})\n"]
    return _replace_regions(text, stub)


def fill_back(student_text: str, solution_text: str, keys: set[str] | None = None) -> str:
    """The student's file with the regions' bodies taken from the solution (those of ``keys``
    only, if given), region by region; the two files must have the same regions."""
    solution = solution_text.splitlines(keepends=True)
    theirs, ours = find_regions(solution_text), find_regions(student_text)
    if [r.key for r in theirs] != [r.key for r in ours]:
        raise AssignmentError(f"the files' exercise regions differ: {[r.key for r in ours]} vs {[r.key for r in theirs]}")
    student = student_text.splitlines(keepends=True)
    bodies = iter([solution[r.begin + 1:r.end] if keys is None or r.key in keys else student[o.begin + 1:o.end]
                   for r, o in zip(theirs, ours)])
    return _replace_regions(student_text, lambda region: next(bodies))


def exercise_files(root: Path = REPO_ROOT) -> dict[str, list[Path]]:
    """Exercise key -> the source files holding its regions (every exercise has at least one)."""
    found: dict[str, list[Path]] = {e.key: [] for e in EXERCISES}
    for path in sorted((root / "helpers").rglob("*.py")):
        for region in find_regions(path.read_text(encoding="utf-8"), str(path)):
            if region.key in found and path not in found[region.key]:
                found[region.key].append(path)
    missing = [k for k, files in found.items() if not files]
    if missing:
        raise AssignmentError(f"no region in helpers/ for exercise(s) {', '.join(missing)}")
    return found


def _workbook_files(root: Path) -> list[Path]:
    """The files of the workbook: git's (tracked, and new files it does not ignore) where there is
    a repository, else every file outside SKIP_DIRS."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, check=True, timeout=60)
        files = [root / p for p in listed.stdout.decode().split("\0") if p]
        return [p for p in files if p.is_file()]
    except (OSError, subprocess.SubprocessError):
        return [p for p in sorted(root.rglob("*")) if p.is_file()
                and not SKIP_DIRS & set(p.relative_to(root).parts[:-1])]


def clear_outputs(notebook: dict) -> dict:
    """A notebook without outputs, execution counts or widget state."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook.get("metadata", {}).pop("widgets", None)
    return notebook


def make_student_edition(out_dir: str | Path, root: Path = REPO_ROOT) -> list[Path]:
    """Write the student edition of the workbook at ``root`` into the empty or new ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AssignmentError(f"{out_dir} exists and is not an empty folder: choose a new one "
                              "(the student edition never overwrites anything)")
    exercise_files(root)   # every exercise has a region before anything is written
    written = []
    for src in _workbook_files(root):
        rel = src.relative_to(root)
        if rel.name.endswith(".failed.ipynb"):
            continue
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".py" and rel.parts[0] == "helpers":
            text = strip_solutions(src.read_text(encoding="utf-8"))
            for old, new in STUDENT_SETTINGS.get(rel.as_posix(), ()):
                if old not in text:
                    raise AssignmentError(f"{rel}: expected {old!r} to set the student edition's default")
                text = text.replace(old, new)
            compile(text, str(rel), "exec")   # a stub that does not parse would be a broken hand-out
            dst.write_text(text, encoding="utf-8")
        elif src.suffix == ".ipynb":
            nb = clear_outputs(json.loads(src.read_text(encoding="utf-8")))
            dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            shutil.copy2(src, dst)
        written.append(dst)
    (out_dir / "ASSIGNMENT.md").write_text(assignment_sheet(), encoding="utf-8")
    return written + [out_dir / "ASSIGNMENT.md"]


def assignment_sheet() -> str:
    """The hand-out's first page: the exercises, where to write them, how to check them."""
    rows = "\n".join(f"| {e.number} | {e.title} | {e.points} | `{e.where}` | `{e.notebook}.ipynb` |" for e in EXERCISES)
    total = sum(e.points for e in EXERCISES)
    return f"""# Assignment: refining coarse segmentations with spatial propagation

Write the code between `# BEGIN EXERCISE` and `# END EXERCISE` in `helpers/` (replace the
`raise NotImplementedError`); the docstrings above each region give the shapes and the update
rule. Each notebook has a check cell right after the exercise's explanation: run it until it
says *passed*. Later cells stop with the same one-line message until it does.

| # | exercise | points | where | notebook |
|---|---|---|---|---|
{rows}

Total: {total} points. Check everything at once with `python -m helpers grade .` (a table of
exercise, points, passed, message) or with `pytest --nbval notebooks/` as your grader will.
"""


# ------------------------------------------------------------------------------ grading
def submissions(path: str | Path) -> list[Path]:
    """One submission (a folder with ``helpers/``) or every such sub-folder of ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise AssignmentError(f"{path} is not a folder")
    if (path / "helpers").is_dir():
        return [path]
    found = sorted(p for p in path.iterdir() if (p / "helpers").is_dir())
    if not found:
        raise AssignmentError(f"{path} holds no submission: expected a helpers/ folder in it or in its sub-folders")
    return found


def grade_one(submission: Path, timeout: float = 120.0) -> list[Result]:
    """Grade one submission: fresh random inputs for every check; the submission's code runs on
    them in a subprocess with a time limit; its outputs (tensors only, loaded with
    ``weights_only=True``) are compared here with what the instructor's solution computes on the
    same inputs, and the points are this process's. Nothing the submission prints or writes
    decides its grade, and a table of the shipped reference outputs does not help."""
    from .exercises import _own_package, _package, draw_inputs, outcome, run_exercise

    grader = Path(__file__).resolve().with_name("exercises.py")
    seed = secrets.randbits(31)
    inputs = {e.key: draw_inputs(e.key, seed) for e in EXERCISES}
    solution = _package(_own_package())
    with tempfile.TemporaryDirectory(prefix="workbook-grade-") as tmp:
        inputs_file, out = Path(tmp) / "inputs.pt", Path(tmp) / "outputs.pt"
        torch.save(inputs, inputs_file)
        code = ("import importlib.util, sys\n"
                "spec = importlib.util.spec_from_file_location('workbook_grader', sys.argv[1])\n"
                "mod = importlib.util.module_from_spec(spec); sys.modules['workbook_grader'] = mod\n"
                "spec.loader.exec_module(mod)\n"
                "mod._worker(sys.argv[2], sys.argv[3], sys.argv[4])\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
        env.update(WORKBOOK_HEADLESS="1", OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-I", "-c", code, str(grader), str(submission.resolve()), str(inputs_file), str(out)]
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return _all_failed(f"the checks did not finish within {timeout:g} s (an endless loop, or work at import?)")
        try:
            produced = torch.load(out, map_location="cpu", weights_only=True)
        except Exception:   # no file, or one that is not plain tensors
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
    return [Result(e.key, e.number, e.title, 0, e.points, False, f"{e.label}: {why}") for e in EXERCISES]


def grade(path: str | Path, timeout: float = 120.0) -> dict:
    """Grades of every submission under ``path``: {"submissions": [{name, path, score, max_score, exercises}]}."""
    out = []
    for sub in submissions(path):
        results = grade_one(sub, timeout)
        out.append({"name": sub.resolve().name, "path": str(sub), "score": sum(r.points for r in results),
                    "max_score": sum(r.max_points for r in results), "exercises": [r.__dict__ for r in results]})
    return {"submissions": out}


def format_grades(doc: dict) -> str:
    """A plain-text table per submission: exercise, points, passed, message."""
    lines = []
    for sub in doc["submissions"]:
        lines.append(f"{sub['name']}: {sub['score']} / {sub['max_score']} points")
        lines.append(f"  {'exercise':36s} {'points':>7s}  passed  message")
        for r in sub["exercises"]:
            label = f"{r['number']} {r['title']}"
            detail = r["message"].removeprefix(f"Exercise {label[:len(str(r['number']))]} ({r['title']})").lstrip(": ")
            lines.append(f"  {label:36s} {r['points']:>3d} / {r['max_points']:<3d} {'yes' if r['passed'] else 'no ':6s}  "
                         f"{detail}")
    return "\n".join(lines)
