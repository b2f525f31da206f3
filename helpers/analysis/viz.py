"""Figures of the workbook: samples, coarse vs refined maps, galleries, iterations, attention.

Every function takes tensors (images (3, H, W) in [0, 1], class maps (H, W), probabilities
(C, H, W)) and returns the matplotlib Figure, so notebooks stay one line per figure.
"""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

PET_CMAP = "magma"
# the trimap's three values, in the official coding (1 pet, 2 background, 3 boundary band)
TRIMAP_LABELS = ("1 pet", "2 background", "3 boundary band")
TRIMAP_CMAP = ListedColormap(["#d95f02", "#1b1b3a", "#f0e442"])


def use_style() -> None:
    """Readable defaults for the workbook's figures (an explicit call, not an import side
    effect)."""
    plt.rcParams.update(
        {"figure.dpi": 100, "font.size": 10, "axes.titlesize": 10, "image.interpolation": "nearest"}
    )


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) for imshow."""
    return image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def overlay(
    image: torch.Tensor, mask: torch.Tensor, colour=(1.0, 0.2, 0.2), alpha: float = 0.45
) -> np.ndarray:
    """The image with ``mask`` (H, W, non-zero = pet) tinted."""
    rgb = to_numpy_image(image)
    m = (mask.detach().cpu().numpy() > 0)[..., None]
    # clipped: the blend can round a hair above 1, which imshow would warn about
    return np.clip(np.where(m, (1 - alpha) * rgb + alpha * np.asarray(colour), rgb), 0, 1)


def axes_off(axes) -> None:
    for ax in np.atleast_1d(axes).ravel():
        ax.set_xticks([]), ax.set_yticks([])


def show_samples(dataset, n: int = 6, title: str = "") -> plt.Figure:
    """Images with their pet mask overlaid and the trimap (1 pet, 2 background, 3 band)."""
    n = min(n, len(dataset))
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(overlay(dataset.images[i].float() / 255, dataset.targets[i]))
        axes[0, i].set_title(dataset.ids[i], fontsize=8)
        axes[1, i].imshow(dataset.trimaps[i].numpy(), cmap=TRIMAP_CMAP, vmin=0.5, vmax=3.5)
    axes[0, 0].set_ylabel("pet mask (red)"), axes[1, 0].set_ylabel("trimap")
    axes_off(axes)
    fig.suptitle(title)
    handles = [Patch(color=TRIMAP_CMAP(k), label=label) for k, label in enumerate(TRIMAP_LABELS)]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=3,
        fontsize=8,
        frameon=False,
        title="trimap values",
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def compare_maps(
    image: torch.Tensor, target: torch.Tensor, maps: dict, title: str = ""
) -> plt.Figure:
    """RGB, ground truth, then each named prediction (H, W) with its title (e.g. its mIoU)."""
    cols = 2 + len(maps)
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.9))
    axes[0].imshow(to_numpy_image(image)), axes[0].set_title("RGB")
    (
        axes[1].imshow(np.asarray(target), cmap="gray", vmin=0, vmax=1),
        axes[1].set_title("ground truth"),
    )
    for ax, (name, m) in zip(axes[2:], maps.items()):
        ax.imshow(np.asarray(m), cmap="gray", vmin=0, vmax=1), ax.set_title(name)
    axes_off(axes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def prediction_grid(
    dataset, preds: dict, indices, scores: dict | None = None, row_notes=None, title: str = ""
) -> plt.Figure:
    """Rows of images: RGB + ground truth + one column per named prediction set (N, H, W).

    ``scores``: name -> per-image mIoU, shown in each title as "name, mIoU 0.64";
    ``row_notes``: a short label per row (e.g. "gain" / "loss"), shown beside the image id."""
    indices = list(indices)
    cols = 2 + len(preds)
    fig, axes = plt.subplots(
        len(indices), cols, figsize=(2.1 * cols, 2.2 * len(indices) + 0.4), squeeze=False
    )
    for row, i in enumerate(indices):
        image, target = dataset.images[i].float() / 255, dataset.targets[i]  # never augmented
        axes[row, 0].imshow(to_numpy_image(image))
        note = f"{row_notes[row]}\n" if row_notes is not None else ""
        axes[row, 0].set_ylabel(f"{note}{dataset.ids[i]}", fontsize=8)
        axes[row, 1].imshow(np.asarray(target), cmap="gray", vmin=0, vmax=1)
        for col, (name, p) in enumerate(preds.items(), start=2):
            axes[row, col].imshow(np.asarray(p[i]), cmap="gray", vmin=0, vmax=1)
            label = name if scores is None else f"{name}, mIoU {scores[name][i]:.2f}"
            axes[row, col].set_title(label if row == 0 or scores else "", fontsize=8)
    axes[0, 0].set_title("RGB", fontsize=8), axes[0, 1].set_title("ground truth", fontsize=8)
    axes_off(axes)
    fig.suptitle(title or "white = pet, black = background")
    fig.tight_layout()
    return fig


def gains_losses_grid(
    dataset, preds: dict, scores: dict, gains, losses, before: str, after: str
) -> plt.Figure:
    """:func:`prediction_grid` of the images where ``after`` gains most over ``before`` (top rows)
    and loses most (bottom rows), each row labelled with its per-image mIoU change."""
    delta = [scores[after][i] - scores[before][i] for i in list(gains) + list(losses)]
    notes = [f"{'gain' if k < len(gains) else 'loss'} {d:+.2f}" for k, d in enumerate(delta)]
    return prediction_grid(
        dataset,
        preds,
        list(gains) + list(losses),
        scores,
        notes,
        title=f"where {after} gains most (top {len(gains)} rows) and loses most "
        f"(bottom {len(losses)}) against {before}; white = pet",
    )


def iteration_strip(maps: list, image: torch.Tensor | None = None, title: str = "") -> plt.Figure:
    """Pet probability at every iteration t = 0..T (maps: list of (C, H, W) or (H, W))."""
    cols = len(maps) + (image is not None)
    fig, axes = plt.subplots(1, cols, figsize=(1.9 * cols, 2.2))
    axes = np.atleast_1d(axes)
    k = 0
    if image is not None:
        axes[0].imshow(to_numpy_image(image)), axes[0].set_title("RGB")
        k = 1
    for t, m in enumerate(maps):
        m = m[-1] if m.dim() == 3 else m
        im = axes[k + t].imshow(m.detach().cpu().numpy(), cmap=PET_CMAP, vmin=0, vmax=1)
        axes[k + t].set_title(f"$H^{{{t}}}$" if t else "$H^0$ (start)")
    axes_off(axes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.colorbar(im, ax=axes, shrink=0.8, pad=0.01, label="pet probability")
    return fig


def ring_names(rings: int) -> list[str]:
    """Column labels of DySPN's attention: ring d holds the 8 d neighbours at distance d."""
    return [f"ring {d} ({8 * d} nbrs)" for d in range(1, rings + 1)] + ["pixel itself"]


def attention_figure(
    attention: torch.Tensor, image: torch.Tensor | None = None, title: str = ""
) -> plt.Figure:
    """DySPN attention pi^t of one image, (T, R + 1, H, W): a row per iteration, a column per ring
    and one for the pixel itself, the image beside the first row.

    The colour scale spans the attention's own range in this image (2nd to 98th percentile), not
    [0, 1]: the sigmoid's outputs often sit in a narrow band, and on a fixed [0, 1] scale the
    iterations would look alike even where they differ."""
    T, R1 = attention.shape[:2]
    values = attention.detach().cpu().float()
    lo, hi = (
        torch.quantile(values.flatten()[:: max(1, values.numel() // 200_000)], q).item()
        for q in (0.02, 0.98)
    )
    hi = max(hi, lo + 1e-3)
    extra = int(image is not None)
    fig, axes = plt.subplots(
        T, R1 + extra, figsize=(2.0 * (R1 + extra), 1.9 * T + 0.5), squeeze=False
    )
    names = ring_names(R1 - 1)
    for t in range(T):
        for r in range(R1):
            ax = axes[t, r + extra]
            im = ax.imshow(values[t, r].numpy(), cmap="viridis", vmin=lo, vmax=hi)
            if t == 0:
                ax.set_title(names[r], fontsize=9)
        axes[t, extra].set_ylabel(f"$\\pi^{{{t + 1}}}$ (t = {t + 1})", fontsize=11)
    if extra:
        axes[0, 0].imshow(to_numpy_image(image)), axes[0, 0].set_title("image", fontsize=9)
        for t in range(1, T):
            axes[t, 0].axis("off")
    axes_off(axes[:, extra:])
    if extra:
        axes_off(axes[:1, :1])
    fig.suptitle(title or "DySPN attention per iteration (rows) and ring (columns)")
    fig.subplots_adjust(wspace=0.45)  # room for the row labels between the image and the first ring
    fig.colorbar(im, ax=axes, shrink=0.6, label=f"attention (colours span {lo:.3g} to {hi:.3g})")
    return fig


def history_figure(histories: dict) -> plt.Figure:
    """Validation mIoU per epoch for each named :class:`~helpers.training.loop.History`."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, h in histories.items():
        ax.plot(h.epoch, [v["miou"] for v in h.val], marker="o", label=name)
    ax.set_xlabel("epoch"), ax.set_ylabel("val mIoU"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    return fig


def figure_png(fig: plt.Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (closed afterwards, so it is not shown twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def sweep_figure(
    sweeps: dict, trained_iterations: int, references: dict | None = None
) -> plt.Figure:
    """mIoU and Boundary IoU against the number of iterations T used at inference.

    ``sweeps``: name -> list of metric dicts, entry t for T = t; ``references``: name -> metric
    dict drawn as horizontal lines (e.g. the coarse map and the no-propagation control)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, label in zip(axes, ("miou", "boundary_iou"), ("val mIoU", "val Boundary IoU")):
        # distinct markers and line styles, drawn translucent: coinciding curves stay visible
        for k, (name, sweep) in enumerate(sweeps.items()):
            # earlier curves wider and with bigger markers, so a later one drawn on top leaves them
            # visible
            ax.plot(
                range(len(sweep)),
                [m[key] for m in sweep],
                marker="os^Dv"[k % 5],
                ms=(8, 5, 3, 3)[k % 4],
                ls=("-", "--", "-.", ":")[k % 4],
                lw=(3.2, 1.8, 1.2, 1.0)[k % 4],
                alpha=0.75,
                label=name,
            )
        for k, (name, m) in enumerate((references or {}).items()):
            ax.axhline(m[key], color=f"C{len(sweeps) + k}", ls="--", lw=1, label=name)
        ax.axvline(trained_iterations, color="grey", ls=":", lw=1)
        ax.set_xlabel("iterations T at inference (dotted: the trained T)"), ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def error_bands_figure(panels: dict, reach: dict | None = None) -> plt.Figure:
    """Where each stage's wrong pixels lie: % of all pixels wrong, per distance band (from the
    true boundary, or to the nearest right label: :mod:`helpers.analysis.error_bands`), one panel
    per setting.

    ``panels``: title -> {stage name -> :class:`~helpers.analysis.error_bands.ErrorBands`} (one set
    of edges and distance throughout); ``reach``: name -> pixels (a band edge), drawn as a dotted
    line after that band: under the label distance, a propagator can fix nothing beyond it."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False, sharey=True
    )
    for ax, (title, rows) in zip(axes[0], panels.items()):
        first = next(iter(rows.values()))
        for k, (name, bands) in enumerate(rows.items()):
            ax.plot(
                range(len(first.labels)),
                (100 * bands.share_of_pixels()).tolist(),
                marker="os^Dv"[k % 5],
                ls=("-", "--", "-.", ":")[k % 4],
                lw=1.6,
                alpha=0.8,
                label=name,
            )
        for k, (name, r) in enumerate((reach or {}).items()):
            x = first.edges.index(r) + 0.5
            ax.axvline(x, color="grey", ls=":", lw=1)
            ax.text(
                x,
                1,
                f" {name} reach",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="left",
                fontsize=7,
                color="grey",
            )
        ax.set_xticks(range(len(first.labels)), first.labels)
        what = (
            "from the true boundary"
            if first.measure == "boundary"
            else "to the nearest right label"
        )
        ax.set_xlabel(f"distance {what} (px)"), ax.set_title(title)
        ax.grid(alpha=0.3)
        # below the axes: inside, it would hide the curves' peak or the reach labels
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    axes[0, 0].set_ylabel("% of all pixels wrong")
    fig.tight_layout()
    return fig


def attention_row(
    image: torch.Tensor, refined: torch.Tensor, attention: torch.Tensor, t: int
) -> plt.Figure:
    """One row: the image, the refined pet probability and DySPN's attention pi^t (1-based ``t``)
    per ring and for the pixel itself. refined (C, H, W); attention (T, R + 1, H, W)."""
    R1 = attention.shape[1]
    fig, axes = plt.subplots(1, 2 + R1, figsize=(2.3 * (2 + R1), 2.6))
    axes[0].imshow(to_numpy_image(image)), axes[0].set_title("RGB")
    axes[1].imshow(refined[-1].detach().cpu().numpy(), cmap=PET_CMAP, vmin=0, vmax=1)
    axes[1].set_title(f"$H^{{{attention.shape[0]}}}$ (refined)")
    for r in range(R1):
        im = axes[2 + r].imshow(
            attention[t - 1, r].detach().cpu().numpy(), cmap="viridis", vmin=0, vmax=1
        )
        axes[2 + r].set_title(f"$\\pi^{{{t}}}$, {ring_names(R1 - 1)[r]}", fontsize=9)
    axes_off(axes)
    fig.colorbar(im, ax=axes, shrink=0.8, label="attention")
    return fig
