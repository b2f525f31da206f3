"""Scrub through the propagation iterations with an ipywidgets slider and a Play button.

Every frame (t = 0..T) is rendered to PNG once, up front; moving the slider only swaps the PNG
shown, so scrubbing is instant. The Play button drives the slider through ``widgets.link``
(kernel-side: ``jslink`` does not work on Colab). Where widgets cannot render (GitHub, a static
HTML export), the same output carries a static strip of all iterations as ``image/png``.
"""

from __future__ import annotations

import base64

import matplotlib.pyplot as plt
import numpy as np
import torch

from .viz import PET_CMAP, axes_off, figure_png, iteration_strip, ring_names, to_numpy_image


def render_frame(
    image: torch.Tensor, maps: list, t: int, attention: torch.Tensor | None = None, title: str = ""
) -> bytes:
    """PNG of iteration ``t``: RGB, pet probability H^t, change H^t - H^{t-1}, and (DySPN) the
    attention pi^t of this iteration, one panel per ring and one for the pixel itself.

    image (3, H, W); maps: T + 1 tensors (C, H, W); attention (T, R + 1, H, W) or None.
    """
    pet = [m[-1].detach().cpu().numpy() for m in maps]
    change = pet[t] - pet[t - 1] if t > 0 else np.zeros_like(pet[0])
    n_att = attention.shape[1] if attention is not None else 0
    # DySPN: the map on top, the attention of this iteration below, so every panel stays readable
    cols = max(3, n_att)
    rows = 2 if n_att else 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    top = axes[0]
    top[0].imshow(to_numpy_image(image)), top[0].set_title("RGB")
    (
        top[1].imshow(pet[t], cmap=PET_CMAP, vmin=0, vmax=1),
        top[1].set_title(f"pet probability $H^{{{t}}}$"),
    )
    lim = (
        max(1e-3, float(max(np.abs(pet[k] - pet[k - 1]).max() for k in range(1, len(pet)))))
        if len(pet) > 1
        else 1
    )
    top[2].imshow(change, cmap="coolwarm", vmin=-lim, vmax=lim)
    top[2].set_title(f"change $H^{{{t}}} - H^{{{t - 1}}}$" if t else "start (no change)")
    for ax in top[3:]:
        ax.set_visible(False)
    labels = ring_names(n_att - 1) if n_att else []  # as many rings as the DySPN kernel has
    for r in range(n_att):
        ax = axes[1, r]
        if t == 0:
            ax.imshow(np.zeros(pet[0].shape), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{labels[r]}: none at t = 0", fontsize=9)
        else:
            ax.imshow(attention[t - 1, r].detach().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"$\\pi^{{{t}}}$, {labels[r]}", fontsize=9)
    axes_off(axes)
    fig.suptitle(title or f"iteration t = {t} of {len(maps) - 1}")
    fig.tight_layout()
    return figure_png(fig)


class IterationScrubber:
    """A slider + Play button over precomputed iteration frames of one image.

    ``image`` (3, H, W); ``maps``: T + 1 tensors (C, H, W); ``attention`` (T, R + 1, H, W) or None.
    ``frames[t]`` holds the PNG bytes of iteration t; ``view.value`` is the frame on screen.
    """

    def __init__(
        self,
        image: torch.Tensor,
        maps: list,
        attention: torch.Tensor | None = None,
        title: str = "",
        interval_ms: int = 700,
    ):
        import ipywidgets as widgets

        if len(maps) < 1:
            raise ValueError("need at least the start map")
        self.T = len(maps) - 1
        self.frames = [render_frame(image, maps, t, attention, title) for t in range(self.T + 1)]
        self.strip = figure_png(iteration_strip(maps, image, title or "all iterations"))
        self.slider = widgets.IntSlider(
            value=0, min=0, max=self.T, description="iteration t", continuous_update=True
        )
        self.play = widgets.Play(
            value=0, min=0, max=self.T, interval=interval_ms, description="Play"
        )
        widgets.link((self.play, "value"), (self.slider, "value"))
        self.view = widgets.Image(value=self.frames[0], format="png")
        self.slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.view])

    def _on_change(self, change: dict) -> None:
        self.view.value = self.frames[change["new"]]

    def show(self, t: int) -> None:
        """Move to iteration ``t`` (as a user dragging the slider would)."""
        if not 0 <= t <= self.T:
            raise ValueError(f"iteration must be in 0..{self.T}, got {t}")
        self.slider.value = t

    @property
    def current(self) -> int:
        return self.slider.value

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["image/png"] = base64.b64encode(self.strip).decode("ascii")  # static fallback
        bundle["text/plain"] = (
            f"IterationScrubber over t = 0..{self.T} (static strip shown where widgets do not "
            "render)"
        )
        return bundle


def scrubber_for(refined, index: int, image: torch.Tensor, title: str = "") -> IterationScrubber:
    """Scrubber of one image from a :class:`~helpers.models.refiner.RefineOutput` of a batch."""
    prop = refined.propagation
    if prop is None:
        raise ValueError("this refiner has no propagation to scrub (the control)")
    maps = [m[index] for m in prop.maps]
    attention = prop.attention[index] if prop.attention is not None else None
    return IterationScrubber(image, maps, attention, title)
