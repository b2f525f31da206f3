"""Executing one notebook headless (nbclient), in a worker thread that can be stopped: its
executed copy, or a ``.failed.ipynb`` beside the last good one and one line naming the cell.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path


class NotebookFailed(RuntimeError):
    pass


def failed_copy(out_dir: Path, notebook: Path) -> Path:
    """Where a failed execution of ``notebook`` is written: beside the last good one, never over
    it."""
    return out_dir / f"{notebook.stem}.failed.ipynb"


def _error_of(nb) -> tuple[int | None, str]:
    """(index of the first cell with an error output, 'ErrorName: message' of that error)."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                value = re.sub(r"\x1b\[[0-9;]*m", "", str(out.get("evalue", ""))).strip()
                # the project's errors name the file and what to do; torch's hint to load a file
                # with weights_only=False (which may run code) is never passed on
                lines = [
                    ln.strip()
                    for ln in value.splitlines()
                    if ln.strip() and "weights_only" not in ln
                ]
                return i, f"{out.get('ename', 'Error')}: {' '.join(lines)}".rstrip(": ")
    return None, "unknown error"


def run_notebook(path: Path, out_dir: Path, timeout_s: int = 3600, started=None) -> float:
    """Execute one notebook with cwd = notebooks/; return seconds.

    A success is saved as ``out_dir/<name>.ipynb``; a failure as ``<name>.failed.ipynb`` beside
    it (the last good executed copy is kept) and raised as :class:`NotebookFailed` with one line
    naming the notebook, the cell and the error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    # the committed outputs must not pass for this run's (cells after a failure)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    running = {"cell": None}

    def on_cell_execute(cell, cell_index, **_):
        running["cell"] = cell_index

    client = NotebookClient(
        nb,
        timeout=timeout_s,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_execute=on_cell_execute,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = failed_copy(out_dir, path)
    t0 = time.perf_counter()
    # the kernel's own console chatter (ipykernel's transport warning, C-level messages) goes to a
    # log beside the executed notebook instead of the terminal; cell outputs are in the notebook
    log = open(out_dir / f"{path.stem}.kernel.log", "w")
    where = f"runs/{out_dir.name}/{failed.name}" if out_dir.parent.name == "runs" else str(failed)
    if started is not None:
        started(client)  # lets the caller stop this kernel on an interruption
    try:
        client.execute(stdout=log, stderr=log)
    except CellExecutionError:
        nbformat.write(nb, failed)
        cell, error = _error_of(nb)
        raise NotebookFailed(
            f"{path.name}: cell {cell} failed: {error}\n"
            f"the executed notebook with the error: {where}"
        ) from None
    except CellTimeoutError:
        nbformat.write(nb, failed)
        raise NotebookFailed(
            f"{path.name}: cell {running['cell']} ran longer than the limit of {timeout_s} s and "
            "was stopped; this profile is too slow for this machine: use --profile cpu "
            f"(or smoke), or raise the limit with --cell-timeout\npartial notebook: {where}"
        ) from None
    except DeadKernelError:
        nbformat.write(nb, failed)
        raise NotebookFailed(
            f"{path.name}: the kernel died (out of memory?); its console output is in "
            f"{path.stem}.kernel.log; the notebook up to that point: {where}"
        ) from None
    finally:
        log.close()
    nbformat.write(nb, out_dir / path.name)
    failed.unlink(missing_ok=True)  # a stale failure would contradict the good copy
    return time.perf_counter() - t0


def in_worker(fn, *args, on_wait=None):
    """``fn(*args)`` in a worker thread; its result, or the exception it raised. The main thread
    only waits (calling ``on_wait`` between waits), so it receives Ctrl-C and SIGTERM itself (and
    nbclient, off the main thread, leaves the process's signal handlers alone)."""
    box = {}

    def work():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller, whatever it is
            box["value"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)  # short waits: signal handlers run between them
        if on_wait is not None:
            try:
                on_wait()
            except Exception as exc:  # showing progress must never end a run
                print(f"      (progress display failed: {exc})", file=sys.stderr)
    return box["value"]


def kill_kernel(client) -> None:
    """Stop the kernel process of a running nbclient client (if any); its execution then ends
    with a dead-kernel error in the worker."""
    process = getattr(getattr(getattr(client, "km", None), "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        process.kill()
