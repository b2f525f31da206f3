"""The figures shown in the README and docs, drawn from a run's trained stages
(``python -m helpers figures``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from ..analysis.viz import attention_row, prediction_grid
from .workflow import gains_and_losses, refine_images


def save_readme_figures(wb, stages: dict, folder, count: int = 3) -> list:
    """The README's figures, made from ``wb``'s validation set: coarse vs refined maps for the
    ``count`` images where DySPN gains most, and a row of DySPN attention maps of the showcase
    image. Returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    val = wb.data["val"]
    gains, _ = gains_and_losses(stages["coarse"].image_miou, stages["dyspn"].image_miou, k=count)
    names = {"coarse": "coarse", "cspn": "CSPN", "dyspn": "DySPN"}
    grid = prediction_grid(
        val,
        {label: stages[s].val_probs.argmax(1) for s, label in names.items()},
        gains,
        {label: stages[s].image_miou for s, label in names.items()},
    )
    i = wb.showcase_index
    images, refined = refine_images(stages["dyspn"].model, val, [i], wb.device)
    row = attention_row(images[0], refined.probs[0], refined.propagation.attention[0], t=1)
    paths = [folder / "coarse_vs_refined.png", folder / "dyspn_attention.png"]
    for fig, path in zip((grid, row), paths):
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
    return paths
