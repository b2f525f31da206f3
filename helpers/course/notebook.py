"""The check cells of the notebooks: ``check("cspn-step")`` and ``require(...)``, and one-line
messages instead of tracebacks for an exercise that is not done or fails (IPython only).
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from .catalogue import EXERCISES, ExerciseFailed, lookup
from .checking import Result, check_one, load_references, own_package


def _package_modules() -> dict[str, str]:
    """Module name -> source file of every loaded module of this package."""
    prefix = own_package() + "."
    return {
        name: module.__file__
        for name, module in list(sys.modules.items())
        if name.startswith(prefix) and getattr(module, "__file__", None)
    }


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def remember_loaded(shell) -> None:
    """Note the file times of the package's modules loaded since the last call (after every
    cell: a module is loaded during a cell, a student edits its file between cells)."""
    seen = shell.__dict__.setdefault("_workbook_loaded_mtimes", {})
    for name, path in _package_modules().items():
        seen.setdefault(name, (path, _mtime(path)))


def stale_files(shell) -> list[str]:
    """The package's files edited since this kernel loaded them: their code is not what runs."""
    seen = getattr(shell, "_workbook_loaded_mtimes", {})
    stale = [path for path, mtime in seen.values() if _mtime(path) != mtime]
    root = Path(sys.modules[own_package()].__file__).resolve().parents[1]
    return sorted(Path(p).resolve().relative_to(root).as_posix() for p in stale)


def _current_code() -> None:
    """Stop a check that would run code the kernel loaded before the student's last edit."""
    shell = _shell()
    if shell is None:
        return
    stale = stale_files(shell)
    if stale:
        raise ExerciseFailed(
            f"{', '.join(stale)} changed after this kernel loaded it: restart the "
            "kernel (Kernel > Restart Kernel) and run the cells from the top, so "
            "that the check runs your current code"
        )


# ------------------------------------------------------------------------------ in a notebook
def _is_exercise_error(value: BaseException) -> bool:
    return isinstance(value, ExerciseFailed) or (
        isinstance(value, NotImplementedError) and str(value).startswith("Exercise ")
    )


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _last_cell(shell) -> str:
    history = shell.user_ns.get("_ih") or [""]
    return history[-1] or ""


def _assigned_names(source: str) -> set[str]:
    """The names a cell's top level assigns (``coarse = ...``, ``a, b = ...``, ``for x in``,
    ``import y``): what a later cell misses when this one stopped."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics, say: nothing to learn from it
        return set()
    names = set()
    for node in tree.body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                names.add(sub.id)
            elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in sub.names)
            elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                names.add(sub.name)
    return names


def install_one_line_errors() -> None:
    """In IPython (idempotent; nothing elsewhere): show :class:`ExerciseFailed` and the exercises'
    ``NotImplementedError`` as one line instead of a traceback into ``helpers/``, and a later
    cell's ``NameError`` (a variable the stopped cell never made) as that same line. The cells
    still fail (an error output), so ``pytest --nbval`` counts them."""
    shell = _shell()
    if shell is None or getattr(shell, "_workbook_exercise_handler", False):
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        # IPython leaves the display to the handler
        if _is_exercise_error(value):
            shell._workbook_exercise_error = str(value)  # on the kernel's shell, not in this module
            # the names this cell would have made: a later cell missing one is told why
            missing = shell.__dict__.setdefault("_workbook_missing_names", {})
            missing.update(dict.fromkeys(_assigned_names(_last_cell(shell)), str(value)))
            stb = [f"{etype.__name__}: {value}"]
        elif isinstance(value, NameError) and (
            getattr(value, "name", None) in getattr(shell, "_workbook_missing_names", {})
            or getattr(shell, "_workbook_exercise_error", None)
        ):
            why = getattr(shell, "_workbook_missing_names", {}).get(
                getattr(value, "name", None), shell._workbook_exercise_error
            )
            stb = [f"{etype.__name__}: {value}, because an earlier cell stopped: {why}"]
        else:  # anything else keeps its usual traceback
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return None
        shell._showtraceback(etype, value, stb)
        return stb

    def forget(result):  # a cell that ran cleanly: later NameErrors are the student's own again
        if result.error_in_exec is None and result.error_before_exec is None:
            shell._workbook_exercise_error = None
            made = _assigned_names(result.info.raw_cell or "")
            missing = getattr(shell, "_workbook_missing_names", {})
            for name in made & set(missing):  # made after all: no longer missing
                del missing[name]
        remember_loaded(shell)

    shell.set_custom_exc((ExerciseFailed, NotImplementedError, NameError), handler)
    shell.events.register("post_run_cell", forget)
    shell._workbook_exercise_handler = True
    remember_loaded(shell)


def _passed() -> None:
    shell = _shell()
    if shell is not None:
        shell._workbook_exercise_error = None


def check(key: str | int) -> Result:
    """The check cell: run one exercise's check, print one line; raise :class:`ExerciseFailed` if it
    fails."""
    install_one_line_errors()
    _current_code()
    result = check_one(key)
    if not result.passed:
        raise ExerciseFailed(result.message)
    _passed()
    print(result.message)
    return result


def require(*keys: str | int) -> None:
    """First line of a cell that uses these exercises (keys or numbers; none: all of them): stops
    it with the failing check's one-line message instead of a long traceback from deep inside
    training."""
    install_one_line_errors()
    _current_code()
    refs = load_references()
    for key in keys or [e.key for e in EXERCISES]:
        result = check_one(key, refs=refs)
        if not result.passed:
            raise ExerciseFailed(result.message)
    _passed()


def hint(key: str | int, tier: int = 1) -> str:
    """An exercise's hint: tier 1 names the concept (the stub's message says it too), tier 2
    gives the shapes and the steps. No tier gives code. Printed, and returned."""
    text = f"{lookup(key).label}, hint {tier}: {lookup(key).hint(tier)}"
    print(text)
    return text
