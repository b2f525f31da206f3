"""``python -m helpers run``: order of notebooks, failure reporting, argument checks."""

import os
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import helpers.cli.execute as execute
import helpers.cli.run as runner
from helpers.cli.main import main as run_main


def _nb(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_notebooks_run_in_numeric_order(tmp_path):
    for name in ("10_c.ipynb", "02_b.ipynb", "00_a.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in runner.numbered_notebooks(tmp_path)] == [
        "00_a.ipynb",
        "02_b.ipynb",
        "10_c.ipynb",
    ]


def test_failure_names_notebook_and_cell(tmp_path):
    _nb(tmp_path / "01_bad.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    with pytest.raises(
        execute.NotebookFailed, match=r"01_bad.ipynb: cell 1 failed: .*broken on purpose"
    ):
        execute.run_notebook(tmp_path / "01_bad.ipynb", tmp_path / "out", timeout_s=120)
    assert (tmp_path / "out" / "01_bad.failed.ipynb").exists()  # the executed copy shows the error


def test_main_exits_non_zero_on_failure(tmp_path, monkeypatch, capfd):
    _nb(tmp_path / "00_ok.ipynb", "print('fine')")
    _nb(tmp_path / "01_bad.ipynb", "1 / 0")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    assert run_main(["run", "--profile", "smoke"]) == 1
    out, err = capfd.readouterr()  # the plan comes from a process of its own
    assert "01_bad.ipynb: cell 0 failed" in err and "ZeroDivisionError" in err
    # before anything ran: the plan, each stage still to train with its time (or none left)
    plan = [line for line in out.splitlines() if line.startswith("plan: ")]
    assert len(plan) == 1 and out.index(plan[0]) < out.index("00_ok.ipynb")
    assert (tmp_path / "runs" / "smoke" / "00_ok.ipynb").exists()


def test_bad_data_root_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(["run", "--data-root", str(tmp_path)])
    assert (
        exit_.value.code == 2
        and "does not hold an 'oxford-iiit-pet' folder" in capsys.readouterr().err
    )


def test_kernel_console_goes_to_a_log_not_the_terminal(tmp_path, capfd):
    _nb(
        tmp_path / "00_chatty.ipynb",
        "import os\nos.write(2, b'kernel-console-line\\n')",
        "print('cell output')",
    )
    execute.run_notebook(tmp_path / "00_chatty.ipynb", tmp_path / "out", timeout_s=120)
    assert "kernel-console-line" in (tmp_path / "out" / "00_chatty.kernel.log").read_text()
    assert "kernel-console-line" not in capfd.readouterr().err
    executed = nbformat.read(tmp_path / "out" / "00_chatty.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "cell output\n"


def test_a_dead_kernel_names_the_notebook(tmp_path):
    _nb(tmp_path / "03_dies.ipynb", "import os\nos._exit(1)")
    with pytest.raises(execute.NotebookFailed, match=r"03_dies.ipynb: the kernel died"):
        execute.run_notebook(tmp_path / "03_dies.ipynb", tmp_path / "out", timeout_s=120)


def test_headless_runs_show_live_epochs_and_save_a_summary_not_frozen_bars(
    tmp_path, monkeypatch, capsys
):
    """The runner prints each finished epoch while the notebook runs; the saved notebook holds
    the stage's summary line instead of widget bars stuck at 0%."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    _nb(
        tmp_path / "01_train.ipynb",
        f"import sys\nsys.path.insert(0, {str(repo)!r})\n"
        "from helpers.training.loop import fit\nfrom helpers.models.unet import UNet\nfrom "
        "tests.toys import toy_data\n"
        "h = fit(UNet(3, 2, width=4, depth=1), train_set=toy_data(8), val_set=toy_data(4, "
        "seed=1), epochs=3, "
        "lr=1e-3, batch_size=4, desc='toy U-Net')",
    )
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    assert run_main(["run", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    for epoch in (1, 2, 3):
        assert f"toy U-Net: epoch {epoch}/3, loss " in out
    assert "left" in out.split("toy U-Net: epoch 1/3")[1].splitlines()[0]
    saved = nbformat.read(tmp_path / "runs" / "smoke" / "01_train.ipynb", as_version=4)
    text = "".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for o in saved.cells[0].outputs
    )
    assert "toy U-Net: trained 3 epochs in" in text and "0%|" not in text
    import os

    assert "WORKBOOK_HEADLESS" not in os.environ  # the caller's environment is left as it was


@pytest.mark.parametrize(
    "argv,env,message",
    [
        (
            ["run", "--data-root", "/nonexistent"],
            {},
            "python -m helpers run: error: --data-root '/nonexistent' does not hold",
        ),
        (
            ["figures", "--data-root", "/nonexistent"],
            {},
            "python -m helpers figures: error: data root '/nonexistent'",
        ),
        (
            ["run", "--budget", "soon"],
            {"WORKBOOK_BUDGET": ""},  # run sets it for the kernels: monkeypatch restores it
            "python -m helpers run: error: --budget='soon' is not a positive number of minutes",
        ),
        (
            ["run", "--set", "step_scale=0"],
            {"WORKBOOK_SET": "", "WORKBOOK_BUDGET": ""},
            "python -m helpers run: error: --set (WORKBOOK_SET): step_scale must be in (0, 1]",
        ),
        (
            ["run"],
            {"WORKBOOK_BUDGET": "-5"},
            "python -m helpers run: error: WORKBOOK_BUDGET='-5' is not a positive number",
        ),
        (
            ["figures"],
            {"WORKBOOK_SEED": "abc"},
            "python -m helpers figures: error: WORKBOOK_SEED='abc' is not an integer",
        ),
    ],
)
def test_command_line_errors_are_one_line_with_the_subcommands_usage(
    argv, env, message, monkeypatch, capsys
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        run_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert err.startswith(f"usage: python -m helpers {argv[0]} ")


def test_overrides_list_only_the_fields_they_accept():
    from helpers.core.config import parse_overrides

    with pytest.raises(ValueError) as exc:
        parse_overrides(["foo=1"])
    accepted = str(exc.value).split("one of ")[1].split(";")[0].split(", ")
    assert "coarse_size" in accepted and "profile" not in accepted and "seed" not in accepted
    with pytest.raises(ValueError, match=r"seed has its own option \(--seed\)"):
        parse_overrides(["seed=3"])


def test_graders_command_from_notebooks_folder_runs_the_smoke_profile(tmp_path):
    """`cd notebooks && pytest --nbval 01_coarse_unet.ipynb`, with no profile in the environment:
    the root conftest still applies, so the notebook trains the smoke profile (its predictions
    land under runs/smoke/, none under runs/cpu/) and passes strict nbval."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("WORKBOOK_PROFILE", "PYTEST_ADDOPTS")}
    started = time.time() - 1
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "01_coarse_unet.ipynb",
        ],
        cwd=repo / "notebooks",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    fresh = lambda profile: [
        p
        for p in (repo / "runs" / profile).glob("*/seed*/coarse-*-predictions.pt")
        if p.stat().st_mtime >= started
    ]
    assert fresh("smoke") and not fresh("cpu")


def test_the_installed_workbook_runs_from_any_folder(tmp_path):
    """`pip install -r requirements.txt` installs the package: `python -m helpers` works outside
    the checkout, and names the notebooks of the checkout it was installed from."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "helpers", "run", "--only", "99"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2
        and "--only 99 matches no notebook; the notebooks are 00_data" in proc.stderr
    )
    import helpers

    assert (
        Path(helpers.__file__).resolve().parent
        == Path(__file__).resolve().parent.parent / "helpers"
    )
