"""The first cell of every notebook and ``helpers.colab.setup``: a no-op here, the few steps
Colab needs there (driven with a stand-in ``google.colab`` module)."""
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from helpers import colab

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def setup_cell(path: Path) -> str:
    return nbformat.read(path, as_version=4).cells[1].source


@pytest.fixture
def fake_colab(monkeypatch):
    """google.colab with a recording widget manager; pip and CUDA stubbed."""
    calls = {"pip": [], "widgets": 0}
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.__setitem__("widgets", calls["widgets"] + 1))
    google = types.ModuleType("google")
    google_colab = types.ModuleType("google.colab")
    google_colab.output = output
    google.colab = google_colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    monkeypatch.delenv("WORKBOOK_PROFILE", raising=False)
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[:3] == [sys.executable, "-m", "pip"]:
            calls["pip"].append(cmd)
            return subprocess.CompletedProcess(cmd, 0)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_outside_colab_setup_does_nothing(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    assert colab.setup() == [] and capsys.readouterr().out == ""
    assert not colab.in_colab()


@pytest.mark.parametrize("gpu, profile", [(True, "full"), (False, "cpu")])
def test_on_colab_installs_only_the_missing_extras_never_torch(fake_colab, monkeypatch, capsys, gpu, profile):
    import importlib.util

    import torch

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nbval" else real_find_spec(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    done = colab.setup()
    assert fake_colab["pip"] == [[sys.executable, "-m", "pip", "install", "-q", "nbval"]]
    assert not any("torch" in part for cmd in fake_colab["pip"] for part in cmd)
    assert fake_colab["widgets"] == 1
    assert colab.os.environ["WORKBOOK_PROFILE"] == profile
    said = capsys.readouterr().out
    assert said.startswith("Colab set-up:") and "installed nbval" in said and f"profile {profile}" in said
    assert len(done) == 3


def test_on_colab_a_chosen_profile_is_kept_and_nothing_installed_twice(fake_colab, monkeypatch):
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    colab.setup(verbose=False)
    assert fake_colab["pip"] == [] and colab.os.environ["WORKBOOK_PROFILE"] == "smoke"


def test_every_notebook_starts_with_the_same_setup_cell():
    assert len(NOTEBOOKS) >= 5
    assert len({setup_cell(p) for p in NOTEBOOKS}) == 1


def test_setup_cell_finds_the_workbook_from_notebooks_and_the_root(monkeypatch, capsys):
    for cwd in (REPO, REPO / "notebooks"):
        monkeypatch.chdir(cwd)
        ns = {}
        exec(setup_cell(NOTEBOOKS[0]), ns)
        assert ns["ROOT"] == REPO and capsys.readouterr().out == ""   # nothing to say outside Colab


def test_setup_cell_on_colab_clones_then_reuses_the_clone(fake_colab, monkeypatch, tmp_path, capsys):
    clone = tmp_path / "content" / "spn-workbook"
    monkeypatch.setenv("WORKBOOK_CLONE_DIR", str(clone))
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = setup_cell(NOTEBOOKS[0])
    monkeypatch.delenv("WORKBOOK_REPO_URL", raising=False)
    with pytest.raises(RuntimeError, match="WORKBOOK_REPO_URL"):
        exec(source, {})
    clones = []

    def git(cmd, *args, **kwargs):
        if cmd[:2] == ["git", "clone"]:
            clones.append(cmd)
            shutil.copytree(REPO / "helpers", Path(cmd[-1]) / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
            return subprocess.CompletedProcess(cmd, 0)
        raise AssertionError(f"unexpected command {cmd}")

    monkeypatch.setattr(subprocess, "run", git)
    monkeypatch.setenv("WORKBOOK_REPO_URL", "https://example.invalid/workbook.git")
    ns = {}
    exec(source, ns)
    assert ns["ROOT"] == clone and str(clone) in sys.path
    assert clones[0][-2:] == ["https://example.invalid/workbook.git", str(clone)]
    assert "cloned the workbook into" in capsys.readouterr().out
    exec(source, {})                       # running the cell again reuses the clone
    assert len(clones) == 1
