"""The Gradescope autograder, run as Gradescope runs it: the zip unpacked in a root folder's
source/, a submission in its submission/, `run_autograder` writing results/results.json."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from handouts import fill

from helpers.cli.main import main
from helpers.course.catalogue import EXERCISES

GRADESCOPE_TEST_KEYS = {"name", "number", "score", "max_score", "output", "visibility"}


@pytest.fixture(scope="module")
def autograder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gradescope") / "autograder.zip"
    assert main(["autograder", str(out)]) == 0
    return out


def _run_autograder(autograder: Path, root: Path) -> dict:
    with zipfile.ZipFile(autograder) as zf:
        zf.extractall(root / "source")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
    env.update(AUTOGRADER_ROOT=str(root), PYTHON=sys.executable)
    out = subprocess.run(
        ["bash", str(root / "source" / "run_autograder")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    return json.loads((root / "results" / "results.json").read_text())


def test_the_autograder_zip_holds_the_grader_and_gradescopes_two_scripts(autograder):
    names = zipfile.ZipFile(autograder).namelist()
    assert {
        "setup.sh",
        "run_autograder",
        "pyproject.toml",
        "helpers/__init__.py",
        "helpers/course/references.pt",
    } <= set(names)
    info = zipfile.ZipFile(autograder).getinfo("run_autograder")
    assert (info.external_attr >> 16) & 0o111  # executable once unpacked


def test_run_autograder_writes_gradescopes_results(autograder, student, tmp_path):
    root = tmp_path / "autograder"
    fill(student, root / "submission", keys={"miou", "neighbours", "cspn-step"})
    results = _run_autograder(autograder, root)
    assert results["score"] == 10 + 15 + 15 and isinstance(results["execution_time"], int)
    assert len(results["tests"]) == len(EXERCISES)
    for test, e in zip(results["tests"], EXERCISES):
        assert set(test) == GRADESCOPE_TEST_KEYS
        assert test["number"] == str(e.number) and test["max_score"] == e.points
        assert test["score"] == (e.points if e.key in {"miou", "neighbours", "cspn-step"} else 0)
    assert "graded with seed" in results["output"]


def test_an_upload_without_the_workbook_scores_zero_with_a_reason(autograder, tmp_path):
    root = tmp_path / "autograder"
    (root / "submission").mkdir(parents=True)
    (root / "submission" / "answers.txt").write_text("42")
    results = _run_autograder(autograder, root)
    assert results["score"] == 0 and results["tests"] == []
    assert "holds no submission" in results["output"] and "answers.txt" in results["output"]
