"""The loader on files laid out exactly as the official dataset, messy files included."""

import hashlib
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import helpers.data.decoding as decoding
from helpers.core.config import profile_config
from helpers.data.dataset import PetSegmentation, build_datasets
from helpers.data.decoding import (
    decode_split,
    load_rgb,
    read_split_ids,
    split_ids,
    trimap_to_target,
)
from helpers.data.sources import DataError, DataSource, resolve_source
from helpers.data.synthetic import render_sample, trimap_from_mask, write_synthetic_dataset


def _pair(root, image_id):
    base = root / "oxford-iiit-pet"
    return base / "images" / f"{image_id}.jpg", base / "annotations" / "trimaps" / f"{image_id}.png"


def test_official_layout_and_list_format(pets):
    base = pets / "oxford-iiit-pet"
    lines = [l for l in (base / "annotations" / "trainval.txt").read_text().splitlines() if l]
    assert len(lines) == 14 and all(len(l.split()) == 4 for l in lines)
    ids = read_split_ids(pets, "trainval.txt")
    for image_id in ids:
        img, tri = _pair(pets, image_id)
        assert img.is_file() and tri.is_file()
        assert Image.open(img).format == "JPEG"
        assert set(np.unique(np.asarray(Image.open(tri)))) <= {1, 2, 3}
    assert (base / "annotations" / "list.txt").read_text().startswith("#")
    assert read_split_ids(pets, "list.txt")[:14] == ids  # comment lines skipped


def test_synthetic_is_deterministic_and_varied(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_dataset(a, 4, 1, seed=3, progress=False)
    write_synthetic_dataset(b, 4, 1, seed=3, progress=False)
    digest = lambda root: sorted(
        hashlib.sha1(p.read_bytes()).hexdigest()  # noqa: E731
        for p in (root / "oxford-iiit-pet").rglob("*")
        if p.is_file()
    )
    assert digest(a) == digest(b)
    sizes = {render_sample(0, i)[0].size for i in range(8)}
    assert len(sizes) == 8  # varied sizes
    assert len({round(w / h, 1) for w, h in sizes}) >= 4  # and aspect ratios
    _, tri = render_sample(0, 0)
    assert (tri == 3).any() and (tri == 1).any() and (tri == 2).any()  # a boundary band exists


def test_trimap_band_width():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    tri = trimap_from_mask(mask, band=2)
    assert tri[10, 10] == 1 and tri[0, 0] == 2
    assert (tri[10, 3:7] == 3).all() and tri[10, 2] == 2 and tri[10, 7] == 1  # 2 px each side


def test_binary_and_three_class_targets():
    tri = np.array([[1, 2, 3]], np.uint8)
    assert trimap_to_target(tri).tolist() == [[1, 0, 1]]
    assert trimap_to_target(tri, classes=3).tolist() == [[1, 0, 2]]
    with pytest.raises(ValueError):
        trimap_to_target(tri, classes=4)


@pytest.mark.parametrize("mode", ["RGB", "P", "RGBA", "L", "CMYK", "PNG-as-jpg", "GIF-as-jpg"])
def test_every_image_mode_loads_as_rgb(tmp_path, mode):
    rgb = Image.fromarray((np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8))
    path = tmp_path / "x.jpg"
    if mode == "PNG-as-jpg":
        rgba = rgb.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(path, format="PNG")
    elif mode == "GIF-as-jpg":
        rgb.convert("P").save(path, format="GIF")
    elif mode == "CMYK":
        rgb.convert("CMYK").save(path, format="JPEG")
    elif mode in ("P", "RGBA"):
        rgb.convert(mode).save(path, format="PNG")
    else:
        rgb.convert(mode).save(path, format="JPEG")
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (10, 12)


def _broken_copy(pets, tmp_path, breaker):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(pets, root)
    image_id = read_split_ids(root, "trainval.txt")[2]
    breaker(*_pair(root, image_id))
    return root, image_id


@pytest.mark.parametrize(
    "problem, message",
    [
        ("missing trimap", "missing trimap"),
        ("size mismatch", "but its image is"),
        ("bad values", "outside {1, 2, 3}"),
        ("unreadable image", "unreadable image"),
        ("missing image", "missing image"),
    ],
)
def test_bad_files_raise_naming_the_file(pets, tmp_path, problem, message):
    def breaker(img, tri):
        if problem == "missing trimap":
            tri.unlink()
        elif problem == "size mismatch":
            Image.open(tri).resize((7, 5)).save(tri)
        elif problem == "bad values":
            a = np.array(Image.open(tri))
            a[0, 0] = 9
            Image.fromarray(a).save(tri)
        elif problem == "unreadable image":
            img.write_bytes(b"not an image at all")
        else:
            img.unlink()

    root, image_id = _broken_copy(pets, tmp_path, breaker)
    ids = read_split_ids(root, "trainval.txt")
    with pytest.raises(DataError, match=message) as err:
        decode_split(root, ids, 32, progress=False)
    assert image_id in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, trimaps, kept = decode_split(root, ids, 32, on_error="skip", progress=False)
    assert image_id not in kept and len(kept) == len(ids) - 1
    assert any("skipped 1 of" in str(w.message) for w in caught)


def test_split_is_deterministic_disjoint_and_covers_trainval():
    ids = [f"Cat_{i}" for i in range(500)]
    train, val = split_ids(ids, 0.2)
    assert not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert 60 < len(val) < 140
    train2, val2 = split_ids(list(reversed(ids)), 0.2)
    assert set(val2) == set(val)  # independent of order


def test_datasets_resize_cache_and_augment(pets, tmp_path, monkeypatch):
    cfg = profile_config("smoke", max_train=None, max_eval=None)
    source = DataSource("env", pets)
    ds = build_datasets(cfg, source, size=40, progress=False, data_dir=tmp_path / "data")
    assert set(ds["train"].ids).isdisjoint(ds["val"].ids)
    assert len(ds["train"]) + len(ds["val"]) == 14 and len(ds["test"]) == 4
    image, target = ds["val"][0]
    assert (
        image.shape == (3, 40, 40)
        and image.dtype == torch.float32
        and 0 <= image.min()
        and image.max() <= 1
    )
    assert target.shape == (40, 40) and set(target.unique().tolist()) <= {0, 1}
    assert list((tmp_path / "data" / "cache").glob("*.pt"))  # decoded once, cached

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    # the second time comes from the cache
    monkeypatch.setattr(decoding, "decode_split", no_decoding)
    again = build_datasets(cfg, source, size=40, progress=False, data_dir=tmp_path / "data")
    assert torch.equal(again["val"].images, ds["val"].images)
    img, tgt = ds["train"][0]  # augmented items keep the configured size
    assert img.shape == (3, 40, 40) and tgt.shape == (40, 40)


def test_joint_flip_keeps_image_and_mask_aligned(pets):
    from torchvision.transforms import v2

    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    images[0, :, :, :3] = 255  # bright left part ...
    trimaps = torch.full((1, 8, 8), 2, dtype=torch.uint8)
    trimaps[0, :, :3] = 1  # ... is the pet
    ds = PetSegmentation(images, trimaps, ["a"], transforms=v2.RandomHorizontalFlip(p=1.0))
    img, tgt = ds[0]
    assert torch.equal(img[0] > 0.5, tgt.bool())
    assert tgt[:, -3:].all() and not tgt[:, :3].any()


def test_source_order_env_then_local_then_synthetic(pets, tmp_path, monkeypatch, capsys):
    from helpers.core.config import load_config

    folder = {"data_dir": tmp_path / "data"}
    monkeypatch.setenv("PETS_ROOT", str(pets))
    cfg = load_config("smoke")  # the environment is read here
    assert cfg.pets_root == str(pets) and resolve_source(cfg, **folder).kind == "env"
    assert "PETS_ROOT" in capsys.readouterr().out  # the choice is printed
    # an argument wins over PETS_ROOT
    assert resolve_source(cfg, data_root=pets, **folder).kind == "root"
    assert "data root given" in capsys.readouterr().out
    monkeypatch.setenv("PETS_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="oxford-iiit-pet"):
        resolve_source(load_config("smoke"), **folder)
    monkeypatch.delenv("PETS_ROOT")
    cfg = load_config("smoke")
    src = resolve_source(cfg, download=False, **folder)
    assert (
        src.kind == "synthetic"
        and (src.root / "oxford-iiit-pet" / "annotations" / "test.txt").is_file()
    )
    assert src.root.parent == tmp_path / "data"
    import shutil

    shutil.copytree(pets / "oxford-iiit-pet", tmp_path / "data" / "oxford-iiit-pet")
    assert resolve_source(cfg, download=False, **folder).kind == "local"
