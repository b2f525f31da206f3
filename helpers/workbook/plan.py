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
from . import stages
from .timing import StepTimes, estimate_seconds, first_line, measure

# the smallest share of the epochs a budget chooses: at 0.25 every refiner is still above the
# coarse U-Net and above the coarse net trained on for as long; at 0.1 the net trained on falls
# below the coarse net and the controls stop being controls (docs/running.md#the-floor-measured:
# the real sample, 3 seeds). A budget that 0.25 cannot meet says so instead.
FLOOR = 0.25
GRID = 0.05  # the shares tried: 1, 0.95, ..., FLOOR
# the share of a session to ask for: the estimates ran 19% (the H200's chain) and 22% (this
# CPU's converged U-Net) under the time taken, so 0.6 of a session is about 0.75 of it in fact,
# and the rest is left for installing, downloading and decoding the data, the figures and sweeps
SESSION_SHARE = 0.6
PLANNED_ENV = "WORKBOOK_PLANNED"  # set by `python -m helpers run` for its kernels


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
                f"; it does not fit: {FLOOR:g} is the floor (below it the controls stop being "
                "controls), so plan a longer session or a smaller profile"
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
    """The largest ``step_scale`` on the grid whose estimate fits ``minutes``; where none does,
    the quickest share on the grid (the floor, unless stages already trained at a larger share
    make that one quicker)."""
    times = times or measure(wb)
    shares = [round(1 - k * GRID, 2) for k in range(round((1 - FLOOR) / GRID) + 1)]
    full = total_seconds(wb, 1.0, times)
    quickest = (full, -1.0)  # (seconds, -share): of two as quick, the larger share
    for scale in shares:
        seconds = full if scale == 1 else total_seconds(wb, scale, times)
        if seconds <= minutes * 60:
            return BudgetChoice(minutes, scale, full, seconds, True)
        quickest = min(quickest, (seconds, -scale))
    return BudgetChoice(minutes, -quickest[1], full, quickest[0], False)


def budget_file(wb):
    """``budget.json`` of this run (its data and seed: ``runs/<profile>/<data>/seed<k>/``)."""
    return wb.run_dir / "budget.json"


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
    ``wb.cfg.step_scale`` and ``wb.budget``; says what it chose. A ``step_scale`` below 1 set by
    hand wins (the budget is then not applied, and that is said). Where the steps cannot be timed
    yet (a student's coarse U-Net or every refiner unfinished) the choice waits
    (``wb.pending_budget``) until the first stage it scales is about to train
    (:func:`helpers.workbook.workflow.run_stage`)."""
    wb.pending_budget = None
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
        # a student's models that are not written yet: choose when the first scaled stage trains
        except Exception as exc:
            wb.pending_budget = minutes
            if verbose:
                print(
                    f"budget {minutes:g} min: chosen when the first stage it scales is about to "
                    f"train (the steps cannot be timed yet: {first_line(exc)})"
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
        choice = BudgetChoice(**doc["choice"])  # a file of another version is simply not reused
        if not FLOOR <= choice.step_scale <= 1:  # nor one edited by hand out of range
            return None
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan_or_reason(wb) -> list[str]:
    """:func:`plan_lines`, or one line saying why there is no plan (the plan is a courtesy: a
    model that cannot be timed yet, such as a student's unfinished refiner, never stops the
    training it precedes)."""
    try:
        return plan_lines(wb)
    except Exception as exc:
        return [f"plan: not estimated ({first_line(exc)})"]


def plan_lines(wb) -> list[str]:
    """The stages still to train, each with its estimated time on this machine, and the total
    (and the budget's choice, where one was applied)."""
    wb.times = wb.times or measure(wb)
    estimate = estimate_seconds(wb, converged=True, times=wb.times)
    # the guided filter is tuned in every session (nothing of it is saved): not a stage to train
    todo = {n: s for n, s in estimate.items() if s > 0 and stages.get(n).trained}
    if not todo:
        return ["plan: every stage is trained already: the notebooks load them"]
    total = sum(todo.values())
    lines = [
        f"plan: {len(todo)} stage{'s' if len(todo) > 1 else ''} to train, about "
        f"{_duration(total)} in all"
    ]
    lines += [f"  {name:20s} {_duration(seconds):>9s}" for name, seconds in todo.items()]
    for kind, why in wb.times.untimed.items():
        lines.append(f"  ({kind[0]} not timed yet ({why}): counted at the slowest refiner)")
    if wb.budget is not None:
        lines.append(wb.budget.describe())
    return lines


def suggested_budget(session_minutes: float = 60) -> int:
    """Minutes of training to ask for in a session of ``session_minutes`` (see
    :data:`SESSION_SHARE`)."""
    return int(session_minutes * SESSION_SHARE)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
