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
    if gpu:
        _simulated_gpu(monkeypatch)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
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
    assert len(done) == 5 and done[3].startswith(
        f"workbook: {'Tesla T4' if gpu else 'CPU'}, profile {profile}, propagation auto -> "
    )
    # a session's limit: the budget that fits a 60-minute one, and how to set it; on a T4 the
    # full profile does not fit one at all: the cpu profile instead
    if gpu:
        assert done[4].startswith(
            "budget: on a Tesla T4 the full profile takes hours and does not fit a 60-minute "
            "session even at a quarter of its epochs; run %env WORKBOOK_PROFILE=cpu"
        )
    else:
        assert done[4] == (
            "budget: none; for a 60-minute session run %env WORKBOOK_BUDGET=36 in every notebook "
            "before wb = open_workbook() (or !python -m helpers run --budget 36)"
        )


def test_on_colab_a_budget_in_use_is_said_instead_of_suggested(fake_colab, monkeypatch):
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    monkeypatch.setenv("WORKBOOK_BUDGET", "30")
    assert colab.setup(verbose=False)[-1] == ("budget 30 min (WORKBOOK_BUDGET)")


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


def _simulated_gpu(monkeypatch, name="Tesla T4", capability=(7, 5), kernels_fail=None):
    """CUDA as a Colab GPU would show it, without one: its properties, its bfloat16 support
    (native from compute capability 8.0, emulated below) and the kernels' self-check."""
    import torch

    from helpers.models.propagation import selfcheck

    props = types.SimpleNamespace(
        name=name, total_memory=15 * 2**30, major=capability[0], minor=capability[1]
    )
    native = capability >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native or including_emulation,
    )
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12040, raising=False)
    monkeypatch.setattr(selfcheck, "kernel_problem", lambda device, dtype: kernels_fail)


def test_the_doctor_says_what_a_colab_t4_will_do(monkeypatch):
    """A T4 (7.5): float16 autocast with a gradient scaler (its bfloat16 is emulated), the full
    profile because CUDA is there, the fused kernels after their self-check."""
    from helpers.cli.doctor import report

    monkeypatch.delenv("WORKBOOK_PROFILE", raising=False)
    _simulated_gpu(monkeypatch)
    lines = report(plan=False)
    assert lines[1] == (
        "GPU: Tesla T4, 15.0 GiB, compute capability 7.5; CUDA "
        f"{__import__('torch').version.cuda}, driver 12.4"
    )
    assert lines[2] == "autocast: float16 (with a gradient scaler: this GPU only emulates bfloat16)"
    assert lines[4].startswith("profile: full (the default: CUDA is available")
    assert lines[5] == "propagation: auto -> fused Triton kernels (self-check passed on cuda)"


def test_the_doctor_on_an_a100_and_with_kernels_that_fail(monkeypatch):
    from helpers.cli.doctor import report

    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    _simulated_gpu(monkeypatch, "NVIDIA A100", (8, 0), kernels_fail="RuntimeError: PTX failed")
    lines = report(plan=False)
    assert lines[2] == "autocast: bfloat16 (native on compute capability >= 8.0)"
    assert lines[4] == "profile: smoke (WORKBOOK_PROFILE)"
    assert lines[5] == (
        "propagation: auto -> PyTorch path (custom autograd ring sums): the kernels failed their "
        "self-check (RuntimeError: PTX failed)"
    )


def test_the_doctor_runs_here_with_its_plan(monkeypatch, tmp_path, capsys):
    """On this machine (no GPU), the whole screen, the timed plan of the smoke profile included:
    what CI runs."""
    from helpers.cli.main import main

    monkeypatch.delenv("PETS_ROOT", raising=False)
    monkeypatch.delenv("WORKBOOK_BUDGET", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["doctor", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "GPU: none (CUDA not available): training runs on the CPU"
    assert out[4] == "profile: smoke (--profile)"
    assert any(line.startswith("data: ") and "training" in line for line in out)
    assert "propagation: auto -> PyTorch path (custom autograd ring sums)" in out
    plan = [line for line in out if line.startswith("plan: ")]
    assert len(plan) == 1 and ("stages to train" in plan[0] or "trained already" in plan[0])
    assert out[-1] == (
        "budget: none (the full schedule); a 60 min session fits --budget 36 (WORKBOOK_BUDGET)"
    )


def test_on_colab_the_first_cell_prints_the_doctors_line(fake_colab, monkeypatch, capsys):
    monkeypatch.delenv("WORKBOOK_PROFILE", raising=False)
    _simulated_gpu(monkeypatch)
    colab.setup()
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 3 and said[0].startswith("Colab set-up: enabled the Colab widget manager")
    assert said[1] == (
        "workbook: Tesla T4, profile full, propagation auto -> fused Triton kernels (self-check "
        "passed on cuda)"
    )
    assert said[2].startswith("budget: on a Tesla T4 the full profile takes hours")


def test_the_doctor_does_not_blame_kernels_an_edition_does_not_have(monkeypatch):
    """The student edition (no fast path, no kernels) on a GPU runs the plain steps: the doctor
    says so and runs no self-check."""
    from helpers.cli.doctor import report
    from helpers.models.propagation import base

    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    _simulated_gpu(monkeypatch, kernels_fail="should not be asked")
    monkeypatch.setattr(base, "HAS_FAST_PATH", False)
    monkeypatch.setattr(base, "HAS_KERNELS", False)
    assert report(plan=False)[5] == (
        "propagation: auto -> plain steps (your own gather, ring sums and steps)"
    )
