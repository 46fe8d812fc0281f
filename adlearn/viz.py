"""Figures for the book and the CLI: anomaly-map overlays and metric curves (matplotlib only).

Static figures first (the published book has no kernel); widgets are optional extras.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["to_numpy_image", "show_predictions", "plot_curve"]


def to_numpy_image(image: Tensor | np.ndarray) -> np.ndarray:
    """``float[3,H,W]`` (torch, [0,1]) → ``float[H,W,3]`` numpy for ``imshow``."""
    if isinstance(image, Tensor):
        image = image.detach().float().cpu().numpy()
    return np.clip(np.moveaxis(image, 0, -1), 0, 1) if image.ndim == 3 and image.shape[0] in (1, 3) else image


def show_predictions(
    images: Tensor,
    anomaly_maps: Tensor,
    masks: Tensor | None = None,
    scores: Sequence[float] | Tensor | None = None,
    titles: Sequence[str] | None = None,
    *,
    vmax: float | None = None,
    reconstructions: Tensor | None = None,
) -> Figure:
    """A grid with one column per image: image, (reconstruction), anomaly map overlay, (mask).

    One colour scale (``vmax``, default: the maximum over the shown maps) is shared by all maps,
    so that a brighter map really means a higher score.
    """
    n = len(images)
    maps = anomaly_maps.detach().float().cpu()
    vmax = float(maps.max()) if vmax is None else vmax
    vmin = float(maps.min())
    rows = ["image"] + (["reconstruction"] if reconstructions is not None else []) + ["anomaly map"]
    rows += ["ground truth"] if masks is not None else []
    fig, axes = plt.subplots(len(rows), n, figsize=(2.1 * n, 2.1 * len(rows)), squeeze=False)
    for col in range(n):
        cells = [to_numpy_image(images[col])]
        if reconstructions is not None:
            cells.append(to_numpy_image(reconstructions[col]))
        for row, cell in enumerate(cells):
            axes[row, col].imshow(cell)
        ax = axes[len(cells), col]
        ax.imshow(to_numpy_image(images[col]))
        ax.imshow(maps[col].numpy(), cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
        if masks is not None:
            axes[-1, col].imshow(masks[col].detach().cpu().squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
        title = titles[col] if titles is not None else ""
        if scores is not None:
            title = f"{title}\nscore {float(scores[col]):.3g}".strip()
        axes[0, col].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, label in enumerate(rows):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def plot_curve(x: np.ndarray, y: np.ndarray, *, label: str, ax=None, xlabel: str = "FPR", ylabel: str = "TPR",
               xlim: float | None = None):
    """Plot one curve (ROC, PRO, loss …) on ``ax`` (a new axis when ``None``); returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.5))
    ax.plot(np.asarray(x), np.asarray(y), label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlim is not None:
        ax.axvline(xlim, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    return ax

