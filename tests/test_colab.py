"""The first cell of every notebook and ``helpers.cli.colab.setup``: a no-op here, the few steps
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
    output = types.SimpleNamespace(
        enable_custom_widget_manager=lambda: calls.__setitem__("widgets", calls["widgets"] + 1)
    )
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
def test_on_colab_installs_only_the_missing_extras_never_torch(
    fake_colab, monkeypatch, capsys, gpu, profile
):
    import importlib.util

    import torch

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nbval" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    done = colab.setup()
    assert fake_colab["pip"] == [[sys.executable, "-m", "pip", "install", "-q", "nbval"]]
    assert not any("torch" in part for cmd in fake_colab["pip"] for part in cmd)
    assert fake_colab["widgets"] == 1
    assert colab.os.environ["WORKBOOK_PROFILE"] == profile
    said = capsys.readouterr().out
    assert (
        said.startswith("Colab set-up:")
        and "installed nbval" in said
        and f"profile {profile}" in said
    )
    assert len(done) == 3


def test_on_colab_a_chosen_profile_is_kept_and_nothing_installed_twice(fake_colab, monkeypatch):
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    colab.setup(verbose=False)
    assert fake_colab["pip"] == [] and colab.os.environ["WORKBOOK_PROFILE"] == "smoke"


def test_every_notebook_starts_with_the_same_setup_cell():
    assert len(NOTEBOOKS) >= 5
    assert len({setup_cell(p) for p in NOTEBOOKS}) == 1


def test_setup_cell_imports_the_installed_workbook_from_any_folder(monkeypatch, tmp_path, capsys):
    for cwd in (REPO, REPO / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        ns = {}
        exec(setup_cell(NOTEBOOKS[0]), ns)
        # nothing to say outside Colab
        assert ns["colab"] is colab and capsys.readouterr().out == ""


def _not_installed(monkeypatch, fetched: list):
    """``helpers`` cannot be found until a clone is on sys.path (a fresh Colab runtime)."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: real_find_spec(name, *a) if name != "helpers" or fetched else None,
    )


def test_setup_cell_outside_colab_names_the_install_command(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    _not_installed(monkeypatch, [])
    with pytest.raises(ModuleNotFoundError, match=r"pip install -r requirements.txt"):
        exec(setup_cell(NOTEBOOKS[0]), {})


def test_setup_cell_on_colab_clones_installs_then_reuses_the_clone(
    fake_colab, monkeypatch, tmp_path
):
    clone = tmp_path / "content" / "spn-workbook"
    monkeypatch.setenv("WORKBOOK_CLONE_DIR", str(clone))
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    monkeypatch.setattr(sys, "path", list(sys.path))
    source = setup_cell(NOTEBOOKS[0])
    clones, installs = [], []
    _not_installed(monkeypatch, installs)
    monkeypatch.delenv("WORKBOOK_REPO_URL", raising=False)
    with pytest.raises(RuntimeError, match="WORKBOOK_REPO_URL"):
        exec(source, {})

    def run(cmd, *args, **kwargs):
        if cmd[:2] == ["git", "clone"]:
            clones.append(cmd)
            shutil.copytree(
                REPO / "helpers",
                Path(cmd[-1]) / "helpers",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        elif cmd[:3] == [sys.executable, "-m", "pip"]:
            installs.append(cmd)
        else:
            raise AssertionError(f"unexpected command {cmd}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("WORKBOOK_REPO_URL", "https://example.invalid/workbook.git")
    ns = {}
    exec(source, ns)
    assert (
        clones[0][-2:] == ["https://example.invalid/workbook.git", str(clone)]
        and str(clone) in sys.path
    )
    # installed without its dependencies: Colab's own torch is never replaced
    assert installs == [
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(clone)]
    ]
    assert ns["colab"] is colab
    installs.clear()
    exec(source, {})  # the cell again, the runtime restarted: the clone is reused
    assert len(clones) == 1
