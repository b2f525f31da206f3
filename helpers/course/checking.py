"""Running the checks: a package's outputs for an exercise, compared with the solution's, as a
:class:`Result` with a one-line message naming the exercise.

In a notebook the checks run on the shipped reference inputs and outputs
(``helpers/course/references.pt``, loaded with ``weights_only=True``; ``python -m helpers
references`` recomputes them from the solution). Checks are isolated: each calls only its own
exercise's functions, so one unsolved exercise does not fail the others' checks, except where an
exercise builds on another (:data:`_NEEDS`: the CSPN step reads neighbours with the gather, DySPN's
step uses the ring sums, the refiner's loss the boundary band), which its messages name.

Nothing here imports the rest of the workbook at import time: the grader loads *its own* copy of
this subpackage in a subprocess and points it at the *student's* package (:func:`load_package`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cases import CASES
from .catalogue import EXERCISES, lookup
from .compare import Mismatch, Part, Parts, detached, gradcheck
from .inputs import rand

REFERENCES = Path(__file__).resolve().with_name("references.pt")
# the modules a check reads, by the name the cases use (pkg.metrics, pkg.propagation, ...)
MODULES = {
    "metrics": "analysis.metrics",
    "unet": "models.unet",
    "propagation": "models.propagation",
    "neighbours": "models.propagation.neighbours",
    "refiner": "models.refiner",
    "losses": "models.losses",
}


# what a check runs of other exercises: the boundary-weighted loss uses the band; the CSPN step
# reads neighbours with the gather, DySPN's step sums them with the ring sums
_NEEDS = {
    "refiner-loss": ("boundary-band",),
    "cspn-step": ("neighbours",),
    "ring-sums": ("neighbours",),
    "dyspn-step": ("ring-sums",),
}


def draw_inputs(key: str, seed: int) -> dict:
    """The inputs of ``key``'s check drawn with ``seed`` (the references use seed 0; grading a fresh
    one)."""
    return CASES[key].inputs(torch.Generator().manual_seed(seed))


def run_exercise(key: str, pkg, inputs: dict) -> dict:
    """A package's outputs for ``key`` on ``inputs`` (tensors only), with the random state kept."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        with torch.enable_grad():
            return detached(CASES[key].run(pkg, inputs))


# ------------------------------------------------------------------------------ running checks
@dataclass
class Result:
    """One exercise's grade: points earned of ``max_points``, the one-line message, and per named
    part (``parts``: name, points, max_points, passed, message) where it could be compared."""

    key: str
    number: int
    title: str
    points: int
    max_points: int
    passed: bool
    message: str
    parts: list = field(default_factory=list)


class Modules:
    """The modules of the package ``name`` that the checks read, as ``pkg.metrics``,
    ``pkg.propagation``, ... (:data:`MODULES`), each imported when a check first reads it: a
    broken or missing file fails only the exercises that need it. With ``root`` (a submission's
    ``helpers/``), a module found anywhere else is refused as missing from the submission."""

    def __init__(self, name: str, root: Path | None = None):
        self._name, self._root = name, root

    def __getattr__(self, short: str):
        if short.startswith("_") or short not in MODULES:
            raise AttributeError(short)
        module = importlib.import_module(f"{self._name}.{MODULES[short]}")
        where = Path(module.__file__).resolve()
        if self._root is not None and self._root not in where.parents:
            path = MODULES[short].replace(".", "/")
            raise ImportError(f"helpers/{path}.py is missing from the submission")
        setattr(self, short, module)
        return module


def load_package(name: str, root: Path | None = None) -> Modules:
    """The checks' view of the package ``name`` (:class:`Modules`)."""
    return Modules(name, root)


def own_package() -> str:
    """The name of the package this copy of the checks belongs to (the solution's: ``helpers``)."""
    return (__package__ or "").rpartition(".")[0] or "helpers"


def load_references(path: str | Path = REFERENCES) -> dict:
    """The reference inputs and outputs (plain tensors, loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the instructor regenerates it with `python -m helpers references`"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def make_references(package: str | None = None, path: str | Path = REFERENCES) -> Path:
    """Run the solution on the fixed inputs (seed 0) and save inputs and outputs (``python -m
    helpers references``)."""
    pkg = load_package(package or own_package())
    refs = {}
    for e in EXERCISES:
        inputs = draw_inputs(e.key, 0)
        refs[e.key] = {"inputs": inputs, "outputs": run_exercise(e.key, pkg, inputs)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(detached(refs), path)
    return path


def outcome(
    key: str, outputs: dict | None, reference: dict, error: tuple[str, str] | None = None
) -> Result:
    """The result of ``key`` from a package's ``outputs`` (or the ``error`` it raised: kind and
    message) against the solution's ``reference`` outputs, compared here."""
    ex = lookup(key)
    msg = None
    if error is not None:
        kind, text = error
        if kind == "not-done":
            msg = (
                f"{ex.label} cannot be checked yet: it needs {text.split(':')[0]} first"
                if text.startswith("Exercise ") and not text.startswith(ex.label)
                else f"{ex.label} is not done yet: write it in {ex.where}"
            )
        else:
            msg = f"{ex.label} failed: {text}"
    else:
        parts = Parts()
        try:
            detail = CASES[ex.key].compare(outputs, reference, parts)
        except (Mismatch, KeyError, IndexError, TypeError, AttributeError, RuntimeError) as exc:
            detail = f"its outputs could not be compared ({type(exc).__name__}: {exc})"
            parts.parts.append(Part("outputs", ex.points, False, detail))
        done = [
            {
                "name": p.name,
                "points": p.points,
                "max_points": p.max_points,
                "passed": p.passed,
                "message": p.message,
            }
            for p in parts.parts
        ]
        if sum(p.max_points for p in parts.parts) != ex.points:
            raise RuntimeError(f"the parts of {ex.label} are not worth its {ex.points} points")
        earned = sum(p.points for p in parts.parts)
        if all(p.passed for p in parts.parts):
            return Result(
                ex.key,
                ex.number,
                ex.title,
                earned,
                ex.points,
                True,
                f"{ex.label}: passed: {detail}",
                done,
            )
        first = next(p for p in parts.parts if not p.passed)
        scored = ", ".join(f"{p.name} {p.points}/{p.max_points}" for p in parts.parts)
        msg = f"{ex.label} failed: {first.message}; edit {ex.where} ({scored})"
        needs = [lookup(n).label for n in _NEEDS.get(ex.key, ())]
        if needs:
            msg += f" (this check also uses {', '.join(needs)})"
        return Result(ex.key, ex.number, ex.title, earned, ex.points, False, msg, done)
    needs = [lookup(n).label for n in _NEEDS.get(ex.key, ())]
    if needs and "cannot be checked" not in msg:
        msg += f" (this check also uses {', '.join(needs)})"
    return Result(ex.key, ex.number, ex.title, 0, ex.points, False, msg)


def attempt(key: str, pkg, inputs: dict) -> tuple[dict | None, tuple[str, str] | None]:
    """Run a package's code for ``key``: (outputs, None), or (None, (kind, message)) if it
    raised."""
    try:
        return run_exercise(key, pkg, inputs), None
    except NotImplementedError as exc:
        return None, ("not-done", str(exc))
    except Exception as exc:  # the student's code raised: name the error and where it came from
        return None, (
            "raised",
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            f"{_student_frame(exc)}",
        )


def check_one(key: str, pkg=None, refs: dict | None = None) -> Result:
    """Run one exercise's check on the shipped reference inputs; never raises for the student's
    errors."""
    pkg = pkg or load_package(own_package())
    refs = refs if refs is not None else load_references()
    ref = refs[lookup(key).key]
    outputs, error = attempt(lookup(key).key, pkg, ref["inputs"])
    result = outcome(key, outputs, ref["outputs"], error)
    if result.passed and lookup(key).key in _GRADCHECKS:
        try:
            _GRADCHECKS[lookup(key).key](pkg)
            result.message += "; gradcheck passed"
        except Mismatch as exc:
            ex = lookup(key)
            result = Result(
                ex.key,
                ex.number,
                ex.title,
                0,
                ex.points,
                False,
                f"{ex.label} failed: {exc}; edit {ex.where}",
            )
    return result


def _gradcheck_cspn(pkg) -> None:
    cspn, gen = pkg.propagation.CSPN(3), torch.Generator().manual_seed(50)
    args = (
        rand(gen, 1, 1, 4, 5, dtype=torch.float64),
        rand(gen, 1, 1, 4, 5, dtype=torch.float64),
        torch.rand(1, 8, 4, 5, generator=gen, dtype=torch.float64) / 8,
    )
    gradcheck(
        "CSPN.step",
        lambda d, base, k: cspn.step(d, base, k),
        tuple(a.requires_grad_() for a in args),
    )


def _gradcheck_dyspn(pkg) -> None:
    dyspn, gen = pkg.propagation.DySPN(2, 5), torch.Generator().manual_seed(60)
    w = rand(gen, 1, 24, 4, 5, dtype=torch.float64)
    args = (
        rand(gen, 1, 1, 4, 5, scale=0.1, dtype=torch.float64),
        rand(gen, 1, 2, 1, 4, 5, scale=0.1, dtype=torch.float64),
        w.clamp(min=0),
        0.5 + torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64),
        torch.sigmoid(rand(gen, 1, 3, 4, 5, dtype=torch.float64)),
    )
    gradcheck(
        "DySPN.step",
        lambda d, base, pos, A, p: dyspn.step(d, base, pos, A, p),
        tuple(a.requires_grad_() for a in args),
    )


# in a notebook, the propagation's backward pass is also checked against finite differences
_GRADCHECKS = {"cspn-step": _gradcheck_cspn, "dyspn-step": _gradcheck_dyspn}


def _student_frame(exc: BaseException) -> str:
    tb, where = exc.__traceback__, ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        parts = Path(name).parts
        if "helpers" in parts and "course" not in parts:  # the student's code, not the checks
            where = f" (at {Path(name).name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where


def run_checks(package: str | None = None, references: str | Path = REFERENCES) -> list[Result]:
    """Every exercise's check against the package named ``package``, on the shipped references."""
    pkg = load_package(package or own_package())
    refs = load_references(references)
    return [check_one(e.key, pkg, refs) for e in EXERCISES]
