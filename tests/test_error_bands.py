"""Wrong pixels by their distance from the true boundary (helpers/error_bands.py)."""

import pytest
import torch

from helpers.analysis.error_bands import (
    DISTANCE_EDGES,
    ErrorBands,
    band_index,
    band_labels,
    boundary_distance,
    edges_with,
    error_bands,
    format_bands,
    label_distance,
)
from helpers.analysis.metrics import confusion_matrix


def brute_distance(target: torch.Tensor, cap: int) -> torch.Tensor:
    """Chessboard distance of each pixel to the nearest pixel of another class, pixel by pixel."""
    n, h, w = target.shape
    out = torch.full(target.shape, cap + 1, dtype=torch.int64)
    for b in range(n):
        others = {c: (target[b] != c).nonzero() for c in target[b].unique().tolist()}
        for y in range(h):
            for x in range(w):
                pts = others[int(target[b, y, x])]
                if len(pts):
                    d = int((pts - torch.tensor([y, x])).abs().max(1).values.min())
                    out[b, y, x] = min(d, cap + 1)
    return out


def brute_label_distance(pred: torch.Tensor, target: torch.Tensor, cap: int) -> torch.Tensor:
    """For each pixel, the chessboard distance to the nearest pixel ``pred`` gives its true
    class."""
    out = torch.zeros(target.shape, dtype=torch.int64)
    for b, y, x in (pred != target).nonzero().tolist():
        pts = (pred[b] == target[b, y, x]).nonzero()
        d = int((pts - torch.tensor([y, x])).abs().max(1).values.min()) if len(pts) else cap + 1
        out[b, y, x] = min(d, cap + 1)
    return out


def blobs(n: int, classes: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Label maps of regions several pixels wide: nearest upsampling of a random coarse grid."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, classes, (n, 1, 4, 5), generator=g).float()
    return torch.nn.functional.interpolate(grid, size=size, mode="nearest")[:, 0].long()


def test_distance_of_a_straight_boundary_counts_columns():
    target = torch.zeros(1, 6, 10, dtype=torch.long)
    target[0, :, 5:] = 1
    d = boundary_distance(target, 2, max_distance=4)
    # columns 0..9: 5 4 3 2 1 | 1 2 3 4 5, capped at 4 + 1
    assert d[0, 0].tolist() == [5, 4, 3, 2, 1, 1, 2, 3, 4, 5]
    assert (d == d[:, :1]).all(), "every row is the same"


def test_distance_is_chessboard_and_the_border_is_no_boundary():
    target = torch.zeros(1, 9, 9, dtype=torch.long)
    target[0, 4, 4] = 1
    d = boundary_distance(target, 2, max_distance=8)
    y, x = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    expected = torch.maximum((y - 4).abs(), (x - 4).abs())
    expected[4, 4] = 1  # the lone pet pixel touches background on every side
    assert torch.equal(d[0], expected)
    one_class = torch.ones(2, 5, 7, dtype=torch.long)
    assert (boundary_distance(one_class, 2, 3) == 4).all(), (
        "an image of one class has no boundary at all"
    )


@pytest.mark.parametrize("classes", [2, 3])
def test_distance_matches_a_brute_force_search(classes):
    target = blobs(3, classes, (13, 17), seed=0)
    assert torch.equal(boundary_distance(target, classes, 5), brute_distance(target, 5))


@pytest.mark.parametrize("classes", [2, 3])
def test_label_distance_matches_a_brute_force_search(classes):
    target, pred = blobs(3, classes, (13, 17), seed=2), blobs(3, classes, (13, 17), seed=3)
    pred[0] = 0  # an image whose map lacks every class but one: its other errors are "farther"
    d = label_distance(pred, target, classes, 5)
    assert torch.equal(d, brute_label_distance(pred, target, 5))
    assert ((d == 0) == (pred == target)).all(), "right pixels, and only they, are at distance 0"
    assert (d[0][target[0] != 0] == 6).all()


def test_label_distance_of_a_missed_strip_counts_from_its_far_edge():
    target = torch.zeros(1, 3, 30, dtype=torch.long)
    target[..., 10:] = 1
    pred = target.clone()
    pred[..., 10:20] = 0  # 10 px of pet missed: the nearest pet label is at column 20
    assert label_distance(pred, target, 2, 12)[0, 0, 8:22].tolist() == [
        0,
        0,
        10,
        9,
        8,
        7,
        6,
        5,
        4,
        3,
        2,
        1,
        0,
        0,
    ]
    bands = error_bands(pred, target, measure="label")
    # 3 rows x columns at distance 1, 2, 3, 4-6, 7-10: what T iterations of reach r could bridge
    assert bands.errors.tolist() == [3, 3, 3, 9, 12, 0, 0, 0] and torch.equal(
        bands.pixels, bands.errors
    )
    assert bands.within(6) == pytest.approx(0.6) and bands.total == 90
    assert float(bands.share_of_pixels().sum()) == pytest.approx(30 / 90)
    with pytest.raises(ValueError, match="boundary distance"):
        bands.error_rate()
    # by the boundary distance the same errors are 1..10 px inside the pet
    assert error_bands(pred, target).errors.tolist() == [3, 3, 3, 9, 12, 0, 0, 0]


def test_bands_number_distances_by_their_upper_edge():
    d = torch.tensor([1, 2, 3, 4, 6, 7, 12, 13, 18, 19, 36, 37])
    assert band_index(d).tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7]
    assert band_labels() == ["1", "2", "3", "4-6", "7-12", "13-18", "19-36", ">36"]
    assert edges_with(8, 6) == (1, 2, 3, 6, 8, 12, 18, 36)
    with pytest.raises(ValueError, match=">= 1"):
        edges_with(0)


def test_a_shifted_boundary_puts_every_error_within_the_shift():
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, :, 8:] = 1
    for shift in (1, 2, 3):
        pred = torch.zeros_like(target)
        pred[:, :, 8 + shift :] = 1  # the map's edge ``shift`` px too far right: pet pixels missed
        bands = error_bands(pred, target)
        assert int(bands.errors.sum()) == 2 * 16 * shift
        # the missed pixels are at distances 1..shift on the pet side: one column per band
        assert (
            bands.errors[:shift].tolist() == [2 * 16] * shift
            and int(bands.errors[shift:].sum()) == 0
        )
        assert bands.within(3) == 1.0


def test_bands_partition_the_pixels_and_count_exactly_the_wrong_ones():
    g = torch.Generator().manual_seed(1)
    target = torch.nn.functional.interpolate(
        torch.randint(0, 2, (5, 1, 6, 6), generator=g).float(), size=(40, 40), mode="nearest"
    )[:, 0].long()
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.2, 1 - target, target)
    label = error_bands(pred, target, measure="label", edges=edges_with(8))
    assert label.edges == (1, 2, 3, 6, 8, 12, 18, 36) and len(label.errors) == 9
    bands = error_bands(pred, target)
    cm = confusion_matrix(pred, target)
    assert int(bands.pixels.sum()) == bands.total == target.numel()
    assert int(bands.errors.sum()) == int(label.errors.sum()) == int(cm.sum() - cm.trace())
    assert float(bands.share_of_pixels().sum()) == pytest.approx(float(1 - cm.trace() / cm.sum()))
    # counted in batches or pooled from parts, the same counts
    parts = error_bands(pred[:2], target[:2]) + error_bands(pred[2:], target[2:])
    for other in (parts, error_bands(pred, target, batch_size=2)):
        assert torch.equal(other.pixels, bands.pixels) and torch.equal(other.errors, bands.errors)
    rate = bands.error_rate()
    filled = bands.pixels > 0
    assert torch.allclose(rate[filled], bands.errors[filled].double() / bands.pixels[filled])
    assert rate[~filled].isnan().all()


def test_bad_arguments_are_refused():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="differ in shape"):
        error_bands(t, t[:, :3])
    with pytest.raises(ValueError, match="increase"):
        error_bands(t, t, edges=(3, 2))
    with pytest.raises(ValueError, match="increase"):
        error_bands(t, t, edges=())
    with pytest.raises(ValueError, match="measure"):
        error_bands(t, t, measure="nearest")
    with pytest.raises(ValueError, match="no stages"):
        format_bands({})
    with pytest.raises(ValueError, match="not a band edge"):
        error_bands(t, t).within(5)
    a = error_bands(t, t)
    with pytest.raises(ValueError, match="cannot pool"):
        a + ErrorBands(
            (1, 2), torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 16
        )
    with pytest.raises(ValueError, match="cannot pool"):
        a + error_bands(t, t, measure="label")


def test_table_rows_sum_to_the_pixel_error():
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[0, 5:15, 5:15] = 1
    pred = target.clone()
    pred[0, 5:15, 5:7] = 0  # two columns of pet missed: 20 of 400 pixels wrong
    text = format_bands(
        {"map": error_bands(pred, target), "truth": error_bands(target, target)}, {"CSPN": 6}
    )
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["stage", "1"] and "within 6 px (CSPN)" in lines[0]
    assert lines[1].split()[-2:] == [
        "5.00",
        "100%",
    ]  # 20 / 400 pixels, all within 2 px of the boundary
    assert lines[2].split()[-2:] == ["0.00", "0%"]
    assert len(DISTANCE_EDGES) + 1 == len(band_labels())
