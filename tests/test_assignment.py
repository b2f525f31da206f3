"""The assignment edition: markers, the student edition, the checks and the grader.

The student edition is generated once per session (a few seconds); every grading runs in a
subprocess, as an instructor's would.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from handouts import fill, run_cells

from helpers.course import checking, edition, grading, notebook
from helpers.course.catalogue import EXERCISES
from helpers.course.compare import rel_error
from helpers.course.edition import (
    AssignmentError,
    fill_back,
    find_regions,
    make_student_edition,
    strip_solutions,
)
from helpers.course.sources import handout_excluded

ROOT = Path(__file__).resolve().parents[1]


_fill = fill


def _by_key(results) -> dict:
    return {r["key"] if isinstance(r, dict) else r.key: r for r in results}


# ------------------------------------------------------------------------------ the markers
def test_every_exercise_has_a_region_and_the_solution_passes_every_check():
    files = edition.exercise_files(ROOT)
    assert set(files) == {e.key for e in EXERCISES}
    results = checking.run_checks()
    assert [r.key for r in results if not r.passed] == [], [
        r.message for r in results if not r.passed
    ]
    assert sum(r.points for r in results) == sum(e.points for e in EXERCISES) == 130


def test_references_are_those_of_the_current_solution(tmp_path):
    """`python -m helpers references` would write what is committed (else a check tests stale
    outputs)."""
    fresh = checking.load_references(checking.make_references(path=tmp_path / "refs.pt"))
    committed = checking.load_references()

    def compare(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                compare(a[k], b[k], f"{where}/{k}")
        else:
            assert a.dtype == b.dtype and a.shape == b.shape, where
            assert rel_error(a, b) < 1e-5, where

    compare(fresh, committed, "references")


def test_markers_are_checked():
    with pytest.raises(AssignmentError, match="never closed"):
        find_regions("    # BEGIN EXERCISE miou\n    x = 1\n")
    with pytest.raises(AssignmentError, match="unknown exercise 'nope'"):
        find_regions("# BEGIN EXERCISE nope\n# END EXERCISE\n")
    with pytest.raises(AssignmentError, match="inside the region"):
        find_regions(
            "# BEGIN EXERCISE miou\n# BEGIN EXERCISE unet-up\n# END EXERCISE\n# END EXERCISE\n"
        )
    with pytest.raises(AssignmentError, match="without a BEGIN"):
        find_regions("x = 1\n# END EXERCISE\n")
    for near_miss in (
        "    # BEGIN EXERCISE cspn_step\n",
        "# BEGIN EXERCISE miou (see notebook 01)\n",
        "#begin exercise miou\n",
    ):
        with pytest.raises(AssignmentError, match="malformed exercise marker"):
            find_regions(near_miss)


def test_a_stub_keeps_the_markers_and_indentation_and_raises_the_exercise_message():
    text = (
        "def f(x):\n    \"\"\"doc\"\"\"\n    # BEGIN EXERCISE cspn-step\n    return x + 1\n    "
        "# END EXERCISE\n"
    )
    stub = strip_solutions(text)
    assert (
        "return x + 1" not in stub and "# BEGIN EXERCISE cspn-step" in stub and '"""doc"""' in stub
    )
    namespace = {}
    exec(compile(stub, "stub", "exec"), namespace)
    with pytest.raises(
        NotImplementedError,
        match=r"^Exercise 6 \(CSPN step\): not done yet: write it in "
        r"helpers/models/propagation/propagators.py, CSPN.base and CSPN.step. Hint: ",
    ):
        namespace["f"](1)
    assert fill_back(stub, text) == text


# ------------------------------------------------------------------------------ the student edition
def test_student_edition_strips_every_solution_and_clears_outputs(student):
    assert (student / "ASSIGNMENT.md").read_text().count("| ") >= 9 * 5
    for key, files in edition.exercise_files(ROOT).items():
        for path in files:
            mine = (student / path.relative_to(ROOT)).read_text(encoding="utf-8")
            solution = path.read_text(encoding="utf-8")
            regions = [r for r in find_regions(mine) if r.key == key]
            lines = mine.splitlines()
            for r in regions:
                body = lines[r.begin + 1 : r.end]
                assert len(body) == 2 and body[1].strip().startswith(
                    "raise NotImplementedError("
                ), body
            assert mine != solution
    # every notebook travels (an empty folder would leave the checks below with nothing to check)
    assert sorted(p.name for p in (student / "notebooks").glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("*.ipynb")
    )
    for nb_path in (student / "notebooks").glob("*.ipynb"):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        assert all(
            c.get("outputs", []) == [] and c.get("execution_count") is None
            for c in nb["cells"]
            if c["cell_type"] == "code"
        ), nb_path.name
        assert "widgets" not in nb["metadata"]
    # nothing local travels: no runs, downloaded data, caches or git metadata (data/README.md does)
    assert (
        not any((student / d).exists() for d in ("runs", ".git"))
        and (student / "data" / "README.md").is_file()
    )
    assert [p.name for p in (student / "data").iterdir()] == ["README.md"]
    assert not list(student.rglob("__pycache__"))


def test_student_edition_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(AssignmentError, match="not an empty folder"):
        make_student_edition(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_filling_the_regions_back_gives_the_solution_byte_for_byte(student, tmp_path):
    filled = _fill(student, tmp_path / "filled")
    for path in (ROOT / "helpers").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel in edition.STUDENT_SETTINGS or handout_excluded(rel):
            continue
        assert (filled / rel).read_bytes() == path.read_bytes(), path.name


def test_the_student_edition_trains_with_the_students_propagation_step(student):
    """The student edition's configured backend is ``plain``, the students' own gather, ring sums
    and steps (test_handout runs them); the faster backends are not shipped."""
    config = (student / "helpers" / "core" / "config.py").read_text()
    assert (
        'propagation_backend: str = "plain"' in config
        and 'propagation_backend: str = "auto"' not in config
    )


# ------------------------------------------------------------------------------ grading
def test_the_student_edition_fails_exactly_the_exercise_checks_each_named(student):
    results = grading.grade_one(student, timeout=300)
    assert [r.key for r in results] == [e.key for e in EXERCISES]
    for r, e in zip(results, EXERCISES):
        assert not r.passed and r.points == 0 and r.max_points == e.points
        assert r.message.startswith(e.label), r.message
        assert "not done yet" in r.message or "needs Exercise" in r.message, r.message


def test_filled_back_submission_gets_full_marks_and_partial_ones_only_their_exercises(
    student, tmp_path
):
    _fill(student, tmp_path / "subs" / "alice")
    _fill(
        student,
        tmp_path / "subs" / "bob",
        keys={"neighbours", "cspn-step", "boundary-band", "refiner-loss"},
    )
    doc = grading.grade(tmp_path / "subs", timeout=300)
    subs = {s["name"]: s for s in doc["submissions"]}
    assert subs["alice"]["score"] == subs["alice"]["max_score"] == 130
    bob = _by_key(subs["bob"]["exercises"])
    assert {k for k, r in bob.items() if r["passed"]} == {
        "neighbours",
        "cspn-step",
        "boundary-band",
        "refiner-loss",
    }
    assert subs["bob"]["score"] == 15 + 15 + 10 + 15
    table = grading.format_grades(doc)
    assert "alice: 130 / 130 points" in table and "bob: 55 / 130 points" in table


def test_a_wrong_solution_fails_its_check_with_what_differs(student, tmp_path):
    sub = _fill(student, tmp_path / "wrong")
    helpers = sub / "helpers"
    bugs = {
        # CSPN step without the neighbour sum; DySPN normalised without the pixel's own attention
        "models/propagation/propagators.py": [
            (
                "return base + (kappa[:, None] * gather(d, self.kernel)).sum(2)",
                "return base + 0 * d",
            ),
            (
                "G = (p[:, : self.rings] * A).sum(1, keepdim=True) + p[:, self.rings :] + EPS",
                "G = (p[:, : self.rings] * A).sum(1, keepdim=True) + EPS",
            ),
        ],
        # the coarse net left in train mode: its BatchNorm statistics would drift
        "models/refiner.py": [("        self.coarse.eval()  # frozen", "        pass  # frozen")],
        # IoU without subtracting the intersection from the union
        "analysis/metrics.py": [
            ("union = cm.sum(0) + cm.sum(1) - tp", "union = cm.sum(0) + cm.sum(1)")
        ],
    }
    for name, edits in bugs.items():
        text = (helpers / name).read_text()
        for right, wrong in edits:
            assert right in text, f"{name} no longer holds {right!r}: update this test"
            text = text.replace(right, wrong)
        (helpers / name).write_text(text)
    results = _by_key(grading.grade_one(sub, timeout=300))
    assert (
        not results["cspn-step"].passed
        and "D^1..D^3 of three steps differs" in results["cspn-step"].message
    )
    assert (
        not results["dyspn-step"].passed
        and "differs from the reference" in results["dyspn-step"].message
    )
    assert (
        not results["refiner-loss"].passed
        and "coarse net must be in eval mode" in results["refiner-loss"].message
    )
    assert (
        not results["miou"].passed
        and "iou_per_class (2 classes) differs" in results["miou"].message
    )
    assert {k for k, r in results.items() if r.passed} == {
        "boundary-band",
        "unet-up",
        "cspn-affinity",
        "neighbours",
        "ring-sums",
    }


def test_a_gradient_broken_by_detach_fails_gradcheck(student, tmp_path):
    sub = _fill(student, tmp_path / "detached")
    prop = sub / "helpers" / "models" / "propagation" / "propagators.py"
    prop.write_text(
        prop.read_text().replace(
            "return base + (kappa[:, None] * gather(d, self.kernel)).sum(2)",
            "return base + (kappa[:, None] * gather(d.detach(), self.kernel)).sum(2)",
        )
    )
    result = _by_key(grading.grade_one(sub, timeout=300))["cspn-step"]
    assert not result.passed and "the gradient of" in result.message and "differs" in result.message
    # in a notebook the same bug also fails the finite-difference gradcheck
    import importlib.util
    import sys
    from types import SimpleNamespace

    from helpers.course.checking import _gradcheck_cspn
    from helpers.course.compare import Mismatch as _Mismatch

    spec = importlib.util.spec_from_file_location("helpers.models.propagation.detached", prop)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    with pytest.raises(_Mismatch, match="gradcheck of CSPN.step failed"):
        _gradcheck_cspn(SimpleNamespace(propagation=module))


def test_grading_stops_a_submission_that_never_finishes(student, tmp_path):
    sub = _fill(student, tmp_path / "loop")
    init = sub / "helpers" / "__init__.py"
    init.write_text(init.read_text() + "\nwhile True:\n    pass\n")
    results = grading.grade_one(sub, timeout=3)
    assert all(not r.passed and "did not finish importing within 3 s" in r.message for r in results)


def test_grade_refuses_a_folder_without_submissions(tmp_path):
    with pytest.raises(AssignmentError, match="holds no submission"):
        grading.grade(tmp_path)


def test_the_grader_uses_its_own_checks_not_the_submissions(student, tmp_path):
    """A submission that edits its copy of the checks to always pass still gets no points."""
    sub = shutil.copytree(student, tmp_path / "cheat")
    ex = sub / "helpers" / "course" / "checking.py"
    ex.write_text(
        ex.read_text().replace("def check_one(", "def _real_check_one(")
        + (
            "\n\ndef check_one(key, pkg=None, refs=None):\n"
            "    e = lookup(key)\n"
            "    return Result(e.key, e.number, e.title, e.points, e.points, True, 'passed')\n"
        )
    )
    assert all(not r.passed for r in grading.grade_one(sub, timeout=300))


# ------------------------------------------------------------------------------ in a notebook
def test_a_failing_check_cell_is_one_line_and_later_cells_repeat_it(student):
    outputs = run_cells(
        [
            "from helpers import colab, exercises\n_ = colab.setup()",
            'exercises.check("cspn-step")',
            'exercises.require("cspn-step")\nrefined = 1',
            "refined + 1",
            "raise NotImplementedError('not an exercise')",
        ],
        student,
        allow_errors=True,
    )
    errors = [[o for o in out if o["output_type"] == "error"] for out in outputs]
    assert errors[0] == []
    for i in (1, 2, 3):
        assert len(errors[i]) == 1 and len(errors[i][0]["traceback"]) == 1, errors[i]
    assert errors[1][0]["ename"] == "ExerciseFailed"
    assert errors[1][0]["evalue"].startswith(
        "Exercise 6 (CSPN step) is not done yet: write it in "
        "helpers/models/propagation/propagators.py"
    )
    assert errors[2][0]["evalue"] == errors[1][0]["evalue"]
    assert errors[3][0]["ename"] == "NameError"
    assert errors[3][0]["traceback"][0].endswith(
        "because an earlier cell stopped: " + errors[1][0]["evalue"]
    )
    assert len(errors[4][0]["traceback"]) > 1  # any other error keeps its traceback


def test_check_prints_the_relative_error_and_leaves_the_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    result = notebook.check("dyspn-step")
    assert result.passed and torch.equal(torch.rand(3), expected)
    out = capsys.readouterr().out
    assert (
        out.startswith("Exercise 9 (DySPN ring attention and step): passed")
        and "relative error" in out
        and "gradcheck passed" in out
    )


def test_a_submission_cannot_forge_its_grade(student, tmp_path):
    """Code in a submission runs in the grading subprocess and can replace anything there; here it
    answers every check with the shipped reference outputs (a lookup table). The grader draws
    fresh inputs and compares in its own process: no points."""
    sub = shutil.copytree(student, tmp_path / "forger")
    init = sub / "helpers" / "__init__.py"
    init.write_text(
        init.read_text()
        + (
            "\nimport sys as _sys, torch as _torch\nfrom pathlib import Path as _Path\n"
            "_grader = _sys.modules.get('workbook_grader.worker')\n"
            "if _grader is not None:\n"
            "    _refs = _torch.load(_Path(__file__).parent / 'course' / 'references.pt', "
            "weights_only=True)\n"
            "    _grader.attempt = lambda key, pkg, inputs: (_refs[key]['outputs'], None)\n"
        )
    )
    results = grading.grade_one(sub, timeout=300)
    assert sum(r.points for r in results) == 0
    assert all(
        "differs from the reference" in r.message for r in results if r.key != "refiner-loss"
    )


def test_a_missing_file_is_not_graded_with_the_installed_solution(student, tmp_path):
    """The workbook is installed (editable) on the grader's machine: a submission without
    helpers/metrics.py must not be given the instructor's copy of it."""
    sub = _fill(student, tmp_path / "incomplete")
    (sub / "helpers" / "analysis" / "metrics.py").unlink()
    results = {r.key: r for r in grading.grade_one(sub, timeout=300)}
    needing = {"miou", "boundary-band", "refiner-loss"}  # the refiner's loss reads the band
    for key in needing:
        assert results[key].points == 0, results[key].message
        assert "helpers.analysis.metrics" in results[key].message or "metrics.py" in (
            results[key].message
        ), results[key].message
    # the exercises that do not need the file keep their points: one missing file costs only them
    assert all(r.passed for k, r in results.items() if k not in needing)


def test_the_one_line_name_error_ends_with_the_next_clean_cell(student):
    outputs = run_cells(
        [
            "from helpers import colab, exercises\n_ = colab.setup()",
            'exercises.check("miou")',
            "x = 1",
            "undefined_name + 1",
        ],
        student,
        allow_errors=True,
    )
    error = [o for o in outputs[3] if o["output_type"] == "error"][0]
    assert error["ename"] == "NameError" and len(error["traceback"]) > 1  # its own traceback again
