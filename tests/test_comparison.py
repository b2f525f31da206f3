"""The comparison chain: iteration sweep, diffusion-suppression ablation, the controls, the
guided-filter baseline, timings and the quality benchmark's summary."""

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from toys import toy_data as squares

from helpers.models.propagation.propagators import DySPN
from helpers.models.refiner import Refiner
from helpers.training.evaluation import evaluate_probs, iteration_sweep, predict
from helpers.workbook import stages as registry
from helpers.workbook.timing import estimate_seconds, seconds_per_image

STAGES, CONVERGED_STAGES = registry.SETTINGS["coarse"], registry.SETTINGS["converged"]


def toy_data(n=8, size=24, seed=0):
    return squares(n, size, seed, side=9)


class BlurryCoarse(torch.nn.Module):
    """A stand-in coarse segmenter: bright regions are pet, seen through a 7x7 blur."""

    def forward(self, image):
        bright = torch.nn.functional.avg_pool2d(
            image.mean(1, keepdim=True), 7, 1, 3, count_include_pad=False
        )
        pet = torch.sigmoid(12 * (bright - 0.45))
        return torch.cat([1 - pet, pet], 1)


def perturbed_refiner(method, seed=0):
    torch.manual_seed(seed)
    coarse = BlurryCoarse()
    model = Refiner(coarse, method=method, width=4, depth=2, iterations=3)
    with torch.no_grad():  # leave the zero initialisation, so that propagation really acts
        for p in model.guidance.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("method", ["cspn", "dyspn"])
def test_sweep_entries_are_the_maps_of_each_t(method):
    data, model = toy_data(), perturbed_refiner(method)
    sweep = iteration_sweep(model, data, "cpu", batch_size=3, max_iterations=5)
    assert len(sweep) == 6
    # t = 0 is the start map (the coarse map), t = trained T is what the model predicts
    coarse_metrics, _ = evaluate_probs(predict(model.coarse, data, 4, "cpu"), data)
    trained, _ = evaluate_probs(predict(model, data, 4, "cpu"), data)
    assert sweep[0] == pytest.approx(coarse_metrics)
    assert sweep[3] == pytest.approx(trained)
    assert len({round(s["miou"], 6) for s in sweep}) > 1  # propagation changed something
    with pytest.raises(ValueError, match="no propagation"):
        iteration_sweep(perturbed_refiner("control"), data, "cpu", 4)


def test_without_suppression_negative_affinities_are_dropped():
    g = torch.Generator().manual_seed(0)
    h0 = torch.softmax(3 * torch.randn(2, 2, 10, 12, generator=g, dtype=torch.float64), 1)
    raw = torch.randn(2, 48, 10, 12, generator=g, dtype=torch.float64)
    att = torch.randn(2, 24, 10, 12, generator=g, dtype=torch.float64)
    spn = DySPN(6)
    off = spn(h0, raw, att, suppression=False)
    torch.testing.assert_close(off.final, spn(h0, raw.clamp(min=0), att).final)
    assert not torch.allclose(off.final, spn(h0, raw, att).final)
    # without negative affinities the ablation changes nothing
    torch.testing.assert_close(
        spn(h0, raw.abs(), att, suppression=False).final, spn(h0, raw.abs(), att).final
    )
    for m in off.maps:
        torch.testing.assert_close(m.sum(1), torch.ones_like(m[:, 0]))
    constant = torch.full_like(h0, 0.5)
    assert all(torch.equal(m, constant) for m in spn(constant, raw, att, suppression=False).maps)


def test_seconds_per_image_restores_train_mode():
    model = perturbed_refiner("cspn").train()
    assert seconds_per_image(model, toy_data(5), "cpu", batch_size=2) > 0
    assert model.training


@pytest.fixture
def smoke_workbook(folders):
    from helpers.workbook import session

    return session.open_workbook("smoke", seed=0, verbose=False, **folders)


def test_estimates_count_what_training_runs(smoke_workbook, monkeypatch):
    """With a step timed at 1 s, a pass of the training batches at 10 s and an evaluation of the
    validation split at 100 s (1000 s for a refiner), a stage's estimate is, per epoch, its
    full-batch steps, one loading pass and one evaluation, plus validation and test evaluated
    once at the end (not the test split every epoch); the guided filter evaluates a grid of 9."""
    from helpers.models.refiner import Refiner
    from helpers.workbook import timing

    wb = smoke_workbook
    monkeypatch.setattr(timing, "step_seconds", lambda *args, **kwargs: 1.0)
    monkeypatch.setattr(timing, "loading_seconds", lambda *args, **kwargs: 10.0)
    monkeypatch.setattr(
        timing,
        "evaluation_seconds",
        lambda model, *args, **kwargs: 1000.0 if isinstance(model, Refiner) else 100.0,
    )
    got = timing.estimate_seconds(wb)
    bs, test_share = wb.cfg.batch_size, len(wb.data["test"]) / len(wb.data["val"])
    for name, evaluation in (("coarse", 100.0), ("coarse-longer", 100.0), ("dyspn", 1000.0)):
        epochs = registry.get(name).train_epochs(wb)
        want = epochs * (len(wb.data["train"]) / bs + 10.0 + evaluation) + evaluation * (
            1 + test_share
        )
        assert got[name] == pytest.approx(want), name
    assert got["guided-filter"] == pytest.approx(100.0 * (9 + test_share))
    # an interrupted run counts only the epochs it has left (fit resumes it); a finished one none
    from helpers.core.checkpoint import atomic_save

    stage = registry.get("coarse")
    epochs, path = stage.train_epochs(wb), stage.checkpoint(wb)
    assert epochs > 1
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"state_dict": {}, "spec": {}, "epoch": 1, "finished": False}, path)
    left = (epochs - 1) * (len(wb.data["train"]) / bs + 10.0 + 100.0) + 100.0 * (1 + test_share)
    assert timing.estimate_seconds(wb, converged=False)["coarse"] == pytest.approx(left)
    # early stopping finished it after one epoch
    atomic_save({"state_dict": {}, "spec": {}, "epoch": 1, "finished": True}, path)
    assert timing.estimate_seconds(wb, converged=False)["coarse"] == 0
    path.unlink()


def test_equal_compute_control_and_guided_filter_stages(smoke_workbook):
    from helpers.analysis.metrics import SegmentationMeter
    from helpers.models.guided_filter import filter_probabilities
    from helpers.workbook import workflow

    wb = smoke_workbook
    before = estimate_seconds(wb)
    assert set(before) == set(STAGES + CONVERGED_STAGES)
    assert set(estimate_seconds(wb, converged=False)) == set(STAGES)
    assert all(v > 0 for v in before.values())
    coarse = workflow.coarse_stage(wb, progress=False)
    longer = workflow.coarse_longer_stage(wb, progress=False)
    assert registry.get("coarse-longer").checkpoint(wb).exists()
    assert estimate_seconds(wb)["coarse"] == 0 and estimate_seconds(wb)["coarse-longer"] == 0
    assert (
        longer.settings["extra_epochs"]
        == registry.get("cspn").train_epochs(wb)
        == len(longer.history.epoch)
    )
    assert longer.parameters == coarse.parameters
    # it trains on from the coarse weights (the stage builds it as a copy of them), and it did train
    fresh = registry.get("coarse-longer").build(wb.cfg, coarse.model)
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), coarse.model.state_dict().values())
    )
    assert not torch.equal(longer.val_probs, coarse.val_probs)
    # a stage keeps the per-image counts it was scored with (the benchmarks' bootstrap reads them)
    for split, probs, counts, metrics in (
        ("val", longer.val_probs, longer.val_counts, longer.val_metrics),
        ("test", longer.test_probs, longer.test_counts, longer.test_metrics),
    ):
        meter = SegmentationMeter()
        meter.update(probs.argmax(1), wb.data[split].targets.long())
        assert counts[0].shape[0] == len(wb.data[split]) and metrics == meter.summary()
        assert torch.equal(counts[0].sum(0), meter.cm) and torch.equal(
            counts[1].sum(0), meter.bcounts
        )

    grid = {"radius": (1, 3), "eps": (1e-3, 1e-1)}
    gf = workflow.guided_filter_stage(wb, grid)
    assert (
        gf.parameters == 0
        and gf.settings["radius"] in grid["radius"]
        and gf.settings["eps"] in grid["eps"]
    )
    val = wb.data["val"]
    best = 0.0
    for r in grid["radius"]:
        for e in grid["eps"]:
            meter = SegmentationMeter()
            meter.update(
                filter_probabilities(val.images.float() / 255, coarse.val_probs, r, e).argmax(1),
                val.targets.long(),
            )
            best = max(best, meter.summary()["miou"])
    assert gf.val_metrics["miou"] == pytest.approx(best)


def test_converged_setting_builds_on_its_own_net(smoke_workbook):
    """The converged net is trained with early stopping into its own checkpoint; its refiners
    and its equal-compute control start from it, not from the minimally trained coarse net."""
    from helpers.workbook import workflow

    wb = smoke_workbook
    coarse = workflow.coarse_stage(wb, progress=False)
    conv = workflow.coarse_stage(wb, progress=False, base="converged")
    assert registry.get("converged").checkpoint(wb) != registry.get("coarse").checkpoint(wb)
    assert (
        conv.history.best_epoch is not None
        and len(conv.history.epoch) <= wb.cfg.converged_max_epochs
    )
    assert conv.val_metrics["miou"] == pytest.approx(
        conv.history.val[conv.history.best_epoch - 1]["miou"], abs=1e-9
    )
    before = [t.clone() for t in conv.model.state_dict().values()]
    refined = workflow.refine_stage(wb, "cspn", progress=False, base="converged")
    assert (
        refined.name == "converged+cspn" and registry.get("converged+cspn").checkpoint(wb).exists()
    )
    assert refined.model.coarse is conv.model  # on top of the converged net itself
    for a, b in zip(conv.model.state_dict().values(), before):
        assert torch.equal(a, b)  # and training the refiner left it unchanged
    longer = workflow.coarse_longer_stage(wb, progress=False, base="converged")
    assert longer.name == "converged-longer"
    assert longer.settings["extra_epochs"] == registry.get("converged+cspn").train_epochs(wb)
    assert not torch.equal(conv.val_probs, coarse.val_probs)
    with pytest.raises(ValueError, match="base must be one of"):
        workflow.refine_stage(wb, "cspn", base="pretrained")


def _benchmark(name: str):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quality_module():
    return _benchmark("quality")


def test_quality_summary_mean_spread_and_gains():
    q = _quality_module()
    row = lambda stage, m, b: {
        "stage": stage,
        "label": stage,
        "parameters": 1,
        "miou": m,
        "pet_iou": m,  # noqa: E731
        "boundary_iou": b,
        "train_seconds": 1.0,
        "ms_per_image": 2.0,
    }
    per_seed = {
        0: [
            row("coarse", 0.60, 0.30),
            row("dyspn", 0.70, 0.40),
            row("converged", 0.70, 0.4),
            {**row("converged+dyspn", 0.75, 0.5), "base": "converged"},
        ],
        1: [
            row("coarse", 0.64, 0.30),
            row("dyspn", 0.70, 0.44),
            row("converged", 0.72, 0.4),
            {**row("converged+dyspn", 0.75, 0.5), "base": "converged"},
        ],
    }
    summary = q.summarise(per_seed)
    coarse, dyspn, _, on_converged = summary
    # over its own base
    assert on_converged["gain_miou"] == pytest.approx((0.04, 0.0141421), abs=1e-6)
    assert coarse["miou"] == pytest.approx((0.62, 0.0282843), abs=1e-6)
    assert coarse["gain_miou"] == pytest.approx((0.0, 0.0))
    assert dyspn["gain_miou"] == pytest.approx((0.08, 0.0282843), abs=1e-6)
    assert dyspn["gain_boundary_iou"] == pytest.approx((0.12, 0.0282843), abs=1e-6)
    assert "+0.080" in q.format_summary(summary)
    assert q.spread([0.5]) == (0.5, 0.0)


def test_quality_benchmark_end_to_end_with_overrides(tmp_path, monkeypatch, capsys):
    """The benchmark's main path on the smoke profile: a variant set with --set is trained with
    that setting (its checkpoint's spec says so), both splits are printed and written, one row
    per stage, and a misspelt field is refused by the command line."""
    import json

    q = _quality_module()
    assert (
        q.main(
            [
                "--profile",
                "smoke",
                "--seeds",
                "0",
                "--set",
                "coarse_size=16",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = tmp_path / "smoke" / "quality-synthetic-coarse_size-16-seeds0.json"
    doc = json.loads(out.read_text())
    assert doc["overrides"] == {"coarse_size": 16} and doc["config"]["coarse_size"] == 16
    assert set(doc["summary"]) == {"val", "test"} and doc["images"]["test"] > 0
    val, test = doc["per_seed"]["val"]["0"], doc["per_seed"]["test"]["0"]
    assert (
        [r["stage"] for r in val] == [r["stage"] for r in test] == list(STAGES + CONVERGED_STAGES)
    )
    pairs = {(r["after"], r["before"]) for r in doc["bootstrap"]["test"]}
    assert {
        ("dyspn", "coarse"),
        ("dyspn", "control"),
        ("dyspn", "coarse-longer"),
        ("converged+cspn", "converged"),
        ("converged+dyspn", "converged+control"),
        ("converged+dyspn", "converged+cspn"),
    } <= pairs
    for r in doc["bootstrap"]["test"]:
        assert r["miou"]["low"] <= r["miou"]["gain"] <= r["miou"]["high"]
    printed = capsys.readouterr().out
    assert (
        "val split" in printed
        and "test split" in printed
        and "paired per-image bootstrap" in printed
    )
    ckpt = next((tmp_path / "smoke").glob("synthetic-*/seed0/coarse-*[0-9a-f].pt"))
    # the variant really trained
    assert torch.load(ckpt, weights_only=False)["spec"]["coarse_size"] == 16
    with pytest.raises(SystemExit):  # argparse's error: a clear message, exit status 2
        q.main(["--profile", "smoke", "--set", "coarse_sise=16"])
    assert "coarse_sise" in capsys.readouterr().err


def test_select_keeps_the_registry_order_and_adds_each_stages_base():
    assert registry.select(["coarse"]) == STAGES
    # registry order, not the argument's
    assert registry.select(["converged", "coarse"]) == STAGES + CONVERGED_STAGES
    assert registry.select(["coarse"], ["dyspn", "control"]) == ("coarse", "control", "dyspn")
    assert registry.select(["coarse", "converged"], ["converged+cspn"]) == (
        "converged",
        "converged+cspn",
    )
    # not in the chosen settings
    with pytest.raises(ValueError, match="converged\\+dyspn.*choose among coarse"):
        registry.select(["coarse"], ["converged+dyspn"])
    with pytest.raises(ValueError, match="settings must be among"):
        registry.select(["coarsest"])


def test_quality_benchmark_trains_only_the_stages_asked_for(tmp_path, capsys):
    """--stages: only those stages and their base net are trained, tabulated and compared; the
    JSON names them; a stage outside the settings is the command line's error."""
    import json

    q = _quality_module()
    assert (
        q.main(
            [
                "--profile",
                "smoke",
                "--seeds",
                "0",
                "--settings",
                "coarse",
                "--stages",
                "dyspn",
                "--resamples",
                "100",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    doc = json.loads((tmp_path / "smoke" / "quality-synthetic-dyspn-seeds0.json").read_text())
    assert doc["stages"] == ["coarse", "dyspn"]
    assert [r["stage"] for r in doc["per_seed"]["test"]["0"]] == ["coarse", "dyspn"]
    assert [(r["after"], r["before"]) for r in doc["bootstrap"]["test"]] == [("dyspn", "coarse")]
    trained = {
        re.sub(r"-[0-9a-f]{8}(-predictions)?\.pt$", "", p.name)
        for p in (tmp_path / "smoke").glob("synthetic-*/seed0/*.pt")
    }
    assert trained == {"coarse", "dyspn"}  # no control, CSPN or converged net
    first_out = capsys.readouterr().out
    assert (
        "estimated training time: at most about" in first_out and "nothing trained" not in first_out
    )
    # the same command again loads both checkpoints: no estimate of "0.0 min", the same figures
    assert (
        q.main(
            [
                "--profile",
                "smoke",
                "--seeds",
                "0",
                "--settings",
                "coarse",
                "--stages",
                "dyspn",
                "--resamples",
                "100",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    again = capsys.readouterr().out
    assert "every stage is already trained for 1 seed(s)" in again and "nothing trained; " in again
    assert "estimated training time" not in again
    redo = json.loads((tmp_path / "smoke" / "quality-synthetic-dyspn-seeds0.json").read_text())
    assert redo["estimated_seconds"] == 0
    assert [{m: r[m] for m in q.METRICS} for r in redo["per_seed"]["test"]["0"]] == [
        {m: r[m] for m in q.METRICS} for r in doc["per_seed"]["test"]["0"]
    ]
    with pytest.raises(SystemExit):
        q.main(["--profile", "smoke", "--settings", "converged", "--stages", "dyspn"])
    assert "no stage 'dyspn'" in capsys.readouterr().err


def test_variants_compares_each_stage_under_two_configurations(tmp_path, capsys):
    """benchmarks/variants.py pairs the same stage under the baseline and the variant: only the
    stages the change touches are compared (a refiner setting leaves the base nets and the
    guided filter alone), every interval holds its gain, the variant really trained (the gains
    are not all zero), and a variant equal to the baseline compares nothing."""
    v = _benchmark("variants")
    # a narrower guidance U-Net can no longer start from the base net's weights
    table = v.compare(
        {},
        {"refiner_width": 4, "guidance_init": "scratch"},
        "smoke",
        None,
        [0],
        ["coarse"],
        resamples=200,
        runs_dir=str(tmp_path),
    )
    assert set(table) == {"test", "val"}
    assert list(table["test"]) == list(table["val"]) == ["control", "cspn", "dyspn"]
    for rows in table.values():
        for b in rows.values():
            for m in ("miou", "boundary_iou"):
                assert b[m]["low"] <= b[m]["gain"] <= b[m]["high"]
    assert any(b["miou"]["gain"] != 0 for b in table["test"].values())
    # the smoke profile's own width: the same checkpoints, nothing to compare
    same = v.compare(
        {},
        {"refiner_width": 8},
        "smoke",
        None,
        [0],
        ["coarse"],
        resamples=200,
        runs_dir=str(tmp_path),
    )
    assert same == {"test": {}, "val": {}}
    assert (
        v.main(
            [
                "--profile",
                "smoke",
                "--seeds",
                "0",
                "--settings",
                "coarse",
                "--variant",
                "refiner_width=8",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "no stage differs" in capsys.readouterr().out
    # --stages: only the stages asked for are compared (the others' checkpoints would differ too)
    only = v.compare(
        {},
        {"refiner_width": 4, "guidance_init": "scratch"},
        "smoke",
        None,
        [0],
        ["coarse"],
        resamples=200,
        runs_dir=str(tmp_path),
        stages=["dyspn"],
    )
    assert list(only["test"]) == ["dyspn"] and only["test"]["dyspn"] == table["test"]["dyspn"]
    with pytest.raises(SystemExit):
        v.main(
            [
                "--profile",
                "smoke",
                "--settings",
                "coarse",
                "--stages",
                "dypsn",
                "--variant",
                "refiner_width=4",
            ]
        )
    assert "no stage 'dypsn'" in capsys.readouterr().err


def test_refiners_started_from_the_trained_control(smoke_workbook):
    """A refiner variant with ``init_from``: its own name and checkpoint, a spec that names the
    control it starts from (a retrained control makes it another stage), the control loaded
    first, and training that starts at the control's map: the control trained on
    (``control-longer``) moves away from it, the budget is a refiner's."""
    from helpers.workbook import workflow

    wb = smoke_workbook
    control = workflow.refine_stage(wb, "control", progress=False)
    for method, name in (("control", "control-longer"), ("dyspn", "dyspn-from-control")):
        stage = registry.refiner("coarse", method).variant(wb.cfg, init_from="control")
        assert stage.name == name and stage.init_from == "control"
        assert stage.spec(wb) == {
            **registry.get(method).spec(wb),
            "init_from": registry.get("control").spec(wb),
        }
        assert stage.checkpoint(wb) != registry.get(method).checkpoint(wb)
    longer = workflow.refine_stage(wb, "control", init_from="control", progress=False)
    assert longer.name == "control-longer" and longer.model.coarse is control.model.coarse
    # the control is loaded and evaluated once for all the stages started from it, and a control
    # run again replaces the one held
    held = wb.stages["control"]
    assert (
        workflow.refine_stage(wb, "dyspn", init_from="control", progress=False).name
        == "dyspn-from-control"
    )
    assert wb.stages["control"] is held
    again = workflow.refine_stage(wb, "control", progress=False)
    assert wb.stages["control"] is again and again is not held
    assert len(longer.history.epoch) == registry.get("control").train_epochs(wb)
    assert not torch.equal(longer.val_probs, control.val_probs)
    # built again and initialised as run_stage does, before training: exactly the control
    fresh = registry.get("dyspn").build(wb.cfg, control.model.coarse).eval()
    from helpers.models.guidance import init_from_refiner

    init_from_refiner(fresh, control.model)
    torch.testing.assert_close(
        predict(fresh, wb.data["val"], 4, "cpu"), control.val_probs, atol=1e-5, rtol=0
    )
    conv = registry.refiner("converged", "cspn").variant(wb.cfg, init_from="converged+control")
    assert (
        conv.name == "converged+cspn-from-control"
        and conv.spec(wb)["init_from"]["base"] == "converged"
    )
    with pytest.raises(ValueError, match="same base"):
        registry.get("cspn").variant(wb.cfg, init_from="converged+control")
    with pytest.raises(ValueError, match="same base"):
        registry.get("cspn").variant(wb.cfg, init_from="coarse")


def test_from_control_benchmark_prints_both_gains(tmp_path, capsys):
    """benchmarks/from_control.py on the smoke profile: every row on both splits, each gain's
    interval holds it, the propagators are compared with the control trained on, and the JSON
    holds the same numbers."""
    import json

    b = _benchmark("from_control")
    assert (
        b.main(
            [
                "--profile",
                "smoke",
                "--seeds",
                "0",
                "--settings",
                "coarse",
                "--methods",
                "cspn",
                "--resamples",
                "100",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "val split" in printed and "test split" in printed
    doc = json.loads((tmp_path / "smoke" / "from-control-synthetic-coarse-seeds0.json").read_text())
    for split in ("val", "test"):
        rows = {
            k.split("/")[2]: v for k, v in doc["rows"].items() if k.startswith(split + "/coarse/")
        }
        assert list(rows) == ["control", "control trained on", "cspn", "cspn from the control"]
        assert set(rows["cspn from the control"]) == {
            "per_seed",
            "over control",
            "over control trained on",
        }
        assert set(rows["control trained on"]) == {"per_seed", "over control"}
        for row in rows.values():
            for key, gains in row.items():
                if key != "per_seed":
                    assert gains["miou"]["low"] <= gains["miou"]["gain"] <= gains["miou"]["high"]
    assert any((tmp_path / "smoke").glob("synthetic-*/seed0/cspn-from-control-*.pt"))
