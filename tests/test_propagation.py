"""CSPN and DySPN tested as numerical code: gradients, invariants, and a slow reference."""

import pytest
import torch

from helpers.models.propagation import base
from helpers.models.propagation.autograd import AFFINITY_LIMIT, prepare_affinity, rectify
from helpers.models.propagation.fast import ring_sums as fast_ring_sums
from helpers.models.propagation.geometry import (
    Window,
    border_mask,
    ring_sizes,
    window_offsets,
    window_reach,
)
from helpers.models.propagation.neighbours import gather, ring_sums
from helpers.models.propagation.propagators import CSPN, DySPN
from helpers.models.propagation.reference import reference_cspn, reference_dyspn, unfold_neighbours

T = 6


def probs(b=2, c=2, h=9, w=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(b, c, h, w, generator=g, dtype=dtype), 1)


def randn(*shape, dtype=torch.float64, seed=1, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


DILATION = {"dyspn": 1, "dyspn-dilated": 2}  # DySPN with its rings 2 and 3 at distances 4 and 6


# the readable steps (the exercises' code, what the student edition trains with) and the custom
# autograd path (the CPU default) must both hold every property below
BACKENDS = ["torch", "plain"]


def make(method, iterations=T, backend="auto"):
    if method == "cspn":
        return CSPN(iterations, backend=backend)
    return DySPN(iterations, dilation=DILATION[method], backend=backend)


def run(method, h0, raw_aff, raw_att=None, iterations=T, backend="auto"):
    if method == "cspn":
        return make(method, iterations, backend)(h0, raw_aff)
    return make(method, iterations, backend)(h0, raw_aff, raw_att)


def reference(method, h0, aff, att, iterations=T, **kw):
    if method == "cspn":
        return reference_cspn(h0, aff, iterations, **kw)
    return reference_dyspn(h0, aff, att, iterations, kernel=Window(7, DILATION[method]), **kw)


def heads(method, b, h, w, dtype=torch.float64, scale=1.0, seed=1):
    if method == "cspn":
        return randn(b, 8, h, w, dtype=dtype, seed=seed, scale=scale), None
    return randn(b, 48, h, w, dtype=dtype, seed=seed, scale=scale), randn(
        b, T * 4, h, w, dtype=dtype, seed=seed + 1, scale=scale
    )


METHODS = ["cspn", "dyspn", "dyspn-dilated"]
# the smallest map a gradcheck may use: every ring must have neighbours inside it (ring 3 of the
# dilated window sits 6 pixels away)
GRAD_SIZE = {"cspn": (5, 6), "dyspn": (5, 6), "dyspn-dilated": (7, 8)}


def test_neighbourhood_layout():
    assert ring_sizes(7) == (8, 16, 24)
    offs = window_offsets(7)
    assert len(offs) == 48 and len(set(offs)) == 48 and (0, 0) not in offs
    # ring by ring: Chebyshev distance never decreases
    dist = [max(abs(dy), abs(dx)) for dy, dx in offs]
    assert dist == sorted(dist) and dist.count(1) == 8 and dist.count(3) == 24
    m = border_mask(3, 4, 5)
    assert m[:, 1:-1, 1:-1].eq(1).all()  # interior pixels see all 8 neighbours
    assert m[:, 0, 0].sum() == 3  # a corner sees 3


def test_dilated_window_spreads_the_outer_rings_and_keeps_the_first():
    plain, dilated = window_offsets(7), window_offsets(Window(7, 2))
    assert window_offsets(Window(7, 1)) == plain and window_offsets(Window(3, 4)) == window_offsets(
        3
    )
    assert len(set(dilated)) == 48 and ring_sizes(Window(7, 2)) == (8, 16, 24)
    assert dilated[:8] == plain[:8]  # ring 1 stays at distance 1
    assert dilated[8:] == tuple((2 * dy, 2 * dx) for dy, dx in plain[8:])  # rings 2, 3 at 4 and 6
    assert (
        window_reach(3),
        window_reach(7),
        window_reach(Window(7, 2)),
        window_reach(Window(7, 3)),
    ) == (1, 3, 6, 9)
    m = border_mask(Window(7, 2), 13, 13)
    # 1 px off-centre: ring 3's row of 7 at dy = -6 falls out
    assert m[:, 6, 6].eq(1).all() and m[:, 5, 6].sum() == 48 - 7
    for bad in (dict(size=7, dilation=0), dict(size=6), dict(size=7, dilation=1.5)):
        with pytest.raises(ValueError):
            Window(**bad)
    with pytest.raises(ValueError, match="dilation"):
        DySPN(6, dilation=0)


@pytest.mark.parametrize("dilation", [1, 2])
def test_one_iteration_moves_a_value_exactly_onto_the_window(dilation):
    """A single pet pixel, every affinity positive: after one DySPN iteration exactly the pixels
    that have it as a neighbour hold some pet, none between the dilated rings, none beyond."""
    size, c = 21, 10
    h0 = torch.zeros(1, 2, size, size, dtype=torch.float64)
    h0[:, 0] = 1.0
    h0[:, :, c, c] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    aff, att = (
        torch.ones(1, 48, size, size, dtype=torch.float64),
        torch.zeros(1, 4, size, size, dtype=torch.float64),
    )
    out = DySPN(1, dilation=dilation)(h0, aff, att).final
    reached = {(y - c, x - c) for y, x in (out[0, 1] > 0).nonzero().tolist()}
    assert reached == set(window_offsets(Window(7, dilation))) | {(0, 0)}
    assert max(max(abs(dy), abs(dx)) for dy, dx in reached) == DySPN(1, dilation=dilation).reach


def test_reach_bounds_how_far_t_iterations_move_a_value():
    """From a single pet pixel, every affinity positive, T iterations bring pet exactly to the
    pixels within T x reach (chessboard): the distance helpers.analysis.error_bands compares errors
    with."""
    size, c, steps = 25, 12, 3
    for prop in (CSPN(steps), DySPN(steps)):
        h0 = torch.zeros(1, 2, size, size, dtype=torch.float64)
        h0[:, 0] = 1.0
        h0[:, :, c, c] = torch.tensor([0.0, 1.0], dtype=torch.float64)
        aff = torch.full((1, prop.affinity_channels, size, size), 0.1, dtype=torch.float64)
        args = (
            (torch.zeros(1, 4 * steps, size, size, dtype=torch.float64),)
            if isinstance(prop, DySPN)
            else ()
        )
        reached = {
            (y - c, x - c) for y, x in (prop(h0, aff, *args).final[0, 1] > 0).nonzero().tolist()
        }
        r = steps * prop.reach  # every offset of a full window of this radius, and none beyond
        assert reached == {(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)}, type(
            prop
        ).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", [3, 7])
def test_prepared_affinity_is_autograd_of_the_reference_bit_for_bit(kernel, dtype):
    """The hand-written backward of prepare_affinity against autograd through clamp, the border
    mask and rectify: equal to the last bit, at the cases that differ between formulas too:
    exact zeros (a zero-initialised head: slope 1 for k+, 0 for |k|), the clamp limit itself
    and beyond it (no gradient), and out-of-image neighbours (no gradient)."""
    K = len(window_offsets(kernel))
    raw = randn(3, K, 9, 11, dtype=dtype, scale=2.0)
    raw[0, :3] = 0.0
    raw[1, 0, 4, 4], raw[1, 1, 4, 5] = 3 * AFFINITY_LIMIT, -2 * AFFINITY_LIMIT
    raw[2, 2, 4, 4], raw[2, 3, 4, 4] = AFFINITY_LIMIT, -AFFINITY_LIMIT
    g_pos, g_mag = randn(*raw.shape, dtype=dtype, seed=5), randn(*raw.shape, dtype=dtype, seed=6)
    fast = raw.clone().requires_grad_()
    pos, mag = prepare_affinity(fast, kernel)
    torch.autograd.backward([pos, mag], [g_pos, g_mag])
    slow = raw.clone().requires_grad_()
    k = slow.clamp(-AFFINITY_LIMIT, AFFINITY_LIMIT) * border_mask(kernel, 9, 11, dtype=dtype)
    pos_ref, mag_ref = rectify(k)
    torch.autograd.backward([pos_ref, mag_ref], [g_pos, g_mag])
    assert torch.equal(pos, pos_ref) and torch.equal(mag, mag_ref)
    assert torch.equal(fast.grad, slow.grad)
    # the cases themselves, spelled out
    # k = 0: k+ has slope 1, |k| slope 0
    assert torch.equal(fast.grad[0, :3, 4, 4], g_pos[0, :3, 4, 4])
    assert fast.grad[1, 0, 4, 4] == 0 and fast.grad[2, 2, 4, 4] == 0 and fast.grad[2, 3, 4, 4] == 0
    outside = border_mask(kernel, 9, 11, dtype=dtype).expand_as(raw) == 0
    assert outside.any() and (fast.grad[outside] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(method, backend):
    h, w = GRAD_SIZE[method]
    assert border_mask(make(method).kernel, h, w)[-1].sum() > 0, (
        "the outermost ring must reach inside"
    )
    h0 = probs(1, 2, h, w).requires_grad_()
    aff, att = heads(method, 1, h, w)
    aff.requires_grad_()
    inputs = (h0, aff) if att is None else (h0, aff, att.requires_grad_())
    fn = (
        (lambda a, b: make(method, 3, backend)(a, b).final)
        if method == "cspn"
        else (lambda a, b, c: make(method, 3, backend)(a, b, c).final)
    )
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_matches_unfold_reference(method, backend):
    h0 = probs(2, 3, 10, 13)
    aff, att = heads(method, 2, 10, 13, scale=0.7)
    ours = run(method, h0, aff, att, backend=backend).maps
    ref = reference(method, h0, aff, att)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # float32 too, against the float64 reference
    ours32 = run(
        method, h0.float(), aff.float(), None if att is None else att.float(), backend=backend
    ).final
    torch.testing.assert_close(ours32.double(), ref[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e30])
def test_constant_map_stays_exactly_constant(method, scale, backend):
    b, h, w = 2, 8, 9
    const = (
        torch.tensor([0.3, 0.7], dtype=torch.float32)
        .view(1, 2, 1, 1)
        .expand(b, 2, h, w)
        .contiguous()
    )
    aff, att = heads(method, b, h, w, dtype=torch.float32, scale=scale)
    out = run(method, const, aff, att, backend=backend)
    for m in out.maps:
        assert torch.equal(m, const), "a constant map changed (at the border?)"


@pytest.mark.parametrize("method", METHODS)
def test_zero_head_is_identity_and_still_learns(method):
    h0 = probs(2, 2, 7, 8, dtype=torch.float32)
    aff = torch.zeros(2, 8 if method == "cspn" else 48, 7, 8, requires_grad=True)
    att = None if method == "cspn" else torch.zeros(2, T * 4, 7, 8, requires_grad=True)
    out = run(method, h0, aff, att)
    for m in out.maps:
        assert torch.equal(m, h0)
    (out.final[:, 1] * torch.randn(7, 8)).sum().backward()
    assert aff.grad.abs().sum() > 0, "a zero-initialised head would never train"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e6, 1e30])
def test_refined_maps_are_probabilities_for_any_head(method, scale):
    h0 = probs(2, 3, 9, 10, dtype=torch.float32, seed=3)
    aff, att = heads(method, 2, 9, 10, dtype=torch.float32, scale=scale, seed=4)
    for m in run(method, h0, aff, att).maps:
        assert torch.isfinite(m).all()
        assert m.min() >= -1e-6 and m.max() <= 1 + 1e-6
        torch.testing.assert_close(m.sum(1), torch.ones_like(m[:, 0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_translation_equivariance_away_from_borders(method):
    reach = T * window_reach(make(method).kernel)  # how far information travels in T steps
    size = 2 * (reach + 4) + 6  # leaves a 6 x 6 square out of the border's reach
    h0 = probs(1, 2, size, size, seed=5)
    aff, att = heads(method, 1, size, size, seed=6)
    shift = (4, -3)
    roll = lambda x: torch.roll(x, shift, dims=(-2, -1)) if x is not None else None  # noqa: E731
    a = run(method, h0, aff, att).final
    b = run(method, roll(h0), roll(aff), roll(att)).final
    lo, hi = reach + 4, size - reach - 4  # pixels unaffected by the border or the roll seam
    assert hi - lo == 6
    torch.testing.assert_close(roll(a)[..., lo:hi, lo:hi], b[..., lo:hi, lo:hi], atol=1e-12, rtol=0)
    # the comparison can fail: at the roll's seam (row 4) the two runs do differ
    assert (roll(a)[..., 4, lo:hi] - b[..., 4, lo:hi]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_no_wrap_around(method, backend):
    """Mass at the left border must never reach the right border (what torch.roll would do)."""
    # 2 iterations reach less than half-way
    h, w = (12, max(16, 4 * window_reach(make(method).kernel) + 4))
    h0 = torch.zeros(1, 2, h, w, dtype=torch.float64)
    h0[:, 0] = 1.0
    h0[:, 1, :, 0] = 1.0  # a pet column on the left edge
    h0[:, 0, :, 0] = 0.0
    aff, att = heads(method, 1, h, w, scale=5.0)
    out = run(method, h0, aff, att, iterations=2, backend=backend).final
    assert out[:, 1, :, -1].abs().max() == 0, "probability leaked across the image border"
    assert out[:, 1, :, w // 2 :].abs().max() == 0


def test_dyspn_returns_attention_per_iteration():
    h0 = probs(1, 2, 6, 7, dtype=torch.float32)
    aff, att = heads("dyspn", 1, 6, 7, dtype=torch.float32)
    out = DySPN(T)(h0, aff, att)
    assert out.attention.shape == (1, T, 4, 6, 7)
    assert len(out.maps) == T + 1 and torch.equal(out.maps[0], h0)
    torch.testing.assert_close(out.attention, torch.sigmoid(att).view(1, T, 4, 6, 7))


@pytest.mark.parametrize("method", METHODS)
def test_autocast_runs_propagation_in_float32(method):
    h0 = probs(1, 2, 8, 8, dtype=torch.float32)
    aff, att = heads(method, 1, 8, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(method, h0.bfloat16(), aff.bfloat16(), None if att is None else att.bfloat16())
    assert out.final.dtype == torch.float32
    ref = run(
        method,
        h0.bfloat16().float(),
        aff.bfloat16().float(),
        None if att is None else att.bfloat16().float(),
    )
    torch.testing.assert_close(out.final, ref.final)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn`` runs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_memory_grows_linearly_and_below_unfold():
    """Per DySPN iteration autograd keeps a few maps, not 48 neighbour copies as unfold does."""
    h0 = probs(1, 2, 32, 32, dtype=torch.float32)
    aff, att = heads("dyspn", 1, 32, 32, dtype=torch.float32)
    aff.requires_grad_()
    att.requires_grad_()
    per_map = h0.numel() * 4
    ours = {t: _saved_bytes(lambda: DySPN(t)(h0, aff, att)) for t in (2, 4, 6)}
    assert ours[6] - ours[4] == ours[4] - ours[2], "memory must grow linearly with iterations"
    assert (ours[4] - ours[2]) / 2 <= 10 * per_map
    ref = _saved_bytes(lambda: reference_dyspn(h0, aff, att, 6))
    assert ours[6] < ref / 2


# ------------------------------------------------------------------------------ NLSPN confidence
def run_confident(method, h0, aff, att, conf, iterations=T):
    if method == "cspn":
        return make(method, iterations)(h0, aff, raw_confidence=conf)
    return make(method, iterations)(h0, aff, att, raw_confidence=conf)


@pytest.mark.parametrize("method", METHODS)
def test_confidence_matches_the_reference_and_its_gradients_check(method):
    """w_j^+ c_j with c read at the neighbour, the rest of the weight sent to H^0: the residual
    form against the unfold reference's weighted sums, and gradcheck through c."""
    h0 = probs(2, 3, 10, 13)
    aff, att = heads(method, 2, 10, 13, scale=0.7)
    conf = randn(2, 1, 10, 13, seed=9, scale=2.0)
    ours = run_confident(method, h0, aff, att, conf).maps
    ref = reference(method, h0, aff, att, raw_confidence=conf)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (ours[-1] - run(method, h0, aff, att).final).abs().max() > 1e-3, (
        "the confidence changed nothing"
    )
    h, w = GRAD_SIZE[method]
    small = probs(1, 2, h, w).requires_grad_()
    a, b = heads(method, 1, h, w)
    c = randn(1, 1, h, w, seed=7).requires_grad_()
    inputs = (
        (small, a.requires_grad_(), c)
        if b is None
        else (small, a.requires_grad_(), b.requires_grad_(), c)
    )
    fn = (
        (lambda h, k, q: make(method, 3)(h, k, raw_confidence=q).final)
        if method == "cspn"
        else (lambda h, k, p, q: make(method, 3)(h, k, p, raw_confidence=q).final)
    )
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_confidence_keeps_the_guarantees_and_its_limits_are_known(method):
    """Probabilities stay probabilities and constants stay constant for any confidence; c = 0
    everywhere is the identity (nothing spreads), c = 1 everywhere is propagation without it."""
    h0 = probs(2, 3, 9, 10, dtype=torch.float32, seed=3)
    aff, att = heads(method, 2, 9, 10, dtype=torch.float32, scale=3.0, seed=4)
    conf = randn(2, 1, 9, 10, dtype=torch.float32, seed=5, scale=30.0)
    for m in run_confident(method, h0, aff, att, conf).maps:
        assert m.min() >= -1e-6 and m.max() <= 1 + 1e-6
        torch.testing.assert_close(m.sum(1), torch.ones_like(m[:, 0]), atol=1e-5, rtol=0)
    const = torch.tensor([0.2, 0.3, 0.5]).view(1, 3, 1, 1).expand(2, 3, 9, 10).contiguous()
    assert all(torch.equal(m, const) for m in run_confident(method, const, aff, att, conf).maps)
    # sigmoid -> 0 exactly
    nothing = run_confident(method, h0, aff, att, torch.full((2, 1, 9, 10), -1e4)).final
    torch.testing.assert_close(nothing, h0, atol=1e-6, rtol=0)
    # sigmoid -> 1 exactly
    full = run_confident(method, h0, aff, att, torch.full((2, 1, 9, 10), 1e4))
    assert torch.equal(full.final, run(method, h0, aff, att).final)
    assert full.confidence.shape == (2, 1, 9, 10) and torch.equal(
        full.confidence, torch.ones(2, 1, 9, 10)
    )


def test_confidence_of_the_wrong_shape_is_refused():
    h0 = probs(1, 2, 6, 7, dtype=torch.float32)
    aff, _ = heads("cspn", 1, 6, 7, dtype=torch.float32)
    with pytest.raises(ValueError, match="confidence must be"):
        CSPN(2)(h0, aff, raw_confidence=torch.zeros(1, 2, 6, 7))
    with pytest.raises(ValueError, match="confidence hold NaN"):
        CSPN(2)(h0, aff, raw_confidence=torch.full((1, 1, 6, 7), float("nan")))


@pytest.mark.parametrize("kernel", [3, 5, 7, Window(7, 2), Window(5, 3)])
def test_gather_reads_every_neighbour_and_zero_outside_the_image(kernel):
    """The plain gather against ``F.unfold`` (another route), and each value at its offset."""
    x = randn(2, 3, 9, 11)
    got = gather(x, kernel)
    assert got.shape == (2, 3, len(window_offsets(kernel)), 9, 11)
    assert torch.equal(got, unfold_neighbours(x, kernel))
    for j, (dy, dx) in enumerate(window_offsets(kernel)):
        for y, xx in [(0, 0), (4, 5), (8, 10), (0, 10), (8, 0)]:
            inside = 0 <= y + dy < 9 and 0 <= xx + dx < 11
            want = x[:, :, y + dy, xx + dx] if inside else torch.zeros(2, 3, dtype=x.dtype)
            assert torch.equal(got[:, :, j, y, xx], want), (kernel, j, y, xx)


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("kernel", [3, 7, Window(7, 2)])
def test_plain_ring_sums_match_the_custom_autograd_function(kernel, centred):
    """The readable ring sums (exercise 8's code) and the fast path: values and gradients."""
    x = randn(2, 2, 8, 10, seed=3).requires_grad_()
    w = randn(2, len(window_offsets(kernel)), 8, 10, seed=4).requires_grad_()
    g = randn(2, len(ring_sizes(kernel)), 2, 8, 10, seed=5)
    grads = []
    for fn in (ring_sums, fast_ring_sums):
        out = fn(x, w, kernel, centred)
        grads.append((out, *torch.autograd.grad((out * g).sum(), (x, w))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_the_backend_resolves_to_the_plain_steps_where_the_fast_paths_are_missing(monkeypatch):
    """The student edition has no ``fast.py`` nor ``kernels.py``: ``auto`` runs the plain steps
    (the student's own), and asking for a missing backend says which one to use."""
    h0 = probs(1, 2, 6, 7)
    aff, att = heads("dyspn", 1, 6, 7)
    x = torch.zeros(1)
    assert CSPN(2).backend_for(x) == "torch" and CSPN(2, backend="plain").backend_for(x) == "plain"
    want = DySPN(2)(h0, aff, att).final
    monkeypatch.setattr(base, "HAS_FAST_PATH", False)
    assert CSPN(2).backend_for(x) == "plain" and DySPN(2).backend_for(x) == "plain"
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match="not part of the student edition.*'plain'"):
            CSPN(2, backend=backend)
    torch.testing.assert_close(DySPN(2)(h0, aff, att).final, want, atol=1e-12, rtol=0)
