"""What training will take, and how to make it fit: the plan printed before anything trains, and
the budget (``python -m helpers run --budget MINUTES``, ``WORKBOOK_BUDGET``).

The plan lists the stages still to train with their estimated times on this machine
(:func:`helpers.workbook.timing.estimate_seconds`: a few timed steps). A budget scales the
training of the stages still to train so that the estimated total fits: it chooses
``step_scale``, the share of the refiners' epochs and of the converged net's cap that is trained
(the coarse U-Net keeps the report's few epochs: it is the experiment's premise, and it takes
seconds). The largest share on a grid of 0.05 whose estimate fits is chosen, never below
:data:`FLOOR`. A stage's epochs are part of its checkpoint's name, so a stage trained at one
share counts as trained only at that share.

The stages of one comparison must train at one share. The choice is therefore saved in
``runs/<profile>/budget.json`` with what it was made for (the budget, the data, the seed and
the other settings), and every notebook opened with the same budget, and a rerun after an
interruption, reuses it instead of choosing again (with less left to train, choosing afresh
would pick a larger share for the rest). ``results.json`` records it, and
``--set step_scale=<share>`` reproduces the run exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from ..core.checkpoint import atomic_write_text, display_path
from ..core.config import changed_settings
from .timing import StepTimes, estimate_seconds, measure

# the smallest share of the epochs a budget chooses: at 0.25 the refiners still gain most of what
# they gain at the full schedule over the coarse U-Net (docs/running.md#the-budget: measured on
# the real sample, 3 seeds); below it a budget that cannot be met says so instead
FLOOR = 0.25
GRID = 0.05  # the shares tried: 1, 0.95, ..., FLOOR
# what a session holds besides the estimated training (installing, downloading and decoding the
# data, figures, the notebooks' sweeps) and the estimates' error (within 19% on the H200): a
# quarter of it
SESSION_SHARE = 0.75
PLANNED_ENV = "WORKBOOK_PLANNED"  # set by `python -m helpers run` once it has printed the plan


@dataclass(frozen=True)
class BudgetChoice:
    """A budget of ``minutes`` and the ``step_scale`` chosen for it; ``full`` and ``seconds``
    are the estimated seconds of the stages still to train at the full schedule and at the
    chosen share; ``fits`` is False where even :data:`FLOOR` does not fit."""

    minutes: float
    step_scale: float
    full: float
    seconds: float
    fits: bool

    def describe(self) -> str:
        head = f"budget {self.minutes:g} min"
        if self.step_scale == 1:
            return (
                f"{head}: the full schedule fits (about {_duration(self.seconds)}); nothing scaled"
            )
        line = (
            f"{head}: step_scale {self.step_scale:g} (the refiners and the converged U-Net train "
            f"{self.step_scale:.0%} of their epochs), about {_duration(self.seconds)} instead of "
            f"{_duration(self.full)}"
        )
        if not self.fits:
            line += (
                f"; it does not fit: {FLOOR:g} is the floor (below it the refiners learn too "
                "little to compare), so plan a longer session or a smaller profile"
            )
        return line

    def record(self) -> dict:
        """What ``results.json`` keeps of it (minutes rounded for reading)."""
        row = asdict(self)
        row["full_minutes"] = round(row.pop("full") / 60, 1)
        row["estimate_minutes"] = round(row.pop("seconds") / 60, 1)
        return row


def total_seconds(wb, step_scale: float, times: StepTimes) -> float:
    """Estimated seconds of every stage still to train if ``wb`` trained at ``step_scale``."""
    scaled = replace(wb, cfg=wb.cfg.replace(step_scale=step_scale))
    return sum(estimate_seconds(scaled, converged=True, times=times).values())


def choose(wb, minutes: float, times: StepTimes | None = None) -> BudgetChoice:
    """The largest ``step_scale`` on the grid whose estimate fits ``minutes`` (or the floor)."""
    times = times or measure(wb)
    full = total_seconds(wb, 1.0, times)
    scale, seconds = 1.0, full
    while seconds > minutes * 60 and scale - GRID >= FLOOR - 1e-9:
        scale = round(scale - GRID, 2)
        seconds = total_seconds(wb, scale, times)
    return BudgetChoice(minutes, scale, full, seconds, seconds <= minutes * 60)


def budget_file(wb):
    return wb.profile_dir / "budget.json"


def _made_for(wb, minutes: float) -> dict:
    """What a saved choice must match to be reused."""
    settings = {k: v for k, v in changed_settings(wb.cfg).items() if k != "step_scale"}
    return {
        "minutes": minutes,
        "data_source": wb.data_id,
        "seed": wb.cfg.seed,
        "settings": settings,
    }


def apply_budget(wb, minutes: float, verbose: bool = True):
    """Fit ``wb``'s training into ``minutes``: choose (or reuse) the share and set
    ``wb.cfg.step_scale`` and ``wb.budget``; says what it chose. A ``step_scale`` set by hand
    wins (the budget is then not applied, and that is said)."""
    if wb.cfg.step_scale != 1:
        if verbose:
            print(
                f"budget {minutes:g} min not applied: step_scale={wb.cfg.step_scale:g} was set "
                "explicitly"
            )
        return wb
    key, path = _made_for(wb, minutes), budget_file(wb)
    saved = _read(path)
    if saved and saved.get("made_for") == key:
        choice, how = BudgetChoice(**saved["choice"]), f" (chosen earlier: {display_path(path)})"
    else:
        try:
            wb.times = wb.times or measure(wb)
        # e.g. a student's refiner that is not written yet: train in full rather than fail
        except Exception as exc:
            if verbose:
                print(
                    f"budget {minutes:g} min not applied: the steps could not be timed "
                    f"({_reason(exc)})"
                )
            return wb
        choice, how = choose(wb, minutes, wb.times), ""
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps({"made_for": key, "choice": asdict(choice)}, indent=2), path)
    wb.cfg = wb.cfg.replace(step_scale=choice.step_scale)
    wb.budget = choice
    if verbose:
        print(choice.describe() + how)
    return wb


def _read(path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
        BudgetChoice(**doc["choice"])  # a file of another version is simply not reused
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def plan_or_reason(wb) -> list[str]:
    """:func:`plan_lines`, or one line saying why there is no plan (the plan is a courtesy: a
    model that cannot be timed yet, such as a student's unfinished refiner, never stops the
    training it precedes)."""
    try:
        return plan_lines(wb)
    except Exception as exc:
        return [f"plan: not estimated ({_reason(exc)})"]


def plan_lines(wb) -> list[str]:
    """The stages still to train, each with its estimated time on this machine, and the total
    (and the budget's choice, where one was applied)."""
    wb.times = wb.times or measure(wb)
    estimate = estimate_seconds(wb, converged=True, times=wb.times)
    todo = {name: s for name, s in estimate.items() if s > 0}
    if not todo:
        return ["plan: every stage is trained already: the notebooks load them"]
    lines = [f"plan: {len(todo)} stages to train, about {_duration(sum(todo.values()))} in all"]
    lines += [f"  {name:20s} {_duration(seconds):>9s}" for name, seconds in todo.items()]
    if wb.budget is not None:
        lines.append(wb.budget.describe())
    return lines


def suggested_budget(session_minutes: float = 60) -> int:
    """Minutes of training to ask for in a session of ``session_minutes`` (see
    :data:`SESSION_SHARE`)."""
    return int(session_minutes * SESSION_SHARE)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
