"""The configuration object: profiles, environment, and typed FIELD=VALUE overrides."""

import pytest

from helpers.core.config import Config, load_config, parse_overrides, profile_config


def test_overrides_take_the_type_of_their_field():
    got = parse_overrides(
        [
            "coarse_size=64",
            "refine_lr=1e-3",
            "start_map=corrected",
            "max_train=none",
            "amp=false",
            "augment=1",
            "device=cpu",
        ]
    )
    assert got == {
        "coarse_size": 64,
        "refine_lr": 1e-3,
        "start_map": "corrected",
        "max_train": None,
        "amp": False,
        "augment": True,
        "device": "cpu",
    }
    assert type(got["coarse_size"]) is int and type(got["refine_lr"]) is float
    # the parsed overrides build the same Config as keyword arguments would
    assert profile_config("cpu", **got) == Config(
        profile="cpu",
        coarse_size=64,
        refine_lr=1e-3,
        start_map="corrected",
        max_train=None,
        amp=False,
        device="cpu",
    )


@pytest.mark.parametrize(
    "pair, message",
    [
        ("colour_size=3", "FIELD=VALUE"),  # unknown field
        ("coarse_size", "FIELD=VALUE"),  # no value
        ("coarse_size=big", "type int"),
        ("refine_lr=fast", "type float"),
        ("amp=maybe", "type bool"),
        ("coarse_size=none", "type int"),  # only optional fields take none
        ("seed=3", "own option"),
        ("profile=full", "own option"),
    ],
)
def test_bad_overrides_are_refused_with_the_reason(pair, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([pair])


def test_environment_picks_profile_and_seed(monkeypatch):
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    monkeypatch.setenv("WORKBOOK_SEED", "7")
    cfg = load_config(device="cpu")
    assert (cfg.profile, cfg.seed, cfg.image_size) == (
        "smoke",
        7,
        profile_config("smoke").image_size,
    )
    monkeypatch.setenv("WORKBOOK_SEED", "seven")
    with pytest.raises(ValueError, match="WORKBOOK_SEED"):
        load_config()


def test_coarse_map_is_coarser_than_the_image_in_every_profile():
    for name in ("smoke", "cpu", "full"):
        cfg = profile_config(name)
        assert cfg.coarse_size < cfg.image_size


@pytest.mark.parametrize("name", ["smoke", "cpu", "full"])
def test_every_profile_trains_a_step_at_its_own_resolution(name):
    """The full profile never runs on the CPU test machine: one optimiser step of each of its
    refiners, at its own image size and widths, checks that its settings fit together (the coarse
    size halves ``coarse_depth`` times, the head layout matches T and the kernel)."""
    import torch

    from helpers.models.coarse import CoarseSegmenter
    from helpers.models.losses import segmentation_loss
    from helpers.models.refiner import Refiner

    torch.manual_seed(0)
    cfg = profile_config(name, device="cpu")
    assert cfg.coarse_size % 2**cfg.coarse_depth == 0 and cfg.image_size % 2**cfg.refiner_depth == 0
    coarse = CoarseSegmenter.from_config(cfg)
    image = torch.rand(1, 3, cfg.image_size, cfg.image_size)
    target = (torch.rand(1, cfg.image_size, cfg.image_size) > 0.5).long()
    for method in ("cspn", "dyspn"):
        model = Refiner.from_config(cfg, coarse, method)
        out = model.refine(image)
        assert out.probs.shape == (1, 2, cfg.image_size, cfg.image_size)
        assert len(out.propagation.maps) == cfg.iterations + 1
        torch.testing.assert_close(out.probs, out.coarse)  # zero-initialised head: identity
        segmentation_loss(out.probs, target).backward()
        grads = [p.grad for p in model.guidance.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        head = model.guidance.head.conv.weight.grad
        assert head.shape[0] == model.layout.channels and head.abs().sum() > 0, (
            "the zero head gets no gradient"
        )
        assert all(p.grad is None for p in model.coarse.parameters())  # the coarse net stays frozen


def test_settings_reach_the_notebooks_through_workbook_set_and_are_recorded(monkeypatch, folders):
    """``python -m helpers run --set refine_epochs=3`` hands its settings to the notebooks'
    kernels as ``WORKBOOK_SET``; every configuration built there has them (explicit arguments
    still win), and results.json records what differs from the profile, so that passing it back
    as --set reproduces the run."""
    from helpers.core.config import changed_settings, load_config
    from helpers.workbook.results import record_results
    from helpers.workbook.session import open_workbook

    monkeypatch.setenv("WORKBOOK_SET", "refine_epochs=3 perturb=0.25")
    cfg = load_config("smoke")
    assert cfg.refine_epochs == 3 and cfg.perturb == 0.25
    assert load_config("smoke", perturb=0.5).perturb == 0.5
    assert changed_settings(cfg) == {"refine_epochs": 3, "perturb": 0.25}
    wb = open_workbook(profile="smoke", verbose=False, **folders)
    assert record_results(wb)["settings"] == {"refine_epochs": 3, "perturb": 0.25}
    monkeypatch.setenv("WORKBOOK_SET", "refine_epoch=3")
    with pytest.raises(ValueError, match="^WORKBOOK_SET: expected FIELD=VALUE with FIELD one of"):
        load_config("smoke")


def test_run_refuses_a_bad_setting_in_one_line(monkeypatch, capsys):
    from helpers.cli.main import main

    # run sets both for the notebooks' kernels: monkeypatch restores what was there
    monkeypatch.setenv("WORKBOOK_SET", "")
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--profile", "smoke", "--set", "refine_epochs=three"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(
        "--set (WORKBOOK_SET): refine_epochs takes a value of type int, got 'three'"
    )
