"""The configuration object: profiles, environment, and typed FIELD=VALUE overrides."""
import pytest

from helpers.config import Config, load_config, parse_overrides, profile_config


def test_overrides_take_the_type_of_their_field():
    got = parse_overrides(["coarse_size=64", "refine_lr=1e-3", "start_map=corrected", "max_train=none",
                           "amp=false", "augment=1"])
    assert got == {"coarse_size": 64, "refine_lr": 1e-3, "start_map": "corrected", "max_train": None,
                   "amp": False, "augment": True}
    assert type(got["coarse_size"]) is int and type(got["refine_lr"]) is float
    # the parsed overrides build the same Config as keyword arguments would
    assert profile_config("cpu", **got) == Config(profile="cpu", coarse_size=64, refine_lr=1e-3,
                                                  start_map="corrected", max_train=None, amp=False)


@pytest.mark.parametrize("pair, message", [
    ("colour_size=3", "FIELD=VALUE"),        # unknown field
    ("coarse_size", "FIELD=VALUE"),          # no value
    ("coarse_size=big", "type int"),
    ("refine_lr=fast", "type float"),
    ("amp=maybe", "type bool"),
    ("coarse_size=none", "type int"),        # only optional fields take none
    ("seed=3", "own option"),
])
def test_bad_overrides_are_refused_with_the_reason(pair, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([pair])


def test_environment_picks_profile_and_seed(monkeypatch):
    monkeypatch.setenv("WORKBOOK_PROFILE", "smoke")
    monkeypatch.setenv("WORKBOOK_SEED", "7")
    cfg = load_config(device="cpu")
    assert (cfg.profile, cfg.seed, cfg.image_size) == ("smoke", 7, profile_config("smoke").image_size)
    monkeypatch.setenv("WORKBOOK_SEED", "seven")
    with pytest.raises(ValueError, match="WORKBOOK_SEED"):
        load_config()


def test_coarse_map_is_coarser_than_the_image_in_every_profile():
    for name in ("smoke", "cpu", "full"):
        cfg = profile_config(name)
        assert cfg.coarse_size < cfg.image_size
