"""The hand-out as students and graders meet it: whatever folder a notebook runs in, it runs that
folder's code, never a copy of the workbook installed elsewhere on the machine (the instructor's
solution, typically), and it says so in one line when it cannot."""

import shutil
from pathlib import Path

import nbformat
from handouts import run_cells

ROOT = Path(__file__).resolve().parents[1]


def _setup_cell(workbook: Path) -> str:
    nb = nbformat.read(workbook / "notebooks" / "01_coarse_unet.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_a_hand_outs_notebook_imports_the_hand_outs_helpers(student, tmp_path):
    """The solution is installed on the grader's machine (this checkout, editable): a blank
    hand-out's notebook must still run the hand-out's own code, silently."""
    handout = shutil.copytree(student, tmp_path / "handout")
    outputs = run_cells(
        [_setup_cell(handout), "import helpers; print(helpers.__file__)"], handout / "notebooks"
    )
    assert outputs[0] == []  # the first cell stays silent
    assert Path(outputs[1][0]["text"].strip()).parent == handout / "helpers"


def test_a_kernel_holding_another_copy_says_so_in_one_line(student, tmp_path):
    handout = shutil.copytree(student, tmp_path / "handout")
    stale = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import helpers"
    outputs = run_cells([stale, _setup_cell(handout)], handout / "notebooks")
    lines = "".join(o.get("text", "") for o in outputs[1]).splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"note: this kernel imported helpers from {ROOT}"
    )
    assert "restart the kernel" in lines[0]


def test_a_students_own_grade_checks_against_the_references_not_itself(student, tmp_path):
    """`python -m helpers grade .` in a student's copy: no solution is there, so it must compare
    with the shipped reference outputs, right parts earning their points, no traceback."""
    import json
    import os
    import subprocess
    import sys

    from handouts import fill

    copy = fill(student, tmp_path / "mine", keys={"miou", "cspn-step", "dyspn-step"})
    prop = copy / "helpers" / "models" / "propagation" / "propagators.py"
    right = "G = (p[:, : self.rings] * A).sum(1, keepdim=True) + p[:, self.rings :] + EPS"
    assert right in prop.read_text()
    prop.write_text(prop.read_text().replace(right, right.replace(" + EPS", " * 1.1 + EPS")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
    out = subprocess.run(
        [sys.executable, "-m", "helpers", "grade", ".", "--json", "g.json"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "shipped reference inputs" in out.stdout
    points = {
        r["key"]: r
        for r in json.loads((copy / "g.json").read_text())["submissions"][0]["exercises"]
    }
    assert points["miou"]["points"] == 10 and points["cspn-step"]["points"] == 15
    # the ring magnitudes are right (5 of 25 points); the steps are not
    dyspn = points["dyspn-step"]
    assert dyspn["points"] == 5 and not dyspn["passed"] and "relative error" in dyspn["message"]
    assert points["unet-up"]["points"] == 0 and "not done yet" in points["unet-up"]["message"]


def test_a_failing_check_says_where_the_largest_difference_is():
    """Not just "relative error 0.17": the iteration, the pixel, border or inside, both values."""
    import pytest
    import torch

    from helpers.course.compare import Mismatch, close

    want = torch.zeros(3, 2, 1, 6, 7, dtype=torch.float64)  # D^1..D^3 of a batch of 2
    border, inside = want.clone(), want.clone()
    border[1, 0, 0, 5, 3] = 0.5
    inside[2, 1, 0, 2, 3] = -0.25
    with pytest.raises(Mismatch) as exc:
        close("D^1..D^3", border, want + 1e-3, steps_axis=0)
    assert "t = 2, pixel (y=5, x=3) on the border of 6 x 7" in str(exc.value)
    assert "0.5 instead of 0.001" in str(exc.value)
    with pytest.raises(Mismatch, match=r"t = 3, pixel \(y=2, x=3\) inside the map"):
        close("D^1..D^3", inside, want + 1e-3, steps_axis=0)


def test_a_check_after_an_edit_asks_for_a_restart_instead_of_checking_old_code(student, tmp_path):
    """A student fixes propagators.py while the kernel holds the old module: the check must not
    grade the old code (pass or fail); it says which file changed and to restart the kernel."""
    from handouts import fill

    copy = fill(student, tmp_path / "mine")
    edit = (
        "import pathlib\np = pathlib.Path('helpers/models/propagation/propagators.py')\n"
        "p.write_text(p.read_text() + '\\n# edited in the editor\\n')"
    )
    outputs = run_cells(
        [
            "from helpers import colab, exercises\n_ = colab.setup()",
            "from helpers import CSPN",
            'exercises.check("cspn-step")',
            edit,
            'exercises.check("cspn-step")',
        ],
        copy,
        allow_errors=True,
    )
    assert "passed" in outputs[2][0]["text"]
    error = [o for o in outputs[4] if o["output_type"] == "error"][0]
    assert error["ename"] == "ExerciseFailed" and len(error["traceback"]) == 1
    assert error["evalue"].startswith(
        "helpers/models/propagation/propagators.py changed after "
        "this kernel loaded it: restart the kernel"
    )


SOLUTION_TEXT = (
    "solution edition",
    "here it is the solution",
    "this repository is the",
    # expressions that would compute an exercise's answer
    "ring_sums(d, kappa",
    "ring_sums(d, pos",
    "target * c + pred",
)


def test_the_hand_out_speaks_to_students_not_to_the_instructor(student):
    """A student opening the hand-out reads their README, their notebooks and their code: none of
    it may say it is the solution, and the instructor's tools are not shipped."""
    readme = (student / "README.md").read_text(encoding="utf-8")
    assert readme.startswith(
        "# Refining coarse segmentations with spatial propagation: the assignment"
    )
    assert "python -m helpers grade ." in readme and "pip install -r requirements.txt" in readme
    found = []
    for path in sorted(
        p
        for p in student.rglob("*")
        if p.is_file() and p.suffix in (".md", ".py", ".ipynb", ".txt", ".toml")
    ):
        text = path.read_text(encoding="utf-8").lower()
        found += [
            f"{path.relative_to(student)}: {phrase!r}" for phrase in SOLUTION_TEXT if phrase in text
        ]
    assert not found, found
    for tool in ("edition.py", "gradescope.py", "autograder", "student_readme.md"):
        assert not (student / "helpers" / "course" / tool).exists(), tool


def test_a_missing_variable_is_blamed_on_the_exercise_that_stopped_its_cell(student, tmp_path):
    """Notebook 02's training cell stops at exercise 4; a later cell missing ``coarse``, which an
    earlier cell stopped by exercise 1 never made, must name exercise 1, not the latest one."""
    outputs = run_cells(
        [
            "from helpers import colab, exercises\n_ = colab.setup()",
            'exercises.require("miou")\ncoarse = 1',
            'exercises.require("cspn-affinity")\ncspn = 2',
            "coarse + 1",
            "cspn + 1",
        ],
        student,
        allow_errors=True,
    )
    coarse = [o for o in outputs[3] if o["output_type"] == "error"][0]["traceback"][0]
    cspn = [o for o in outputs[4] if o["output_type"] == "error"][0]["traceback"][0]
    assert coarse.endswith(
        "because an earlier cell stopped: Exercise 1 (mIoU) is not done yet: "
        "write it in helpers/analysis/metrics.py, confusion_matrix and "
        "iou_per_class"
    ), coarse
    assert "stopped: Exercise 4 (CSPN affinity normalisation)" in cspn, cspn


def test_pytest_nbval_on_a_blank_hand_out_fails_only_its_exercises_each_in_one_line(
    student, tmp_path
):
    """A grader's command on a blank hand-out (the solution installed beside it): the notebooks'
    cells that need no exercise pass; every failing cell is one line naming an exercise."""
    import os
    import re
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    handout = shutil.copytree(student, tmp_path / "handout")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "notebooks",
            "-q",
            "-p",
            "no:cacheprovider",
            "--junitxml",
            str(tmp_path / "j.xml"),
        ],
        cwd=handout,
        env={**env, "MPLBACKEND": "Agg"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 1, out.stdout[-2000:]
    passed, failed = [], []
    for case in ET.parse(tmp_path / "j.xml").getroot().iter("testcase"):
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        name = f"{case.get('classname').split('.')[-2]} {case.get('name')}"
        if problem is None:
            passed.append(name)
            continue
        # colour codes (junit writes ESC as "#x1B")
        shown = re.sub(r"(\x1b|#x1B)\[[0-9;]*m", "", (problem.text or "").split("Traceback:")[-1])
        lines = [ln for ln in shown.strip().splitlines() if ln.strip()]
        failed.append((name, lines))
    firsts = {f"{nb.stem} Cell 0" for nb in (handout / "notebooks").glob("0*.ipynb")}
    assert firsts <= set(passed), passed  # the set-up cells
    assert sum(n.startswith("00_data") for n in passed) == 5  # the data notebook needs nothing
    one_line = re.compile(
        r"^(ExerciseFailed: Exercise \d|NotImplementedError: Exercise \d|"
        r"NameError: .*, because an earlier cell stopped: Exercise \d)"
    )
    for name, lines in failed:
        assert len(lines) == 1 and one_line.match(lines[0]), (name, lines)


def test_hints_come_in_tiers_and_no_tier_gives_code():
    import pytest

    from helpers.course.catalogue import EXERCISES
    from helpers.course.notebook import hint

    code = (
        "ring_sums",
        "bincount",
        "torch.",
        "F.",
        "[:,",
        "self.coarse.eval",
        "split(",
        "interpolate",
        "cat(",
        "pad(",
        "neighbour_values",
        "prepare_affinity(",
    )
    for e in EXERCISES:
        first, second = e.hint(1), e.hint(2)
        assert first and second and first != second
        assert first in e.stub_message() and second not in e.stub_message()
        assert f"exercises.hint({e.key!r}, 2)" in e.stub_message()
        given = [c for c in code if c in first + second]
        assert not given, (e.key, given)
        assert hint(e.number, 2).endswith(second)
    with pytest.raises(ValueError, match="tiers 1 and 2"):
        EXERCISES[0].hint(3)


def test_a_broken_student_file_costs_only_the_exercises_that_need_it(student, tmp_path):
    """A syntax error in the student's propagators.py: the first cell's and the check cells'
    imports still work (the package's names are lazy), exercise 1's check still runs and passes,
    and the CSPN checks fail in one line naming the file; the grader agrees."""
    import os
    import subprocess
    import sys

    from handouts import fill

    from helpers.course import grading

    copy = fill(student, tmp_path / "broken", keys={"miou"})
    prop = copy / "helpers" / "models" / "propagation" / "propagators.py"
    prop.write_text(prop.read_text() + "\ndef oops(:\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
    script = (
        "from helpers import colab, exercises, viz\n"
        "from helpers.course.checking import check_one\n"
        "print(check_one('miou').message)\nprint(check_one('cspn-step').message)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    miou, cspn = out.stdout.strip().splitlines()
    assert miou.startswith("Exercise 1 (mIoU): passed")
    assert (
        cspn.startswith("Exercise 5 (CSPN step) failed: SyntaxError") and "propagators.py" in cspn
    )
    graded = {r.key: r for r in grading.grade_one(copy)}
    assert graded["miou"].points == 10 and graded["cspn-step"].points == 0
    assert "SyntaxError" in graded["cspn-step"].message
