"""The book's figures and widgets: each builds, and each widget redraws when driven once."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from adlearn import viz
from adlearn.tables import format_table


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("diagram", [viz.spade_diagram, viz.padim_diagram, viz.ddad_diagram])
def test_method_diagrams_draw(diagram) -> None:
    fig = diagram()
    assert fig.axes and any(ax.texts for ax in fig.axes)


def test_threshold_rates_by_hand() -> None:
    masks = np.zeros((1, 4, 4), bool)
    masks[0, 0, :2] = True  # region 1: two pixels
    masks[0, 3, 3] = True  # region 2: one pixel
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0  # half of region 1, none of region 2
    maps[0, 2, 2] = 1.0  # one false positive out of 13 nominal pixels
    rates = viz.threshold_rates(maps, masks, 0.5)
    assert rates == pytest.approx({"tpr": 1 / 3, "fpr": 1 / 13, "pro": 0.25})


def test_threshold_explorer_moves_with_its_slider() -> None:
    rng = np.random.default_rng(0)
    images = torch.rand(2, 3, 8, 8)
    maps, masks = rng.random((2, 8, 8)), rng.random((2, 8, 8)) > 0.8
    box = viz.threshold_explorer(images, maps, masks)
    slider = box.children[0]
    slider.value = slider.max  # drive it once: the figure is redrawn for the new threshold
    rates = viz.threshold_rates(maps, masks, slider.max)
    assert plt.gcf()._suptitle.get_text().endswith(f"PRO {rates['pro']:.3f}")
    assert rates["fpr"] < viz.threshold_rates(maps, masks, slider.min)["fpr"]


def test_image_explorer_calls_render_with_the_slider_values() -> None:
    import ipywidgets as widgets

    seen = []

    def render(w: float, step: int):
        seen.append((w, step))
        return plt.figure()

    box = viz.image_explorer(render, w=widgets.FloatSlider(value=1.0, min=0, max=5),
                             step=widgets.IntSlider(value=0, min=0, max=9))
    box.children[1].value = 4
    assert seen == [(1.0, 0), (1.0, 4)]


def test_markdown_table_formats_and_marks_missing_values() -> None:
    table = viz.markdown_table([{"m": "PaDiM", "a": 0.96512}, {"m": "AE", "a": None}], {"m": "model", "a": "AUROC"})
    assert table.data.splitlines() == ["| model | AUROC |", "|---|---|", "| PaDiM | 0.965 |", "| AE | – |"]


def test_committed_results_are_found() -> None:
    results = viz.load_results("padim_spade.json")
    assert results is not None and "command" in results["meta"]
    assert viz.results_file("no_such_file.json") is None


def test_markdown_table_per_column_decimals() -> None:
    table = viz.markdown_table([{"t": 7.4111, "a": 0.99681}], {"t": ("fit s", 1), "a": "AUROC"})
    assert table.data.splitlines()[-1] == "| 7.4 | 0.997 |"


def test_benchmark_tables_and_book_tables_mark_missing_values_alike() -> None:
    rows = [{"model": "DDAD", "category": "elpv", "image_auroc": 0.75, "pixel_auroc": float("nan"), "aupro": None}]
    table = format_table(rows, ("image_auroc", "pixel_auroc", "aupro"))
    book = viz.markdown_table(rows, {"image_auroc": "image", "pixel_auroc": "pixel", "aupro": "aupro"})
    assert table.splitlines()[-1] == "| DDAD | elpv | 0.750 | – | – |"
    assert book.data.splitlines()[-1] == "| 0.750 | – | – |"
