"""The hand-out as students and graders meet it: whatever folder a notebook runs in, it runs that
folder's code, never a copy of the workbook installed elsewhere on the machine (the instructor's
solution, typically), and it says so in one line when it cannot."""

import shutil
from pathlib import Path

import nbformat
from handouts import fill, run_cells

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

    copy = fill(
        student,
        tmp_path / "mine",
        keys={"miou", "neighbours", "cspn-step", "ring-sums", "dyspn-step"},
    )
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
    # expressions and names that would compute an exercise's answer (lower case: the scan is)
    "gather(d, self.kernel)",
    "gather(h0, self.kernel)",
    "ring_sums(d, pos",
    "target * c + pred",
    "* num_classes + pred",
    "f.pad(x, (r, r, r, r))",
    "torch.split(weighted",
    "_ringsums",
    "from .kernels import",
    "from .fast import",
    "fused_step(d",
    "f.unfold(",
    "max_pool2d(outside",
)
# the modules that compute answers faster or another way: not in the hand-out at all
ANSWER_MODULES = ("fast.py", "kernels.py", "reference.py")


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
    for module in ANSWER_MODULES:
        assert not (student / "helpers" / "models" / "propagation" / module).exists(), module


def test_a_students_propagators_run_the_students_own_gather_and_ring_sums(student, tmp_path):
    """The hand-out's CSPN and DySPN read neighbours with the student's ``gather`` and sum rings
    with the student's ``ring_sums`` (its only backend is ``plain``), forward and backward, on the
    configured backend; solved, they compute what the solution does."""
    import os
    import subprocess
    import sys

    import torch

    from helpers.models.propagation import CSPN, DySPN

    copy = fill(student, tmp_path / "mine")
    path = copy / "helpers" / "models" / "propagation" / "neighbours.py"
    text = path.read_text()
    for key in ("neighbours", "ring-sums"):  # count the calls of the student's two functions
        marker = f"    # BEGIN EXERCISE {key}\n"
        assert marker in text
        text = text.replace(marker, marker + f"    CALLS.append({key!r})\n")
    path.write_text(text.replace("\n\ndef gather(", "\n\nCALLS = []\n\n\ndef gather(", 1))
    gen = torch.Generator().manual_seed(0)
    h0 = torch.softmax(torch.randn(2, 2, 9, 10, generator=gen), 1)
    aff8, aff48 = torch.randn(2, 8, 9, 10, generator=gen), torch.randn(2, 48, 9, 10, generator=gen)
    att = torch.randn(2, 6 * 4, 9, 10, generator=gen)
    torch.save({"h0": h0, "aff8": aff8, "aff48": aff48, "att": att}, tmp_path / "in.pt")
    script = (
        "import torch\n"
        "from helpers.core.config import Config\n"
        "from helpers.models.propagation import CSPN, DySPN, base, neighbours\n"
        "x = torch.load('in.pt')\n"
        "backend = Config().propagation_backend\n"
        "assert backend == 'plain' and not base.HAS_FAST_PATH, backend\n"
        "out = {}\n"
        "for name, model, args in (('cspn', CSPN(6, backend='auto'), (x['aff8'],)),\n"
        "                          ('dyspn', DySPN(6, backend=backend), (x['aff48'], x['att']))):\n"
        "    neighbours.CALLS.clear()\n"
        "    aff = args[0].clone().requires_grad_()\n"
        "    final = model(x['h0'], aff, *args[1:]).final\n"
        "    (final[:, 1] ** 2).sum().backward()\n"
        "    out[name] = (final.detach(), aff.grad, sorted(set(neighbours.CALLS)))\n"
        "torch.save(out, 'out.pt')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = torch.load(tmp_path / "out.pt")
    assert out["cspn"][2] == ["neighbours"]  # CSPN: the gather only (exercise 8 comes later)
    assert out["dyspn"][2] == ["neighbours", "ring-sums"]
    for name, model, args in (("cspn", CSPN(6), (aff8,)), ("dyspn", DySPN(6), (aff48, att))):
        aff = args[0].clone().requires_grad_()
        final = model(h0, aff, *args[1:]).final
        (final[:, 1] ** 2).sum().backward()
        torch.testing.assert_close(out[name][0], final.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(out[name][1], aff.grad, atol=1e-5, rtol=1e-5)


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
        cspn.startswith("Exercise 6 (CSPN step) failed: SyntaxError") and "propagators.py" in cspn
    )
    graded = {r.key: r for r in grading.grade_one(copy)}
    assert graded["miou"].points == 10 and graded["cspn-step"].points == 0
    assert "SyntaxError" in graded["cspn-step"].message
