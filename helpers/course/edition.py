"""The two editions of the workbook.

The solution edition is this repository: every exercise region is marked in ``helpers/`` by
two comment lines, so it runs exactly as without them: a line ``# BEGIN EXERCISE`` followed by
the exercise's key (``cspn-step``) opens a region, a line ``# END EXERCISE`` closes it. Regions
keyed ``solution-only`` hold code that would give an exercise away (the fused step's set-up):
the student edition replaces them too, with a note instead of a hint.

* :func:`make_student_edition` (``python -m helpers assignment OUT``) copies the workbook and
  replaces each region by ``raise NotImplementedError("Exercise 5 (CSPN step): ... Hint: ...")``,
  keeping the markers, the signatures and the docstrings; the notebooks' outputs are cleared.
* :func:`fill_back` puts the solution back into a student's file (the round trip the tests use).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .catalogue import BY_KEY, EXERCISES, AssignmentError
from .sources import handout_excluded, workbook_files

BEGIN = re.compile(r"^(?P<indent>[ \t]*)# BEGIN EXERCISE (?P<key>[a-z0-9-]+)[ \t]*$")

END = re.compile(r"^[ \t]*# END EXERCISE[ \t]*$")

# anything that looks like one
MARKER = re.compile(r"^[ \t]*#\s*(BEGIN|END)\s+EXERCISE", re.IGNORECASE)

SOLUTION_ONLY = "solution-only"

NOT_IN_STUDENT_EDITION = (
    "not part of the student edition (it would give an exercise away); the workbook runs without it"
)

# settings that differ in the student edition: its propagators run the student's own gather, ring
# sums and steps (backend plain: the faster backends compute the exercises' answers and are not
# shipped)
STUDENT_SETTINGS = {
    "helpers/core/config.py": (
        ('propagation_backend: str = "auto"', 'propagation_backend: str = "plain"'),
    ),
    # a hand-out holds no solution to grade against: its `grade` uses the shipped references
    "helpers/course/sources.py": (('EDITION = "solution"', 'EDITION = "student"'),),
}


@dataclass(frozen=True)
class Region:
    """Lines ``begin`` (the BEGIN marker) to ``end`` (the END marker), 0-based, of one exercise."""

    key: str
    begin: int
    end: int
    indent: str


def find_regions(text: str, name: str = "<text>") -> list[Region]:
    """The exercise regions of a source file, checked: known keys, no nesting, every BEGIN
    closed."""
    regions, open_ = [], None
    for i, line in enumerate(text.splitlines()):
        if m := BEGIN.match(line):
            if open_ is not None:
                raise AssignmentError(
                    f"{name}:{i + 1}: BEGIN EXERCISE {m['key']} inside the region opened at "
                    f"line {open_[1] + 1}"
                )
            if m["key"] not in BY_KEY and m["key"] != SOLUTION_ONLY:
                raise AssignmentError(
                    f"{name}:{i + 1}: unknown exercise {m['key']!r} (known: {', '.join(BY_KEY)}, "
                    f"{SOLUTION_ONLY})"
                )
            open_ = (m["key"], i, m["indent"])
        elif END.match(line):
            if open_ is None:
                raise AssignmentError(f"{name}:{i + 1}: END EXERCISE without a BEGIN")
            regions.append(Region(open_[0], open_[1], i, open_[2]))
            open_ = None
        elif MARKER.match(line):  # a near miss would leave its solution in the student edition
            raise AssignmentError(
                f"{name}:{i + 1}: malformed exercise marker {line.strip()!r}: write "
                "'# BEGIN EXERCISE <key>' or '# END EXERCISE', nothing else on the line"
            )
    if open_ is not None:
        raise AssignmentError(f"{name}:{open_[1] + 1}: BEGIN EXERCISE {open_[0]} is never closed")
    return regions


def _replace_regions(text: str, body_for) -> str:
    lines = text.splitlines(keepends=True)
    out, last = [], 0
    for region in find_regions(text):
        out += lines[last : region.begin + 1]
        out += body_for(region)
        last = region.end
    return "".join(out + lines[last:])


def strip_solutions(text: str) -> str:
    """The student version of a source file: each region's body becomes the exercise's stub."""

    def stub(region: Region) -> list[str]:
        if region.key == SOLUTION_ONLY:
            return [f"{region.indent}raise NotImplementedError({NOT_IN_STUDENT_EDITION!r})\n"]
        ex = BY_KEY[region.key]
        return [
            f"{region.indent}# Your code here: replace the raise below (see {ex.label} in "
            f"notebook {ex.notebook}).\n",
            f"{region.indent}raise NotImplementedError({ex.stub_message()!r})\n",
        ]

    return _replace_regions(text, stub)


def fill_back(student_text: str, solution_text: str, keys: set[str] | None = None) -> str:
    """The student's file with the regions' bodies taken from the solution (those of ``keys``
    only, if given), region by region; the two files must have the same regions."""
    solution = solution_text.splitlines(keepends=True)
    theirs, ours = find_regions(solution_text), find_regions(student_text)
    if [r.key for r in theirs] != [r.key for r in ours]:
        raise AssignmentError(
            f"the files' exercise regions differ: {[r.key for r in ours]} vs "
            f"{[r.key for r in theirs]}"
        )
    student = student_text.splitlines(keepends=True)
    bodies = iter(
        [
            solution[r.begin + 1 : r.end]
            if keys is None or r.key in keys
            else student[o.begin + 1 : o.end]
            for r, o in zip(theirs, ours)
        ]
    )
    return _replace_regions(student_text, lambda region: next(bodies))


def solved_copy(
    student: Path, dest: Path, keys: set[str] | None = None, root: Path | None = None, ignore=None
) -> Path:
    """A copy of the student edition ``student`` at ``dest`` with the solution of the workbook at
    ``root`` (default: this one) put back into its regions (those of ``keys`` only, if given):
    a submission that solved those exercises (tests, benchmarks)."""
    files = workbook_files(root)
    shutil.copytree(student, dest, ignore=ignore)
    for path in (Path(dest) / "helpers").rglob("*.py"):
        solution = files[path.relative_to(dest).as_posix()].read_text(encoding="utf-8")
        path.write_text(
            fill_back(path.read_text(encoding="utf-8"), solution, keys), encoding="utf-8"
        )
    return Path(dest)


def exercise_files(root: Path | None = None) -> dict[str, list[Path]]:
    """Exercise key -> the source files holding its regions (every exercise has at least one)."""
    found: dict[str, list[Path]] = {e.key: [] for e in EXERCISES}
    for rel, path in workbook_files(root).items():
        if not rel.endswith(".py") or not rel.startswith("helpers/"):
            continue
        for region in find_regions(path.read_text(encoding="utf-8"), str(path)):
            if region.key in found and path not in found[region.key]:
                found[region.key].append(path)
    missing = [k for k, files in found.items() if not files]
    if missing:
        raise AssignmentError(f"no region in helpers/ for exercise(s) {', '.join(missing)}")
    return found


# text of the solution edition in a notebook's markdown, and what the student edition says instead:
# <!-- solution edition -->TEXT<!-- student edition: TEXT FOR STUDENTS -->
EDITION_TEXT = re.compile(r"<!-- solution edition -->.*?<!-- student edition: (.*?) -->", re.S)


def student_text(notebook: dict) -> dict:
    """The notebook's markdown as the student edition says it."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            text = "".join(cell["source"])
            cell["source"] = EDITION_TEXT.sub(lambda m: m.group(1), text).splitlines(keepends=True)
    return notebook


def clear_outputs(notebook: dict) -> dict:
    """A notebook without outputs, execution counts or widget state."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    notebook.get("metadata", {}).pop("widgets", None)
    return notebook


def make_student_edition(out_dir: str | Path, root: Path | None = None) -> list[Path]:
    """Write the student edition of the workbook at ``root`` (default: this checkout, or the
    installed wheel's copy) into the empty or new ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise AssignmentError(
            f"{out_dir} exists and is not an empty folder: choose a new one "
            "(the student edition never overwrites anything)"
        )
    exercise_files(root)  # every exercise has a region before anything is written
    written = []
    for rel, src in workbook_files(root).items():
        if handout_excluded(rel):
            continue
        rel = Path(rel)
        if rel.name.endswith(".failed.ipynb"):
            continue
        dst = out_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".py" and rel.parts[0] == "helpers":
            text = strip_solutions(src.read_text(encoding="utf-8"))
            for old, new in STUDENT_SETTINGS.get(rel.as_posix(), ()):
                if old not in text:
                    raise AssignmentError(
                        f"{rel}: expected {old!r} to set the student edition's default"
                    )
                text = text.replace(old, new)
            compile(text, str(rel), "exec")  # a stub that does not parse would be a broken hand-out
            dst.write_text(text, encoding="utf-8")
        elif src.suffix == ".ipynb":
            nb = student_text(clear_outputs(json.loads(src.read_text(encoding="utf-8"))))
            dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            shutil.copy2(src, dst)
        written.append(dst)
    (out_dir / "ASSIGNMENT.md").write_text(assignment_sheet(), encoding="utf-8")
    (out_dir / "README.md").write_text(student_readme(), encoding="utf-8")
    return written + [out_dir / "ASSIGNMENT.md", out_dir / "README.md"]


def student_readme() -> str:
    """The hand-out's README, for students (``student_readme.md`` with the exercises filled in)."""
    rows = "\n".join(
        f"| {e.number} | {e.title} | {e.points} | `{e.notebook}.ipynb` |" for e in EXERCISES
    )
    template = Path(__file__).with_name("student_readme.md").read_text(encoding="utf-8")
    return template.format(rows=rows, total=sum(e.points for e in EXERCISES), count=len(EXERCISES))


def assignment_sheet() -> str:
    """The hand-out's first page: the exercises, where to write them, how to check them."""
    rows = "\n".join(
        f"| {e.number} | {e.title} | {e.points} | `{e.where}` | `{e.notebook}.ipynb` |"
        for e in EXERCISES
    )
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
