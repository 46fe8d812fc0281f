"""Figures for the book and the CLI: anomaly-map overlays, metric curves, method diagrams,
committed results rendered as tables, and small ipywidgets explorers.

Static figures first (the published book has no kernel); widgets are optional extras.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from scipy import ndimage
from torch import Tensor

from . import tables

__all__ = [
    "to_numpy_image", "show_predictions", "plot_curve", "results_file", "load_results",
    "markdown_table", "flow_diagram", "spade_diagram", "padim_diagram", "ddad_diagram",
    "threshold_rates", "threshold_explorer", "image_explorer",
]

RESULTS_URL = "https://github.com/adlearn/adlearn/tree/main/benchmarks/results"


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



# --- Committed results (benchmarks/results/*.json) -------------------------------------------


def results_file(name: str) -> Path | None:
    """``benchmarks/results/<name>`` of the repository this ``adlearn`` lives in (or of the
    repository two folders above the working directory, where the book's notebooks run);
    ``None`` when the installation has no repository checkout (e.g. ``pip install`` on Colab)."""
    roots = (Path(__file__).resolve().parents[1], Path.cwd().resolve().parent.parent)
    return next((r / "benchmarks" / "results" / name for r in roots
                 if (r / "benchmarks" / "results" / name).is_file()), None)


def load_results(name: str) -> dict | None:
    """The committed results file ``name`` as a dict; ``None`` (with a printed pointer to the
    repository) when this installation does not include it."""
    path = results_file(name)
    if path is None:
        print(f"{name} is not part of this installation; read it at {RESULTS_URL}/{name}")
        return None
    return json.loads(path.read_text())


def markdown_table(rows: Sequence[dict], columns: dict[str, str | tuple[str, int]], digits: int = 3):
    """A Markdown table (an ``IPython.display.Markdown``) of ``rows``: ``columns`` maps a row key
    to its header, or to (header, decimals); floats get ``digits`` decimals unless a column says
    otherwise, missing values print as "–"."""
    from IPython.display import Markdown

    specs = {key: spec if isinstance(spec, tuple) else (spec, digits) for key, spec in columns.items()}
    body = [[tables.cell(row.get(key), places) for key, (_, places) in specs.items()] for row in rows]
    return Markdown(tables.markdown([header for header, _ in specs.values()], body))


# --- Method diagrams -------------------------------------------------------------------------

Box = tuple[float, float, str]  # centre x, centre y, label (axes coordinates 0–1)


def flow_diagram(boxes: dict[str, Box], arrows: Sequence[tuple[str, str, str]], *, title: str = "",
                 size: tuple[float, float] = (11, 4), ax=None, colours: dict[str, str] | None = None):
    """Boxes joined by labelled arrows: ``boxes`` maps a name to (x, y, text); ``arrows`` are
    (from, to, label). Returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    colours = colours or {}
    ax.set(xlim=(0, 1), ylim=(0, 1))
    texts = {name: ax.text(x, y, text, ha="center", va="center", fontsize=9, zorder=3,
                           bbox=dict(boxstyle="round,pad=0.4", fc=colours.get(name, "#eef3fb"),
                                     ec="#3b5b92"))
             for name, (x, y, text) in boxes.items()}
    ax.figure.canvas.draw()  # places the boxes, so that arrows can stop at their edges
    for start, end, label in arrows:
        (x0, y0, _), (x1, y1, _) = boxes[start], boxes[end]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=4,
                    arrowprops=dict(arrowstyle="-|>", color="#555555", shrinkA=2, shrinkB=2,
                                    mutation_scale=16, lw=1.2,
                                    patchA=texts[start].get_bbox_patch(),
                                    patchB=texts[end].get_bbox_patch()))
        if label:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.05, label, ha="center", fontsize=8,
                    color="#333333", bbox=dict(fc="white", ec="none", pad=1))
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title)
    ax.axis("off")
    return ax


def spade_diagram() -> Figure:
    """SPADE's two stages: image-level kNN retrieval, then pixel-level kNN against the pyramid
    of the retrieved images (chapter 4, Eqs. ch4-image-score and ch4-pixel-score)."""
    boxes = {
        "y": (0.06, 0.5, "test image\n$y$"),
        "global": (0.25, 0.78, "global feature\n$f_y$ (pooled last stage)"),
        "knn": (0.5, 0.78, "$K$ nearest of the $N$\ntraining features"),
        "score": (0.8, 0.78, "image score\n$d(y)$ = mean distance"),
        "pyr": (0.25, 0.22, "pyramid $F(y, p)$\nstrides 4, 8, 16"),
        "gallery": (0.5, 0.22, "gallery $G$: every position\nof the $K$ retrieved images"),
        "map": (0.8, 0.22, "pixel score $d(y, p)$:\n$\\kappa$-NN in $G$, per level,\naveraged, blurred"),
    }
    arrows = [("y", "global", ""), ("global", "knn", "stage 1"), ("knn", "score", ""),
              ("y", "pyr", ""), ("knn", "gallery", "which images"), ("pyr", "gallery", "stage 2"),
              ("gallery", "map", "")]
    ax = flow_diagram(boxes, arrows, title="SPADE: retrieve similar images, then match every pixel",
                      colours={"score": "#fde9d9", "map": "#fde9d9"})
    return ax.figure


def padim_diagram(grid: int = 4, seed: int = 0) -> Figure:
    """PaDiM: one Gaussian N(μ_ij, Σ_ij) per patch position of the feature grid, fitted on the
    N nominal images; a test patch is scored by its Mahalanobis distance to its own position's
    Gaussian (chapter 5, Eqs. ch5-gaussian and ch5-mahalanobis)."""
    rng = np.random.default_rng(seed)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.3, 1]})
    boxes = {
        "train": (0.15, 0.75, "$N$ nominal images"),
        "emb": (0.5, 0.75, "embedding $x^k_{ij}$\n(layers 1–3, $d$ random channels)"),
        "gauss": (0.5, 0.25, "per position $(i, j)$:\n$\\mu_{ij}$, $\\Sigma_{ij} + \\epsilon I$"),
        "test": (0.15, 0.25, "test patch $x_{ij}$"),
        "score": (0.86, 0.25, "$M(x_{ij})$\nMahalanobis"),
    }
    arrows = [("train", "emb", "CNN"), ("emb", "gauss", "mean, covariance"),
              ("test", "gauss", ""), ("gauss", "score", "")]
    flow_diagram(boxes, arrows, ax=left, title="PaDiM: statistics per patch position",
                 colours={"score": "#fde9d9"})
    for i in range(grid):
        for j in range(grid):
            cloud = rng.normal(size=(20, 2)) @ rng.normal(scale=0.12, size=(2, 2)) + (j + 0.5, i + 0.5)
            right.scatter(*cloud.T, s=3, color="#7a7a7a")
            cov = np.cov(cloud.T)
            values, vectors = np.linalg.eigh(cov)
            angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
            right.add_patch(Ellipse(cloud.mean(0), *(4 * np.sqrt(values[::-1])), angle=angle,
                                    fill=False, color="#3b5b92"))
    right.scatter([1.5 + 0.35], [2.5 + 0.3], marker="*", s=120, color="#c0392b", zorder=3)
    right.set(xlim=(0, grid), ylim=(grid, 0), xticks=range(grid + 1), yticks=range(grid + 1),
              title="one Gaussian per grid cell (2 of $d$ dims);\n★ a test patch far from its cell's")
    right.grid(True, color="#cccccc")
    right.tick_params(labelbottom=False, labelleft=False)
    fig.tight_layout()
    return fig


def ddad_diagram() -> Figure:
    """DDAD's conditioned loop: noise the input y to T', then 10 DDIM steps, each with the noise
    estimate pulled towards y; compare x̂₀ with y in pixels and features (chapter 7)."""
    boxes = {
        "y": (0.06, 0.7, "test image $y$"),
        "noise": (0.24, 0.7, "noise to $T'$:\n$x_{T'}$"),
        "eps": (0.45, 0.88, "$\\varepsilon_\\theta(x_t, t)$"),
        "cond": (0.66, 0.88, "$\\hat\\varepsilon$ = $\\varepsilon_\\theta$ − $w\\sqrt{1-\\bar\\alpha_t}\\,(y_t - x_t)$"),
        "step": (0.55, 0.52, "DDIM step\n$x_t \\to x_{t'}$"),
        "x0": (0.86, 0.52, "reconstruction $\\hat x_0$\n(after 10 steps)"),
        "dist": (0.66, 0.15, "pixel $i_d$ and feature $f_d$\ndistances to $y$"),
        "map": (0.27, 0.15, "anomaly map\n$A = G_\\sigma * (f_d + v\\,\\gamma\\, i_d)$"),
    }
    arrows = [("y", "noise", ""), ("noise", "step", ""), ("step", "eps", "$x_t$"), ("eps", "cond", ""),
              ("cond", "step", "conditioned on $y$"), ("step", "x0", ""), ("x0", "dist", ""),
              ("dist", "map", "")]
    ax = flow_diagram(boxes, arrows, title="DDAD: denoise the input back, conditioned on itself",
                      size=(11, 4.4), colours={"map": "#fde9d9", "cond": "#fff4cc"})
    return ax.figure


# --- Interactive extras (ipywidgets); each follows a static figure in the book ---------------


def threshold_rates(maps: np.ndarray, masks: np.ndarray, threshold: float) -> dict[str, float]:
    """TPR, FPR (pixels) and PRO (mean over 8-connected ground-truth regions) at one threshold."""
    above, masks = np.asarray(maps) >= threshold, np.asarray(masks).astype(bool)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = True  # 8-connected within an image, never across images
    regions, n = ndimage.label(masks, structure=in_plane)
    overlap = ndimage.mean(above, regions, index=np.arange(1, n + 1)) if n else np.zeros(0)
    return {"tpr": float(above[masks].mean()) if masks.any() else float("nan"),
            "fpr": float(above[~masks].mean()),
            "pro": float(np.mean(overlap)) if n else float("nan")}


def threshold_explorer(images: Tensor, maps: np.ndarray, masks: np.ndarray, *, index: int = 0):
    """A slider over the pixel threshold: the thresholded map of image ``index`` and the test
    set's TPR / FPR / PRO at that threshold, moving together (chapter 1)."""
    import ipywidgets as widgets

    maps, masks = np.asarray(maps, dtype=float), np.asarray(masks).astype(bool)
    lo, hi = float(maps.min()), float(maps.max())

    def render(threshold: float) -> Figure:
        rates = threshold_rates(maps, masks, threshold)
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        panels = (to_numpy_image(images[index]), maps[index] >= threshold, masks[index])
        for ax, panel, title in zip(axes, panels, ("image", "map ≥ threshold", "ground truth")):
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.suptitle("test set at this threshold: TPR {tpr:.3f}   FPR {fpr:.3f}   PRO {pro:.3f}"
                     .format(**rates), fontsize=10)
        return fig

    slider = widgets.FloatSlider(value=(lo + hi) / 2, min=lo, max=hi, step=(hi - lo) / 200,
                                 description="threshold", readout_format=".3g")
    return image_explorer(render, threshold=slider)


def image_explorer(render: Callable[..., Figure], **sliders):
    """Sliders (``name=ipywidgets slider``) that redraw ``render(**values)`` — e.g. DDAD's
    reconstruction for w and T' (chapter 7) or a DDIM trajectory's step (chapter 6)."""
    import ipywidgets as widgets

    out = widgets.Output()

    def draw(change=None) -> None:
        # cleared outside the capture and without wait=True: nbclient (nbmake, the book build)
        # otherwise waits for the whole cell timeout after a large figure
        out.clear_output()
        with out:
            render(**{name: s.value for name, s in sliders.items()})
            plt.show()

    for s in sliders.values():
        s.observe(draw, names="value")
    draw()
    return widgets.VBox([*sliders.values(), out])
