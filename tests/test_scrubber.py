"""The iteration scrubber, driven headlessly: slider, Play link, frames, static fallback."""

import base64

import pytest
import torch

from helpers.analysis.scrubber import IterationScrubber, render_frame
from helpers.models.propagation.propagators import DySPN


@pytest.fixture(scope="module")
def dyspn_result():
    torch.manual_seed(0)
    h0 = torch.softmax(3 * torch.randn(1, 2, 16, 16), 1)
    return torch.rand(3, 16, 16), DySPN(4)(
        h0, torch.randn(1, 48, 16, 16), torch.randn(1, 16, 16, 16)
    )


def test_slider_shows_the_precomputed_frame(dyspn_result):
    image, out = dyspn_result
    s = IterationScrubber(image, [m[0] for m in out.maps], out.attention[0])
    assert s.T == 4 and len(s.frames) == 5
    assert len({f for f in s.frames}) == 5  # every iteration looks different
    assert s.view.value == s.frames[0]
    s.show(3)
    assert s.current == 3 and s.view.value == s.frames[3]
    s.play.value = 1  # Play drives the slider through widgets.link
    assert s.slider.value == 1 and s.view.value == s.frames[1]
    s.slider.value = 4
    assert s.play.value == 4
    with pytest.raises(ValueError):
        s.show(5)


def test_frames_are_pngs_of_the_right_iteration(dyspn_result):
    image, out = dyspn_result
    maps = [m[0] for m in out.maps]
    png = render_frame(image, maps, 2, out.attention[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png != render_frame(image, maps, 3, out.attention[0])


def test_static_fallback_in_the_mimebundle(dyspn_result):
    image, out = dyspn_result
    s = IterationScrubber(image, [m[0] for m in out.maps])  # CSPN-like: no attention
    bundle = s._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]) == s.strip
    assert "t = 0..4" in bundle["text/plain"]
