"""The training budget (``--budget MINUTES``, ``WORKBOOK_BUDGET``): what it scales, how it
chooses, that it says so, records it and can be reproduced, and that the plan it prints leaves
training untouched."""

import collections
import json

import pytest

from helpers.core.checkpoint import atomic_save
from helpers.core.config import parse_budget
from helpers.workbook import plan, stages
from helpers.workbook.timing import StepTimes

# the smoke profile trains its refiners 1 epoch: give them 8 so that there is something to scale
EIGHT = {"refine_epochs": 8}


@pytest.fixture
def wb(folders):
    from helpers.workbook.session import open_workbook

    return open_workbook("smoke", seed=0, verbose=False, **folders, **EIGHT)


def one_second_steps(wb) -> StepTimes:
    """Every training step 1 s, nothing else: an estimate is then the steps trained."""
    return StepTimes(
        per_kind=collections.defaultdict(lambda: (1.0, 0.0)),
        loading=0.0,
        steps_per_epoch=len(wb.data["train"]) / wb.cfg.batch_size,
        test_share=1.0,
    )


def epochs(wb, scale) -> dict:
    scaled = type(wb)(**{**wb.__dict__, "cfg": wb.cfg.replace(step_scale=scale)})
    return {n: s.train_epochs(scaled) for n, s in stages.REGISTRY.items() if s.trained}


@pytest.mark.parametrize("text", ["0", "-5", "abc", "inf", "nan"])
def test_a_budget_that_is_not_a_positive_number_is_refused_by_name(text):
    with pytest.raises(ValueError, match=rf"^--budget={text!r} is not a positive number"):
        parse_budget(text, "--budget")


def test_an_unset_budget_is_none_and_minutes_are_read_as_numbers():
    assert parse_budget(None) is None and parse_budget("") is None and parse_budget("none") is None
    assert parse_budget("45") == 45.0 and parse_budget("7.5") == 7.5


def test_step_scale_scales_the_refiners_and_the_converged_cap_never_the_coarse_net(wb):
    full, half = epochs(wb, 1.0), epochs(wb, 0.5)
    assert full["coarse"] == half["coarse"] == wb.cfg.coarse_epochs  # the report's premise
    for name in ("control", "cspn", "dyspn", "coarse-longer", "converged+dyspn"):
        assert (full[name], half[name]) == (8, 4), name
    assert (full["converged"], half["converged"]) == (8, 4)  # smoke's cap is 8
    assert epochs(wb, 0.01)["cspn"] == 1  # never 0 epochs
    # the epochs name the checkpoints: a scaled refiner is never mistaken for a full one, the
    # coarse net (and the filter on it) are shared
    scaled = type(wb)(**{**wb.__dict__, "cfg": wb.cfg.replace(step_scale=0.5)})
    for name, same in (("coarse", True), ("guided-filter", True), ("cspn", False)):
        assert (stages.get(name).checkpoint(wb) == stages.get(name).checkpoint(scaled)) is same
    assert stages.get("converged").checkpoint(wb) != stages.get("converged").checkpoint(scaled)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="step_scale must be in"):
            wb.cfg.replace(step_scale=bad)


def test_a_budget_of_half_the_estimate_trains_about_half_the_steps(wb):
    """With every step 1 s the estimate counts steps: half the estimate as the budget chooses
    the largest share on the grid that fits, and the steps it trains are about half (a little
    under: the coarse U-Net's steps are never scaled)."""
    times = one_second_steps(wb)
    full = plan.total_seconds(wb, 1.0, times)
    choice = plan.choose(wb, full / 2 / 60, times)
    assert choice.fits and choice.full == pytest.approx(full)
    assert choice.seconds <= full / 2 < plan.total_seconds(wb, choice.step_scale + plan.GRID, times)
    assert 0.4 <= choice.seconds / full <= 0.5 and choice.step_scale < 0.5
    assert "step_scale" in choice.describe() and "does not fit" not in choice.describe()


def test_a_generous_budget_changes_nothing_and_an_impossible_one_stops_at_the_floor(wb):
    times = one_second_steps(wb)
    full = plan.total_seconds(wb, 1.0, times)
    roomy = plan.choose(wb, 2 * full / 60, times)
    assert roomy.step_scale == 1 and roomy.fits and "nothing scaled" in roomy.describe()
    tight = plan.choose(wb, 1 / 60, times)  # one second
    # the floor's epochs (of two shares that round to the same epochs, the larger is named)
    assert not tight.fits and epochs(wb, tight.step_scale) == epochs(wb, plan.FLOOR)
    assert tight.seconds == pytest.approx(plan.total_seconds(wb, plan.FLOOR, times))
    assert f"{plan.FLOOR:g} is the floor" in tight.describe()


def test_after_an_interruption_the_same_budget_resumes_at_the_same_share(wb, folders, monkeypatch):
    """Half the stages trained at the chosen share, then the run stops. With less left to train a
    larger share would now fit; but the stages of one comparison must train at one share, so the
    same budget reuses the saved choice and resumes at it."""
    from helpers.workbook.session import open_workbook

    monkeypatch.setattr(plan, "measure", lambda wb, converged=True: one_second_steps(wb))
    minutes = plan.total_seconds(wb, 1.0, one_second_steps(wb)) * 0.6 / 60
    first = plan.apply_budget(wb, minutes, verbose=False).budget
    for name in ("coarse", "coarse-longer", "control", "cspn", "converged"):
        path = stages.get(name).checkpoint(wb)  # wb trains at the chosen share now
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"state_dict": {}, "spec": {}, "epoch": 99, "finished": True}, path)
    fresh = open_workbook("smoke", seed=0, verbose=False, **folders, **EIGHT)
    assert plan.choose(fresh, minutes).step_scale > first.step_scale  # what choosing afresh does
    again = open_workbook("smoke", seed=0, verbose=False, budget=minutes, **folders, **EIGHT)
    assert again.cfg.step_scale == first.step_scale
    left = plan.total_seconds(again, again.cfg.step_scale, one_second_steps(again))
    assert left < first.seconds  # only what is left, at the same share


def test_the_choice_is_said_saved_reused_and_a_hand_set_share_wins(
    wb, folders, monkeypatch, capsys
):
    from helpers.workbook.session import open_workbook

    monkeypatch.setattr(plan, "measure", lambda wb, converged=True: one_second_steps(wb))
    minutes = plan.total_seconds(wb, 1.0, one_second_steps(wb)) / 2 / 60
    plan.apply_budget(wb, minutes)
    said = capsys.readouterr().out
    assert said.startswith(f"budget {minutes:g} min: step_scale {wb.cfg.step_scale:g}")
    assert wb.cfg.step_scale < 1 and wb.budget.step_scale == wb.cfg.step_scale
    saved = json.loads(plan.budget_file(wb).read_text())
    assert saved["choice"]["step_scale"] == wb.cfg.step_scale
    # the next notebook, the same budget: reused without timing anything
    monkeypatch.setattr(plan, "measure", lambda *a, **k: pytest.fail("timed again"))
    monkeypatch.setenv("WORKBOOK_BUDGET", f"{minutes!r}")
    later = open_workbook("smoke", seed=0, **folders, **EIGHT)
    assert later.cfg.step_scale == wb.cfg.step_scale
    assert "chosen earlier: " in capsys.readouterr().out
    # another seed is another run: not reused
    with pytest.raises(pytest.fail.Exception, match="timed again"):
        open_workbook("smoke", seed=1, verbose=False, **folders, **EIGHT)
    # a share set by hand wins over the budget, and that is said
    hand = open_workbook("smoke", seed=0, **folders, **EIGHT, step_scale=0.3)
    assert hand.cfg.step_scale == 0.3 and hand.budget is None
    assert "not applied: step_scale=0.3 was set explicitly" in capsys.readouterr().out
    monkeypatch.setenv("WORKBOOK_BUDGET", "soon")
    with pytest.raises(ValueError, match="WORKBOOK_BUDGET='soon' is not a positive number"):
        open_workbook("smoke", seed=0, verbose=False, **folders)


def test_a_budgeted_run_is_recorded_and_set_step_scale_reproduces_it_exactly(folders, tmp_path):
    """Train under a budget of half the estimate (timed for real), read what results.json
    recorded, train again elsewhere with ``step_scale`` set to it: the same epochs and the same
    metrics, to the last digit."""
    from helpers.workbook.results import record_results
    from helpers.workbook.session import open_workbook
    from helpers.workbook.workflow import run_stage

    wb = open_workbook("smoke", seed=0, verbose=False, **folders, **EIGHT)
    wb.times = plan.measure(wb)
    minutes = plan.total_seconds(wb, 1.0, wb.times) / 2 / 60
    plan.apply_budget(wb, minutes, verbose=False)
    assert wb.cfg.step_scale < 1
    first = [run_stage(wb, name, progress=False) for name in ("coarse", "cspn")]
    doc = record_results(wb, *first)
    assert doc["budget"]["step_scale"] == doc["settings"]["step_scale"] == wb.cfg.step_scale
    assert doc["budget"]["estimate_minutes"] <= round(minutes, 1) + 0.05
    assert doc["stages"]["cspn"]["epochs"] == stages.scaled(8, wb.cfg.step_scale) < 8
    assert doc["stages"]["coarse"]["epochs"] == wb.cfg.coarse_epochs

    again = open_workbook(
        "smoke",
        seed=0,
        verbose=False,
        runs_dir=tmp_path / "elsewhere",
        data_dir=folders["data_dir"],
        **{**EIGHT, "step_scale": doc["settings"]["step_scale"]},
    )
    second = [run_stage(again, name, progress=False) for name in ("coarse", "cspn")]
    for a, b in zip(first, second):
        assert len(a.history.epoch) == len(b.history.epoch)
        assert a.val_metrics == b.val_metrics and a.test_metrics == b.test_metrics, a.name


def test_timing_the_steps_leaves_every_random_state_as_it_was(wb):
    """The plan is timed between a stage's seeding and its training: Python's, NumPy's and
    torch's random states must come out of it unchanged."""
    import random

    import numpy as np
    import torch

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    plan.measure(wb)
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2])


def test_the_plan_a_notebook_prints_before_training_changes_nothing_it_trains(folders, capsys):
    """The first stage a notebook trains prints the plan (timed steps of every model) first, once;
    the stage trains exactly as without it."""
    from helpers.workbook.session import open_workbook
    from helpers.workbook.workflow import run_stage

    shown = open_workbook("smoke", seed=0, verbose=False, **folders)
    with_plan = run_stage(shown, "coarse", progress=True)
    run_stage(shown, "coarse-longer", progress=True)
    out = capsys.readouterr().out
    assert out.count("plan: ") == 1 and "  coarse " in out and shown.plan_shown
    quiet = open_workbook(
        "smoke",
        seed=0,
        verbose=False,
        runs_dir=folders["runs_dir"] / "b",
        data_dir=folders["data_dir"],
    )
    quiet.plan_shown = True  # as under `python -m helpers run`, which printed it already
    without = run_stage(quiet, "coarse", progress=True)
    assert "plan: " not in capsys.readouterr().out
    assert with_plan.val_metrics == without.val_metrics
    assert with_plan.history.train_loss == without.history.train_loss
    # everything trained: the plan says so (the guided filter, tuned in every session, is no
    # stage to train)
    for name in stages.REGISTRY:
        if stages.get(name).trained and name not in ("coarse", "coarse-longer"):
            path = stages.get(name).checkpoint(shown)
            atomic_save({"state_dict": {}, "spec": {}, "epoch": 99, "finished": True}, path)
    assert plan.plan_lines(shown) == [
        "plan: every stage is trained already: the notebooks load them"
    ]


def unfinished(*methods):
    """A student's refiners of ``methods`` whose exercises are not solved: their loss raises."""
    from helpers.models.refiner import Refiner

    real = Refiner.training_loss

    def loss(self, images, targets):
        if self.method in methods:
            raise NotImplementedError("Exercise 9 (DySPN step) is not solved yet")
        return real(self, images, targets)

    return loss


def test_a_refiner_that_cannot_be_timed_yet_is_counted_at_the_slowest_that_can(wb, monkeypatch):
    from helpers.models.refiner import Refiner

    monkeypatch.setattr(Refiner, "training_loss", unfinished("dyspn"))
    times = plan.measure(wb)
    dyspn = next(k for k in times.per_kind if k and k[0] == "dyspn")
    timed = [v for k, v in times.per_kind.items() if k and k[0] != "dyspn"]
    assert times.per_kind[dyspn] == max(timed) and list(times.untimed) == [dyspn]
    assert "NotImplementedError: Exercise 9" in times.untimed[dyspn]
    wb.times = times
    lines = plan.plan_lines(wb)
    assert any(line.startswith("  (dyspn not timed yet (NotImplementedError") for line in lines)


def test_a_budget_that_cannot_be_timed_waits_for_the_first_stage_it_scales(
    folders, monkeypatch, capsys
):
    """A student edition's notebook 01: no refiner runs yet, so the budget cannot be chosen when
    the run opens. The coarse U-Net trains at its own epochs; the first stage the budget scales
    chooses it then (the refiners can be timed by then), and every later stage shares it."""
    from helpers.models.refiner import Refiner
    from helpers.workbook.session import open_workbook
    from helpers.workbook.workflow import run_stage

    solved = Refiner.training_loss
    monkeypatch.setattr(Refiner, "training_loss", unfinished("control", "cspn", "dyspn"))
    minutes = 0.05  # 3 s: the floor, whatever this machine's speed
    wb = open_workbook("smoke", seed=0, budget=minutes, **folders, **EIGHT)
    assert wb.pending_budget == minutes and wb.cfg.step_scale == 1 and wb.budget is None
    assert "chosen when the first stage it scales is about to train" in capsys.readouterr().out
    run_stage(wb, "coarse", progress=False)  # never scaled: the budget still waits
    assert wb.pending_budget == minutes
    monkeypatch.setattr(Refiner, "training_loss", solved)  # the student solves the exercises
    run_stage(wb, "coarse-longer", progress=False)
    assert wb.pending_budget is None and wb.budget is not None
    assert wb.cfg.step_scale == wb.budget.step_scale < 1
    assert plan.budget_file(wb).exists()


def test_where_nothing_fits_the_quickest_share_is_chosen(wb):
    """Stages already trained at the full schedule (an earlier run without a budget) are counted
    again at any smaller share: where no share fits, the quickest one wins, even the full one."""
    times = one_second_steps(wb)
    for name, stage in stages.REGISTRY.items():
        if stage.trained and name not in ("dyspn",):
            path = stage.checkpoint(wb)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save({"state_dict": {}, "spec": {}, "epoch": 99, "finished": True}, path)
    choice = plan.choose(wb, 1 / 60, times)  # a second: nothing fits
    assert not choice.fits and choice.step_scale == 1
    assert choice.seconds == pytest.approx(plan.total_seconds(wb, 1.0, times))
    assert choice.seconds < plan.total_seconds(wb, plan.FLOOR, times)
