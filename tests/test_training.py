"""The training engine: determinism, checkpoints (atomic, refused, corrupt, resumable)."""

import pytest
import torch
from toys import toy_data

from helpers.core.checkpoint import CheckpointError, atomic_save, safe_load
from helpers.models.coarse import CoarseSegmenter
from helpers.models.refiner import Refiner
from helpers.training.evaluation import evaluate
from helpers.training.loop import fit, load_trained


def model(seed=0):
    torch.manual_seed(seed)
    return CoarseSegmenter(classes=2, width=4, depth=2, coarse_size=16)


KW = dict(epochs=2, lr=5e-3, batch_size=4, device="cpu", seed=0, progress=False)


def test_same_seed_same_metrics_and_learning_happens():
    train, val = toy_data(), toy_data(6, seed=1)
    h1 = fit(model(), train_set=train, val_set=val, **KW)
    h2 = fit(model(), train_set=train, val_set=val, **KW)
    assert h1.val == h2.val and h1.train_loss == h2.train_loss
    assert h1.train_loss[-1] < h1.train_loss[0]


def test_evaluate_restores_train_mode():
    m = model().train()
    evaluate(m, toy_data(4), 2, "cpu")
    assert m.training


def test_checkpoint_round_trip_resume_and_refusal(tmp_path):
    train, val = toy_data(), toy_data(6, seed=1)
    spec = {"stage": "coarse", "width": 4}
    full = fit(
        model(), train_set=train, val_set=val, checkpoint=tmp_path / "full.pt", spec=spec, **KW
    )
    st = safe_load(tmp_path / "full.pt")
    assert st["epoch"] == 2 and {"torch", "torchvision"} <= set(st["versions"])
    assert full.val == st["history"]["val"]
    # a finished run loads instead of retraining
    m2 = model(seed=5)
    assert load_trained(m2, tmp_path / "full.pt", spec, epochs=2).val == full.val
    for a, b in zip(m2.state_dict().values(), st["state_dict"].values()):
        assert torch.equal(a, b)
    # another configuration is refused, saying what differs
    with pytest.raises(CheckpointError, match="width: saved 4, expected 8"):
        load_trained(model(), tmp_path / "full.pt", {"stage": "coarse", "width": 8}, epochs=2)


def test_resume_continues_an_interrupted_run(tmp_path):
    """Stop after epoch 1 of 3 (simulated), resume: the same history as an uninterrupted run."""
    train, val = toy_data(), toy_data(6, seed=1)
    spec = {"stage": "coarse"}
    whole = fit(
        model(),
        train_set=train,
        val_set=val,
        checkpoint=tmp_path / "a.pt",
        spec=spec,
        **{**KW, "epochs": 3},
    )

    class Stop(Exception):
        pass

    import helpers.training.loop as tr

    real_evaluate, calls = tr.evaluate, []

    def interrupting(*a, **k):
        out = real_evaluate(*a, **k)
        calls.append(1)
        if len(calls) == 2:  # the second epoch is interrupted before its checkpoint
            raise Stop
        return out

    tr.evaluate = interrupting
    try:
        with pytest.raises(Stop):
            fit(
                model(),
                train_set=train,
                val_set=val,
                checkpoint=tmp_path / "b.pt",
                spec=spec,
                **{**KW, "epochs": 3},
            )
    finally:
        tr.evaluate = real_evaluate
    assert safe_load(tmp_path / "b.pt")["epoch"] == 1
    # a restart from scratch would give the same history too (fit is deterministic): count the
    # epochs the resumed run evaluates, which a restart would make 3
    evaluated = []
    tr.evaluate = lambda *a, **k: (evaluated.append(1), real_evaluate(*a, **k))[1]
    try:
        resumed = fit(
            model(),
            train_set=train,
            val_set=val,
            checkpoint=tmp_path / "b.pt",
            spec=spec,
            **{**KW, "epochs": 3},
        )
    finally:
        tr.evaluate = real_evaluate
    assert len(evaluated) == 2, (
        "the resumed run retrained from epoch 0 instead of continuing after epoch 1"
    )
    assert resumed.val == whole.val


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    atomic_save({"state_dict": model().state_dict(), "spec": {}}, path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        safe_load(path)
    atomic_save({"something": 1}, path)
    with pytest.raises(CheckpointError, match="not a workbook checkpoint"):
        safe_load(path)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "m.pt"
    atomic_save({"state_dict": {}, "spec": {"v": 1}}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"state_dict": {}, "spec": Unpicklable()}, path)
    assert safe_load(path)["spec"] == {"v": 1}


@pytest.mark.parametrize("method", ["control", "cspn", "dyspn"])
def test_refiner_starts_as_identity_and_freezes_coarse(method):
    coarse = model()
    r = Refiner(coarse, method=method, width=4, depth=2, iterations=3)
    x = torch.rand(2, 3, 20, 20)
    out = r.refine(x)
    torch.testing.assert_close(out.probs, out.coarse, atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in r.coarse.parameters())
    r.train()
    assert not r.coarse.training
    (out.probs[:, 1].sum()).backward()
    assert all(p.grad is None for p in r.coarse.parameters())


@pytest.mark.parametrize("method", ["control", "dyspn"])
def test_tune_base_trains_a_copy_and_round_trips(method):
    """With ``tune_base`` the refiner fine-tunes its own copy of the base net through its loss:
    the copy changes, the caller's net (shared by the other stages) does not, BatchNorm
    statistics stay frozen, and a checkpoint of the refiner restores the tuned copy."""
    coarse = model()
    before = {k: v.clone() for k, v in coarse.state_dict().items()}
    r = Refiner(
        coarse, method=method, start="corrected", width=4, depth=2, iterations=3, tune_base=True
    )
    assert r.coarse is not coarse and all(p.requires_grad for p in r.coarse.parameters())
    r.train()
    assert not r.coarse.training  # statistics frozen, weights trained
    opt = torch.optim.AdamW([p for p in r.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.rand(4, 3, 20, 20), (torch.rand(4, 20, 20) > 0.5).long()
    for _ in range(2):
        opt.zero_grad()
        r.training_loss(x, y).backward()
        opt.step()
    tuned = r.coarse.state_dict()
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    assert any(not torch.equal(tuned[k], before[k]) for k in weights)
    for k, v in coarse.state_dict().items():
        assert torch.equal(v, before[k]), f"the shared base net changed: {k}"
    for k in before:
        if "running" in k:
            assert torch.equal(tuned[k], before[k]), f"BatchNorm statistics drifted: {k}"
    r.eval()
    fresh = Refiner(
        coarse, method=method, start="corrected", width=4, depth=2, iterations=3, tune_base=True
    )
    fresh.load_state_dict(r.state_dict())
    fresh.eval()
    coarse.eval()  # compared as the refiner runs its base: eval mode, running statistics
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), r(x), atol=0, rtol=0)
        untuned = Refiner(
            coarse, method=method, start="corrected", width=4, depth=2, iterations=3
        ).eval()
        torch.testing.assert_close(untuned.refine(x).coarse, coarse(x), atol=0, rtol=0)
        assert not torch.allclose(fresh.refine(x).coarse, coarse(x)), (
            "the tuned copy must differ from the base"
        )


def test_tune_base_has_its_own_checkpoint_and_leaves_old_names(folders):
    """The frozen-base spec is unchanged (existing checkpoints keep their names); a tuned-base
    refiner gets its own file."""
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    wb = open_workbook(profile="smoke", **folders)
    frozen = stages.get("dyspn").spec(wb)
    assert "tune_base" not in frozen
    tuned = open_workbook(profile="smoke", tune_base=True, **folders)
    assert stages.get("dyspn").spec(tuned) == {**frozen, "tune_base": True}
    assert stages.get("dyspn").checkpoint(tuned) != stages.get("dyspn").checkpoint(wb)
    assert stages.get("coarse").spec(tuned) == stages.get("coarse").spec(wb)


def test_confidence_head_starts_as_the_identity_and_has_its_own_checkpoint(folders):
    """NLSPN's confidence adds one head channel after the others (older layouts unchanged), the
    zero-initialised head is still the identity, and only the propagating refiners' specs name
    it."""
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    plain = Refiner(model(), method="dyspn", start="corrected", width=4, depth=2, iterations=6)
    r = Refiner(
        model(), method="dyspn", start="corrected", width=4, depth=2, iterations=6, confidence=True
    ).eval()
    assert r.layout.confidence == (74, 75) and r.layout.start == plain.layout.start == (72, 74)
    x = torch.rand(2, 3, 24, 24)
    out = r.refine(x)
    torch.testing.assert_close(out.probs, out.coarse, atol=1e-6, rtol=0)
    assert torch.equal(out.propagation.confidence, torch.full((2, 1, 24, 24), 0.5))
    assert (
        Refiner(model(), method="control", width=4, depth=2, confidence=True).layout.channels == 2
    )

    wb = open_workbook(profile="smoke", **folders)
    confident = open_workbook(profile="smoke", confidence=True, **folders)
    for name in ("cspn", "dyspn", "converged+dyspn"):
        assert "confidence" not in stages.get(name).spec(wb)
        assert stages.get(name).spec(confident) == {**stages.get(name).spec(wb), "confidence": True}
    assert stages.get("control").spec(confident) == stages.get("control").spec(wb)


def test_cspn_gain_scales_the_affinity_head_and_has_its_own_checkpoint(folders):
    """cspn_gain g is exactly a head g times larger (kappa_j = (g k_j)^+ / max(1, g sum |k_j|)),
    not a change of the start map; only CSPN refiners' specs name it, and only when g != 1."""
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    torch.manual_seed(3)
    base = model()
    gained = Refiner(
        base, method="cspn", start="corrected", width=4, depth=2, iterations=4, cspn_gain=4.0
    ).eval()
    with torch.no_grad():
        for p in gained.guidance.head.parameters():
            p.normal_(0, 0.3)
    plain = Refiner(base, method="cspn", start="corrected", width=4, depth=2, iterations=4).eval()
    plain.load_state_dict(gained.state_dict())
    affinity = slice(*plain.layout.affinity)
    with torch.no_grad():
        plain.guidance.head.conv.weight[affinity] *= 4
        plain.guidance.head.conv.bias[affinity] *= 4
    x = torch.rand(2, 3, 24, 24)
    a, b = gained.refine(x), plain.refine(x)
    torch.testing.assert_close(a.start, b.start, atol=0, rtol=0)  # the correction is not scaled
    torch.testing.assert_close(a.probs, b.probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.propagation.affinity, b.propagation.affinity, atol=1e-6, rtol=1e-5)
    unscaled = Refiner(
        base, method="cspn", start="corrected", width=4, depth=2, iterations=4
    ).eval()
    unscaled.load_state_dict(gained.state_dict())
    weak = unscaled.refine(x).propagation.affinity
    assert (a.propagation.affinity.sum(1) > weak.sum(1) + 1e-3).any(), (
        "the gain must strengthen kappa"
    )
    assert (a.propagation.affinity.sum(1) <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="cspn_gain"):
        Refiner(base, method="cspn", cspn_gain=0.0)

    # per setting, as the defaults: the report's CSPN at 4, the converged net's at 1 (so its
    # checkpoints keep their names); a gain of 1 is never named
    wb = open_workbook(profile="smoke", **folders)
    assert stages.get("cspn").spec(wb)["cspn_gain"] == wb.cfg.cspn_gain == 4.0
    assert "cspn_gain" not in stages.get("converged+cspn").spec(wb)
    assert stages.get("cspn").build(wb.cfg, CoarseSegmenter.from_config(wb.cfg)).cspn_gain == 4.0
    assert (
        stages.get("converged+cspn").build(wb.cfg, CoarseSegmenter.from_config(wb.cfg)).cspn_gain
        == 1.0
    )
    swapped = open_workbook(profile="smoke", cspn_gain=1.0, converged_cspn_gain=2.0, **folders)
    unnamed = {k: v for k, v in stages.get("cspn").spec(wb).items() if k != "cspn_gain"}
    assert stages.get("cspn").spec(swapped) == unnamed
    assert stages.get("converged+cspn").spec(swapped) == {
        **stages.get("converged+cspn").spec(wb),
        "cspn_gain": 2.0,
    }
    for name in ("control", "dyspn", "converged+control", "converged+dyspn"):
        assert stages.get(name).spec(swapped) == stages.get(name).spec(wb)


def test_guidance_init_from_the_base_starts_from_its_features_and_has_its_own_checkpoint(folders):
    """guidance_init="base": at step 0 the guidance U-Net computes exactly the base U-Net's
    features of the image (the coarse map's input filters are zero), the refiner is still the
    identity, training moves the map's filters away from zero, and only a non-default value is
    named in a spec, per setting."""
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    torch.manual_seed(5)
    base = model()
    with torch.no_grad():  # a base that is not at its random initialisation
        for p in base.parameters():
            p.normal_(0, 0.5)
        for m in base.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 24, 24)
    for method in ("control", "cspn", "dyspn"):
        ref = Refiner(
            base,
            method=method,
            start="corrected",
            width=4,
            depth=2,
            iterations=3,
            kernel=5,
            guidance_init="base",
        ).eval()
        with torch.no_grad():
            ours = ref.guidance.features(torch.cat([x, base(x)], 1))
            torch.testing.assert_close(ours, base.unet.features(x), atol=0, rtol=0)
            torch.testing.assert_close(ref(x), base(x), atol=1e-6, rtol=0)
        scratch = Refiner(
            base, method=method, start="corrected", width=4, depth=2, iterations=3, kernel=5
        ).eval()
        with torch.no_grad():
            assert not torch.allclose(scratch.guidance.features(torch.cat([x, base(x)], 1)), ours)
    # the map's filters start at zero but do get a gradient: the map is read after one step
    ref = Refiner(
        base, method="dyspn", width=4, depth=2, iterations=3, kernel=5, guidance_init="base"
    ).train()
    with torch.no_grad():
        ref.guidance.head.conv.weight.normal_(0, 0.1)
    ref.training_loss(x, (torch.rand(2, 24, 24) > 0.5).long()).backward()
    first = ref.guidance.inc.block[0].weight
    assert first[:, 3:].abs().sum() == 0 and first.grad[:, 3:].abs().sum() > 0
    assert all(p.grad is None for p in base.parameters()), "the base net stays frozen"
    with pytest.raises(ValueError, match="refiner_width = coarse_width"):
        Refiner(base, method="dyspn", width=8, depth=2, guidance_init="base")
    with pytest.raises(ValueError, match="guidance_init"):
        Refiner(base, method="dyspn", width=4, depth=2, guidance_init="imagenet")

    # "scratch" is never named (the checkpoints of earlier runs keep their names); the default,
    # "base" in both settings, is
    wb = open_workbook(
        profile="smoke", guidance_init="scratch", converged_guidance_init="scratch", **folders
    )
    refiners = [n for n in stages.REGISTRY if stages.get(n).kind == "refiner"]
    assert all("guidance_init" not in stages.get(n).spec(wb) for n in refiners)
    default = open_workbook(profile="smoke", **folders)
    assert all(stages.get(n).spec(default)["guidance_init"] == "base" for n in refiners)
    tuned = open_workbook(
        profile="smoke", guidance_init="scratch", converged_guidance_init="base", **folders
    )
    for name in ("converged+control", "converged+cspn", "converged+dyspn"):
        assert stages.get(name).spec(tuned) == {
            **stages.get(name).spec(wb),
            "guidance_init": "base",
        }
        assert stages.get(name).checkpoint(tuned) != stages.get(name).checkpoint(wb)
    for name in ("control", "cspn", "dyspn"):
        assert stages.get(name).spec(tuned) == stages.get(name).spec(wb)
    torch.manual_seed(0)
    smoke_base = CoarseSegmenter.from_config(tuned.cfg)
    built = stages.get("converged+dyspn").build(tuned.cfg, smoke_base)
    torch.testing.assert_close(
        built.guidance.downs[0].block[1].block[0].weight,
        smoke_base.unet.downs[0].block[1].block[0].weight,
        atol=0,
        rtol=0,
    )


def test_warm_lr_factor_trains_the_copied_layers_at_a_lower_peak_rate(tmp_path, folders):
    """warm_lr_factor: with a warm start the layers copied from the base net are one optimiser
    group at lr x factor, the new ones (head, first convolution) and nothing else another at lr;
    the one-cycle schedule peaks at each group's own rate (a scalar peak would undo the factor);
    from scratch, or at factor 1, there is one group. Only a non-default factor is in a spec."""
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    base = model()
    warm = Refiner(
        base,
        method="dyspn",
        width=4,
        depth=2,
        iterations=3,
        kernel=5,
        guidance_init="base",
        warm_lr_factor=0.25,
    )
    new, copied = warm.parameter_groups(1e-3)
    assert (new["lr"], copied["lr"]) == (1e-3, 0.25e-3)
    names = {id(p): n for n, p in warm.named_parameters()}
    assert sorted(names[id(p)].split(".")[1] for p in new["params"]) == ["head", "head", "inc"]
    assert len(new["params"]) + len(copied["params"]) == sum(
        p.requires_grad for p in warm.parameters()
    )
    assert not any(names[id(p)].startswith("coarse.") for p in new["params"] + copied["params"])
    for one in (
        Refiner(
            base, method="dyspn", width=4, depth=2, iterations=3, kernel=5, warm_lr_factor=0.25
        ),
        Refiner(
            base, method="dyspn", width=4, depth=2, iterations=3, kernel=5, guidance_init="base"
        ),
    ):
        assert len(one.parameter_groups(1e-3)) == 1
    with pytest.raises(ValueError, match="warm_lr_factor"):
        Refiner(base, method="dyspn", width=4, depth=2, guidance_init="base", warm_lr_factor=0)

    train, val = toy_data(), toy_data(6, seed=1)
    fit(
        warm,
        train_set=train,
        val_set=val,
        checkpoint=tmp_path / "warm.pt",
        spec={"stage": "dyspn"},
        loss_fn=warm.training_loss,
        **{**KW, "epochs": 1, "lr": 1e-3},
    )
    groups = safe_load(tmp_path / "warm.pt")["optimiser"]["param_groups"]
    assert [g["max_lr"] for g in groups] == [1e-3, 0.25e-3]

    default = open_workbook(profile="smoke", **folders)
    slower = open_workbook(profile="smoke", warm_lr_factor=0.25, **folders)
    scratch = open_workbook(
        profile="smoke",
        warm_lr_factor=0.25,
        guidance_init="scratch",
        converged_guidance_init="scratch",
        **folders,
    )
    for name in ("cspn", "converged+dyspn", "converged+control"):
        assert "warm_lr_factor" not in stages.get(name).spec(default)
        assert stages.get(name).spec(slower) == {
            **stages.get(name).spec(default),
            "warm_lr_factor": 0.25,
        }
        assert "warm_lr_factor" not in stages.get(name).spec(scratch)
    assert stages.get("converged").spec(slower) == stages.get("converged").spec(default)


def test_start_weight_is_in_the_spec_of_propagators_with_a_corrected_start_only(folders):
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    default = open_workbook(profile="smoke", **folders)
    weighted = open_workbook(profile="smoke", start_weight=1.0, **folders)
    coarse_start = open_workbook(profile="smoke", start_weight=1.0, start_map="coarse", **folders)
    for name in ("cspn", "dyspn", "converged+dyspn"):
        assert "start_weight" not in stages.get(name).spec(default)
        assert stages.get(name).spec(weighted) == {
            **stages.get(name).spec(default),
            "start_weight": 1.0,
        }
    assert "start_weight" not in stages.get("dyspn").spec(coarse_start)
    # its own setting's start
    assert stages.get("converged+dyspn").spec(coarse_start)["start_weight"] == 1.0
    for name in ("control", "converged+control", "converged"):
        assert stages.get(name).spec(weighted) == stages.get(name).spec(default)


def test_dyspn_dilation_reaches_the_propagator_and_only_dyspn_checkpoints(folders):
    from helpers.models.propagation.geometry import Window
    from helpers.workbook import stages
    from helpers.workbook.session import open_workbook

    default = open_workbook(profile="smoke", **folders)
    dilated = open_workbook(profile="smoke", dyspn_dilation=2, **folders)
    for name in ("dyspn", "converged+dyspn"):
        assert "dilation" not in stages.get(name).spec(default)
        assert stages.get(name).spec(dilated) == {**stages.get(name).spec(default), "dilation": 2}
        assert stages.get(name).checkpoint(dilated) != stages.get(name).checkpoint(default)
        refiner = stages.get(name).build(dilated.cfg, CoarseSegmenter.from_config(dilated.cfg))
        assert refiner.propagator.kernel == Window(7, 2)
    for name in ("cspn", "control", "converged+cspn", "converged+control", "converged"):
        assert stages.get(name).spec(dilated) == stages.get(name).spec(default)


@pytest.mark.parametrize("method", ["cspn", "dyspn"])
def test_refine_from_another_start_map_uses_the_same_affinities(method):
    """``refine(start=...)`` propagates a given H^0 with the refiner's own affinities: its own start
    given back reproduces the refiner exactly, another map is propagated by the same weights
    (checked against the propagator called directly), and the control has nothing to propagate."""
    torch.manual_seed(0)
    r = Refiner(
        model(), method=method, start="corrected", width=4, depth=2, iterations=3, cspn_gain=2.0
    ).eval()
    with torch.no_grad():
        for p in r.guidance.head.parameters():
            # a trained-looking head: the zero head would make every test the identity
            p.normal_(0, 0.5)
        x = torch.rand(2, 3, 20, 20)
        own = r.refine(x)
        torch.testing.assert_close(r.refine(x, start=own.start).probs, own.probs, atol=0, rtol=0)
        other = torch.softmax(torch.randn(2, 2, 20, 20), 1)
        given = r.refine(x, start=other)
        head = r.layout.split(r.guidance(torch.cat([x, own.coarse], 1)).float())
        direct = (
            r.propagator(other, 2.0 * head["affinity"])
            if method == "cspn"
            else r.propagator(other, head["affinity"], head["attention"])
        )
        torch.testing.assert_close(given.probs, direct.final, atol=1e-6, rtol=0)
        assert torch.equal(given.start, other) and (given.probs - other).abs().max() > 1e-3
    with pytest.raises(ValueError, match="nothing to propagate"):
        Refiner(model(), method="control", width=4, depth=2).refine(x, start=other)


@pytest.mark.parametrize("method", ["control", "cspn", "dyspn"])
def test_a_refiner_started_from_a_trained_control_computes_its_map(method):
    """init_from_refiner: every guidance layer and the start channels of the head copied from a
    trained control, the propagation channels left at zero, so the new refiner's output (and its
    H^0) is exactly the control's map, and it differs once propagation has weights; refiners
    that cannot share the weights are refused."""
    from helpers.models.guidance import init_from_refiner

    torch.manual_seed(1)
    base = model()
    control = Refiner(base, method="control", width=4, depth=2).eval()
    with torch.no_grad():
        for p in control.guidance.parameters():
            # a trained-looking control: at zero init every refiner is the identity
            p.normal_(0, 0.3)
    x = torch.rand(2, 3, 20, 20)
    r = Refiner(
        base,
        method=method,
        start="corrected",
        width=4,
        depth=2,
        iterations=3,
        kernel=5,
        cspn_gain=4.0,
    ).eval()
    init_from_refiner(r, control)
    with torch.no_grad():
        want = control(x)
        assert (want - base(x)).abs().max() > 1e-2, (
            "the control must change the map, or the test proves nothing"
        )
        out = r.refine(x)
        torch.testing.assert_close(out.start, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.probs, want, atol=1e-6, rtol=0)
        if method != "control":
            a, b = r.layout.affinity
            assert r.guidance.head.conv.weight[a:b].abs().sum() == 0
            r.guidance.head.conv.bias[a:b].normal_(0, 1.0)
            assert (r(x) - want).abs().max() > 1e-3
    with pytest.raises(ValueError, match="same base net"):
        init_from_refiner(
            Refiner(model(), method=method, start="corrected", width=4, depth=2), control
        )
    with pytest.raises(ValueError, match="same width and depth"):
        init_from_refiner(
            Refiner(base, method=method, start="corrected", width=8, depth=2), control
        )
    if method != "control":
        with pytest.raises(ValueError, match="correct the map"):
            init_from_refiner(
                Refiner(base, method=method, start="coarse", width=4, depth=2), control
            )


def test_corrected_start_layout():
    r = Refiner(model(), method="dyspn", start="corrected", width=4, depth=2, iterations=6)
    assert (
        r.layout.affinity == (0, 48)
        and r.layout.attention == (48, 72)
        and r.layout.start == (72, 74)
    )
    assert r.guidance.out_channels == 74


def test_small_training_sets_get_enough_steps(capsys):
    from helpers.workbook.stages import epochs_for

    assert epochs_for(3, 72, n_train=369, batch_size=16) == 3  # 24 steps x 3 = 72: unchanged
    assert epochs_for(3, 72, n_train=55, batch_size=16, what="coarse") == 18  # 4 steps per epoch
    assert "training 18 epochs instead of 3" in capsys.readouterr().out
    assert epochs_for(12, 0, n_train=5, batch_size=16) == 12


def test_smoke_profile_is_repeatable(folders, capsys):
    """Same profile and seed on the CPU: the same coarse metrics, trained twice from scratch."""
    from helpers.workbook import session, workflow

    wb = session.open_workbook("smoke", seed=3, verbose=False, **folders)
    first = workflow.coarse_stage(wb, progress=False)
    capsys.readouterr()
    second = workflow.coarse_stage(wb, retrain=True, progress=False)
    # retrained, not loaded: a loaded checkpoint would match the first run trivially
    assert "loaded the trained" not in capsys.readouterr().out
    assert (
        first.val_metrics == second.val_metrics
        and first.history.train_loss == second.history.train_loss
    )
    assert torch.equal(first.val_probs, second.val_probs)
    # the no-propagation control, the stage whose result varies most between seeds and machines,
    # is bit-identical too at the same thread count (README, Reproducibility)
    control = workflow.refine_stage(wb, "control", progress=False)
    capsys.readouterr()
    again = workflow.refine_stage(wb, "control", retrain=True, progress=False)
    assert "loaded the trained" not in capsys.readouterr().out
    assert control.history.train_loss == again.history.train_loss and torch.equal(
        control.val_probs, again.val_probs
    )


def _scripted_fit(tmp_path, monkeypatch, curve, epochs, converge, spec=None):
    """``fit`` on toy data with its validation mIoU replaced by ``curve`` (one value per epoch),
    recording the weights each epoch was evaluated with."""
    import helpers.training.loop as tr

    scores, states = iter(curve), []
    real_evaluate = tr.evaluate

    def scripted(model, *args, **kwargs):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {**real_evaluate(model, *args, **kwargs), "miou": next(scores)}

    monkeypatch.setattr(tr, "evaluate", scripted)
    m = model()
    h = fit(
        m,
        train_set=toy_data(),
        val_set=toy_data(6, seed=1),
        checkpoint=tmp_path / "c.pt",
        spec=spec or {"stage": "converged"},
        converge=converge,
        **{**KW, "epochs": epochs},
    )
    return m, h, states


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))


def test_converging_anneals_and_ignores_a_single_noisy_epoch(tmp_path, monkeypatch, capsys):
    """A curve that rises to a plateau with one lucky epoch early (0.80 at epoch 4, between 0.66s:
    the size of the epoch-to-epoch noise on a few dozen images): the old rule (stop ``patience``
    epochs after the best single epoch) would have stopped at epoch 8 keeping epoch 4; the
    averaged score runs on to the cap, keeps the last epoch's weights, and the rate anneals to
    nearly 0 by the end."""
    from helpers.training.loop import Convergence

    curve = [0.5, 0.6, 0.66, 0.80, 0.66, 0.7, 0.72, 0.74, 0.75, 0.76, 0.77, 0.76]
    m, h, states = _scripted_fit(
        tmp_path, monkeypatch, curve, 12, Convergence(window=3, patience=4)
    )
    assert h.epoch == list(range(1, 13))  # no early stop: the spike did not set the best score
    # the best 3-epoch average ends at epoch 12 (0.763); epoch 4's 0.80 lifts its windows to 0.72
    assert h.best_epoch == 12 and _same(m.state_dict(), states[11])
    peak = max(h.lr)
    assert h.lr.index(peak) < 4 and h.lr[-1] < 0.01 * peak  # warm up, then anneal to ~0
    assert all(b <= a for a, b in zip(h.lr[h.lr.index(peak) :], h.lr[h.lr.index(peak) + 1 :]))
    out = capsys.readouterr().out
    assert "has not improved" not in out


def test_converging_stops_when_the_average_falls_and_keeps_the_best_weights(
    tmp_path, monkeypatch, capsys
):
    """Over-fitting: the average peaks at epoch 5 and then falls (a single high epoch later, 0.9 at
    epoch 8, does not lift it back): training stops ``patience`` epochs after epoch 5, the returned
    weights are epoch 5's, and the checkpoint counts as finished (loaded, not resumed)."""
    from helpers.training.loop import Convergence

    curve = [0.5, 0.6, 0.7, 0.72, 0.74, 0.6, 0.58, 0.9, 0.5, 0.5, 0.5, 0.5]
    spec = {"stage": "converged"}
    m, h, states = _scripted_fit(
        tmp_path, monkeypatch, curve, 12, Convergence(window=3, patience=4), spec
    )
    assert h.best_epoch == 5 and h.epoch == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert _same(m.state_dict(), states[4])
    assert (
        "averaged over 3 epochs has not improved for 4 epochs; stopped after epoch 9, keeping "
        "epoch 5 (average 0.720)" in capsys.readouterr().out
    )
    st = safe_load(tmp_path / "c.pt")
    assert st["finished"] and st["epoch"] == 9 and "best_state_dict" not in st
    m2 = model(seed=3)
    assert load_trained(m2, tmp_path / "c.pt", spec, epochs=12).best_epoch == 5
    assert _same(m2.state_dict(), states[4])


def test_convergence_settings_are_checked():
    from helpers.training.loop import Convergence

    assert Convergence(3, 4).score([0.1, 0.2]) is None
    assert Convergence(2, 4).score([0.1, 0.2, 0.4]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="window must be >= 1 and patience None or >= 1"):
        Convergence(0, 4)
    with pytest.raises(ValueError, match="patience None or >= 1"):
        Convergence(3, 0)


def test_stage_registry_declares_each_stage_once():
    """Every stage of both settings is one registry entry; names, bases and kinds agree with
    how the workflow builds them, and a variant gets its own name (and so its own file)."""
    from helpers.core.config import profile_config
    from helpers.workbook import stages

    assert stages.SETTINGS["coarse"] == (
        "coarse",
        "guided-filter",
        "coarse-longer",
        "control",
        "cspn",
        "dyspn",
    )
    assert stages.SETTINGS["converged"] == (
        "converged",
        "converged-longer",
        "converged+control",
        "converged+cspn",
        "converged+dyspn",
    )
    for name, stage in stages.REGISTRY.items():
        assert stages.get(name) is stage and name in stages.SETTINGS[stage.base]
        assert (stage.trains_on is None) == (stage.kind == "base")
        if stage.kind == "refiner":
            assert stages.refiner(stage.base, stage.method) is stage
            assert name == stages.stage_name(stage.base, stage.method)
    cfg = profile_config("smoke", converged_start_map="coarse")
    corrected = stages.get("converged+cspn").variant(cfg, start="corrected")
    assert corrected.name == "converged+cspn-corrected" and corrected.base == "converged"
    assert stages.get("cspn").variant(cfg, start=cfg.start_map) is stages.get("cspn")
    # an epoch budget is a variant too: it must not overwrite the registered stage's row
    assert stages.get("cspn").variant(cfg, epochs=24).name == "cspn-e24"
    assert (
        stages.get("converged+dyspn").variant(cfg, start="corrected", epochs=5).name
        == "converged+dyspn-corrected-e5"
    )
    # the start map is per setting: here the converged refiners start from the converged map
    assert stages.get("cspn").start_map(cfg) == cfg.start_map == "corrected"
    assert stages.get("converged+cspn").start_map(cfg) == cfg.converged_start_map == "coarse"
    # the defaults: both settings start from the corrected map
    assert (
        profile_config("smoke").converged_start_map
        == profile_config("smoke").start_map
        == "corrected"
    )

    from helpers.workbook.results import format_table

    row = {
        "stage": "converged+cspn-e5",
        "base": "converged",
        "label": "variant",
        "miou": 0.7,
        "pet_iou": 0.6,
        "boundary_iou": 0.3,
        "parameters": 1,
        "train_seconds": 1.0,
    }
    table = format_table([row])  # a variant without its base row: no gain is invented
    assert "+0.000" not in table and "variant" in table
    with pytest.raises(KeyError, match="no stage 'cspn2'"):
        stages.get("cspn2")
    with pytest.raises(ValueError, match="needs a method"):
        stages.Stage("x", "x", "refiner")


def test_the_converged_schedule_has_checkpoint_names_of_its_own(folders):
    """The converged net's schedule changed (December 2026): its spec names the schedule and the
    averaging window, so a net trained with the old rule is never loaded for it; the coarse net's
    name, and so every checkpoint of the report's setting, stays."""
    from helpers.workbook.session import open_workbook
    from helpers.workbook.stages import get

    wb = open_workbook(profile="smoke", **folders)
    converged, coarse = get("converged"), get("coarse")
    spec = converged.spec(wb)
    assert spec["schedule"] == "one-cycle, averaged" and spec["window"] == wb.cfg.converged_window
    old = {k: v for k, v in spec.items() if k not in ("schedule", "window")}
    assert converged.checkpoint(wb).name != f"converged-{_digest(old)}.pt"
    assert converged.checkpoint(wb).name == f"converged-{_digest(spec)}.pt"
    assert "schedule" not in coarse.spec(wb)
    assert converged.convergence(wb.cfg).patience is None  # the cycle anneals to its end
    assert coarse.convergence(wb.cfg) is None


def _digest(spec: dict) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def test_results_record_the_backend_that_propagated(folders):
    """``results.json`` says which propagation backend actually ran each refiner (on CUDA the
    fused kernels, or the PyTorch path where they failed their self-check); the control has none."""
    from helpers.workbook import workflow
    from helpers.workbook.results import record_results
    from helpers.workbook.session import open_workbook

    wb = open_workbook(profile="smoke", **folders)
    cspn = workflow.refine_stage(wb, "cspn", progress=False)
    control = workflow.refine_stage(wb, "control", progress=False)
    assert cspn.settings["propagation_backend"] == "torch"  # the CPU's default
    assert "propagation_backend" not in control.settings
    doc = record_results(wb, cspn, control)
    assert doc["stages"]["cspn"]["settings"]["propagation_backend"] == "torch"
