"""The workbook installed as a regular (non-editable) wheel, as a course server would install it:
it must find its own data and write and grade the hand-out without a checkout beside it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.course.edition import solved_copy

ROOT = Path(__file__).resolve().parents[1]


def _tracked(root: Path) -> list[str]:
    """The checkout's files as git lists them (tracked and new, not ignored), or None without
    git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [p for p in out.decode().split("\0") if p and (root / p).is_file()]


def _copy_of_checkout(dest: Path) -> Path:
    files = _tracked(ROOT)
    if files is None:
        shutil.copytree(
            ROOT,
            dest,
            ignore=shutil.ignore_patterns(
                ".git", "runs", "data", "build", "*.egg-info", "__pycache__"
            ),
        )
    else:
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The python of a fresh virtual environment holding the workbook's wheel (its dependencies
    come from this environment's site-packages, offline)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = _copy_of_checkout(tmp / "source")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp / "dist"),
            str(source),
        ],
        check=True,
        timeout=600,
    )
    wheel = next((tmp / "dist").glob("spn_workbook-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(tmp / "venv")],
        check=True,
        timeout=300,
    )
    python = tmp / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True,
        timeout=600,
    )
    return python


def _run(python: Path, *args, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "WORKBOOK_"))}
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_installed_wheel_is_the_package_that_runs(installed, tmp_path):
    out = _run(
        installed,
        "-c",
        "import helpers, helpers.course.checking as c; "
        "print(helpers.__file__); print(c.REFERENCES.is_file())",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    where, references = out.stdout.split()
    assert Path(where).is_relative_to(installed.parents[1]), where  # not this checkout
    assert references == "True"


def test_the_installed_wheel_writes_the_hand_out_and_grades_it(installed, tmp_path):
    made = _run(installed, "-m", "helpers", "assignment", "handout", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    handout = tmp_path / "handout"
    assert sorted(p.name for p in (handout / "notebooks").glob("*.ipynb")) == sorted(
        p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")
    )
    propagators = handout / "helpers" / "models" / "propagation" / "propagators.py"
    assert "raise NotImplementedError(" in propagators.read_text()
    assert not (handout / "helpers" / "course" / "workbook").exists()  # the bundle is not shipped
    assert (handout / "README.md").read_text().startswith("# Refining coarse segmentations")
    assert "python -m helpers grade ." in (handout / "README.md").read_text()  # the students'
    assert not (handout / "helpers" / "course" / "edition.py").exists()

    # a blank hand-out earns nothing; the same hand-out with the solution put back earns 130
    submissions = tmp_path / "submissions"
    shutil.copytree(handout, submissions / "blank")
    solved_copy(handout, submissions / "solved")
    graded = _run(
        installed, "-m", "helpers", "grade", str(submissions), "--json", "grades.json", cwd=tmp_path
    )
    assert graded.returncode == 0, graded.stderr
    scores = {
        s["name"]: s["score"]
        for s in json.loads((tmp_path / "grades.json").read_text())["submissions"]
    }
    assert scores == {"blank": 0, "solved": 130}, graded.stdout
