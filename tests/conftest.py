"""Fixtures shared by the unit tests (the smoke profile itself is set by the root conftest)."""

import pytest

from helpers.data.synthetic import write_synthetic_dataset


@pytest.fixture(autouse=True)
def no_budget_from_the_shell(monkeypatch):
    """A budget (or `run`'s plan flag) exported in the developer's shell would make every test
    that opens a workbook time its steps and train other epochs: the tests set their own."""
    monkeypatch.delenv("WORKBOOK_BUDGET", raising=False)
    monkeypatch.delenv("WORKBOOK_PLANNED", raising=False)


@pytest.fixture(scope="session")
def pets(tmp_path_factory):
    """A small dataset in the official layout (written by the synthetic generator). Read-only:
    a test that needs to break or edit files copies it first."""
    root = tmp_path_factory.mktemp("pets")
    write_synthetic_dataset(root, n_trainval=14, n_test=4, seed=0, progress=False)
    return root


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Where a test's runs and decoded data go (never the repository's ``runs/`` and ``data/``),
    as :func:`helpers.workbook.session.open_workbook` takes them; no PETS_ROOT from the user's
    shell."""
    monkeypatch.delenv("PETS_ROOT", raising=False)
    return {"runs_dir": tmp_path / "runs", "data_dir": tmp_path / "data"}


@pytest.fixture(scope="session")
def student(tmp_path_factory):
    """The student edition of this checkout, written once per session. Read-only: a test that
    edits it copies it first (``handouts.fill``)."""
    from helpers.course.edition import make_student_edition

    out = tmp_path_factory.mktemp("editions") / "student"
    make_student_edition(out)
    return out
