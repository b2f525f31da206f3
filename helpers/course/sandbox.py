"""Running a submission's code for grading: in a subprocess of its own session, each exercise
with its own time limit, its output capped, and every process it started gone when it ends.

The subprocess runs on private copies (:func:`prepare`): of the submission's ``helpers`` and of
this subpackage, which it imports by path under a private name (``workbook_grader``); nothing it
is given (arguments, environment, import path, working folder) names the solution. It writes
``ready`` once the package imported and one file per exercise as each is done
(:mod:`helpers.course.worker`). An exercise that runs past its limit
costs only that exercise: the process is killed and a new one takes the exercises after it.
Processes a submission started and left behind (a daemon in a session of its own included) are
killed too: on Linux the grader is their "subreaper" while it grades, so they cannot escape to
``init``. Given an :class:`~helpers.course.isolation.Account` (the grader is root), the code runs
as that unprivileged user, in a work folder only that user can read, and every process of the
user is killed when the submission's grading ends.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import torch

from .isolation import Account, give_to, kill_user, limit_tasks

GRADER = Path(__file__).resolve().with_name("__init__.py")  # this subpackage, loaded by path
STDERR_TAIL = 4096  # bytes of the subprocess's error output kept for a message
PR_SET_CHILD_SUBREAPER = 36
# The worker starts without site (-S): no .pth file runs, so no editable-install finder points at
# the solution; its import path is the submission's copy, then the interpreter's own folders.
LAUNCH = (
    "import importlib.util, json, pathlib, sys\n"
    "work = pathlib.Path(sys.argv[1])\n"
    "sys.path[:] = [str(work / 'submission')] + json.loads((work / 'paths.json').read_text())\n"
    "init = work / 'grader' / '__init__.py'\n"
    "spec = importlib.util.spec_from_file_location(\n"
    "    'workbook_grader', init, submodule_search_locations=[str(init.parent)])\n"
    "mod = importlib.util.module_from_spec(spec); sys.modules['workbook_grader'] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "from workbook_grader.worker import main\n"
    "main(*sys.argv[2:])\n"
)
# the environment a submission's code sees: nothing that names a path of the grader's
ENVIRONMENT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
SKIP = ("__pycache__", "*.pyc", ".ipynb_checkpoints")


def prepare(submission: Path, work: Path) -> None:
    """A private copy of the submission's ``helpers/`` and of these checks (``work/submission``,
    ``work/grader``), and the import path without this workbook (``work/paths.json``): the
    submission's code never learns where the solution or the other submissions are."""
    ignore = shutil.ignore_patterns(*SKIP)
    source = submission / "helpers"
    if source.is_symlink():  # copied as the grader, a link would bring in whatever it points at
        (work / "submission" / "helpers").mkdir(parents=True)
    else:  # links inside are copied as links: they resolve with the sandbox user's rights
        shutil.copytree(source, work / "submission" / "helpers", ignore=ignore, symlinks=True)
    shutil.copytree(
        GRADER.parent, work / "grader", ignore=shutil.ignore_patterns(*SKIP, "*.pt", "autograder")
    )
    (work / "paths.json").write_text(json.dumps(import_path()))


def import_path() -> list[str]:
    """The grading subprocess's import path after the submission: this interpreter's, without
    the workbook that holds these checks."""
    own = GRADER.parents[2]
    return [
        p
        for p in sys.path
        if p
        and Path(p).is_dir()
        and Path(p).resolve() != own
        and own not in Path(p).resolve().parents
    ]


def _subreaper(on: bool) -> bool:
    """Make this process the subreaper of its descendants (Linux); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return (
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
        )
    except (OSError, AttributeError):
        return False


def _children() -> set[int]:
    """Process ids whose parent is this process (from /proc; empty where there is none)."""
    me, found = os.getpid(), set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and ')': the fields after it start at the
        # last ')'
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == me:
            found.add(int(entry.name))
    return found


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _reap(before: set[int]) -> None:
    """Kill and wait for every child that was not there before (orphans a submission left)."""
    for _ in range(20):
        strays = _children() - before
        if not strays:
            return
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError, PermissionError):
                pass


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - STDERR_TAIL))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_submission(
    submission: Path,
    inputs_file: Path,
    work: Path,
    keys: list[str],
    timeout: float,
    account: Account | None = None,
) -> dict[str, dict]:
    """Run the submission's code for each exercise in ``keys``; per key the worker's
    ``{"outputs", "error"}``, or ``{"error": ("raised", why)}`` when it did not finish within
    ``timeout`` seconds or the process died. ``work`` is a private folder for this run (with an
    ``account``, one that only grading's root and that account can reach)."""
    env = {k: v for k, v in os.environ.items() if k in ENVIRONMENT}
    env.update(WORKBOOK_HEADLESS="1", OMP_NUM_THREADS="1", HOME=str(work))
    prepare(submission, work)
    user = {}
    # where the grader reads what the worker wrote and keeps its error output: in root's own
    # folder when the worker is another user (who could otherwise plant links or FIFOs there)
    area = work
    if account is not None:
        name = f"workbook-grader-{account.uid}"  # the id has no account; its own temp folder
        env.update(USER=name, LOGNAME=name, TMPDIR=str(work))
        private = work / inputs_file.name
        if inputs_file.resolve() != private.resolve():
            shutil.copyfile(inputs_file, private)
        inputs_file = private
        give_to(account, work)
        user = {
            "user": account.uid,
            "group": account.gid,
            "extra_groups": [],
            "preexec_fn": limit_tasks,
        }
        area = work.parent / "grader"
        area.mkdir(mode=0o711)
    results: dict[str, dict] = {}
    remaining = list(keys)
    reaping = _subreaper(True)
    before = _children()
    try:
        attempt_no = 0
        while remaining:
            attempt_no += 1
            out = area / f"run{attempt_no}"
            out.mkdir()
            if account is not None:
                give_to(account, out)
            stderr = area / f"run{attempt_no}-stderr.txt"
            with open(stderr, "wb") as err:
                # -I: no user site or PYTHON* variables; -S: no site; -B: no bytecode written
                cmd = [
                    sys.executable,
                    "-I",
                    "-S",
                    "-B",
                    "-c",
                    LAUNCH,
                    str(work),
                    str(work / "submission"),
                    str(inputs_file),
                    str(out),
                    *remaining,
                ]
                proc = subprocess.Popen(
                    cmd,
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                    **user,
                )
            try:
                if not _wait_for(out / "ready", proc, timeout):
                    why = (
                        f"the submission's package did not finish importing within {timeout:g} s "
                        "(work or an endless loop at import?)"
                    )
                    if proc.poll() is not None:
                        last = _tail(stderr) or "no output"
                        why = f"the submission's package could not be checked: {last}"
                    results.update({k: {"error": ("raised", why)} for k in remaining})
                    return results
                for key in list(remaining):
                    done = out / f"{key}.pt"
                    if _wait_for(done, proc, timeout):
                        results[key] = _load_result(done)
                        remaining.remove(key)
                        continue
                    if proc.poll() is None:
                        why = (
                            f"did not finish within {timeout:g} s (an endless loop?); the other "
                            "exercises were checked without it"
                        )
                    else:
                        why = f"the grading process died in it: {_tail(stderr) or 'no output'}"
                    results[key] = {"error": ("raised", why)}
                    remaining.remove(key)
                    break  # a new process takes the exercises after it
            finally:
                _kill_group(proc)
                if account is not None:  # nothing of this attempt may touch the next one
                    kill_user(account.uid)
    finally:
        if account is not None:
            kill_user(account.uid)
        _reap(before)
        if reaping:
            _subreaper(False)
    return results


RESULT_LIMIT = 64 * 2**20  # bytes: a check's outputs are a few small tensors


def _load_result(path: Path) -> dict:
    """A worker's result file, read only if it is a regular file of sane size (never through a
    link, never a FIFO that would block the grader); ``{"error": ...}`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return {"error": ("raised", f"its result could not be read ({exc.strerror})")}
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > RESULT_LIMIT:
            return {"error": ("raised", "its result is not a file the grader reads")}
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or forged file
            return {"error": ("raised", f"its result could not be read ({type(exc).__name__})")}


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``path`` appeared within ``timeout`` seconds (early False if ``proc`` ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.02)
    return path.exists()
