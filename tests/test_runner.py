"""``python -m helpers run``: order of notebooks, failure reporting, argument checks."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

import helpers.runner as runner


def _nb(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_notebooks_run_in_numeric_order(tmp_path):
    for name in ("10_c.ipynb", "02_b.ipynb", "00_a.ipynb", "notes.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in runner.numbered_notebooks(tmp_path)] == ["00_a.ipynb", "02_b.ipynb", "10_c.ipynb"]


def test_failure_names_notebook_and_cell(tmp_path):
    _nb(tmp_path / "01_bad.ipynb", "x = 1", "raise ValueError('broken on purpose')")
    with pytest.raises(runner.NotebookFailed, match=r"01_bad.ipynb: cell 1 failed: .*broken on purpose"):
        runner.run_notebook(tmp_path / "01_bad.ipynb", tmp_path / "out", timeout_s=120)
    assert (tmp_path / "out" / "01_bad.failed.ipynb").exists()     # the executed copy shows the error


def test_main_exits_non_zero_on_failure(tmp_path, monkeypatch, capsys):
    _nb(tmp_path / "00_ok.ipynb", "print('fine')")
    _nb(tmp_path / "01_bad.ipynb", "1 / 0")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    assert runner.main(["run", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert "01_bad.ipynb: cell 0 failed" in err and "ZeroDivisionError" in err
    assert (tmp_path / "runs" / "smoke" / "00_ok.ipynb").exists()


def test_bad_data_root_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        runner.main(["run", "--data-root", str(tmp_path)])


def test_kernel_console_goes_to_a_log_not_the_terminal(tmp_path, capfd):
    _nb(tmp_path / "00_chatty.ipynb", "import os\nos.write(2, b'kernel-console-line\\n')", "print('cell output')")
    runner.run_notebook(tmp_path / "00_chatty.ipynb", tmp_path / "out", timeout_s=120)
    assert "kernel-console-line" in (tmp_path / "out" / "00_chatty.kernel.log").read_text()
    assert "kernel-console-line" not in capfd.readouterr().err
    executed = nbformat.read(tmp_path / "out" / "00_chatty.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "cell output\n"


def test_a_dead_kernel_names_the_notebook(tmp_path):
    _nb(tmp_path / "03_dies.ipynb", "import os\nos._exit(1)")
    with pytest.raises(runner.NotebookFailed, match=r"03_dies.ipynb: the kernel died"):
        runner.run_notebook(tmp_path / "03_dies.ipynb", tmp_path / "out", timeout_s=120)
