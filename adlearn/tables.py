"""Markdown tables of result rows: the demo, the benchmark, the README and the book all print
their numbers through these functions (light: no torch, so the command line stays fast)."""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["METRICS", "TABLE_COLUMNS", "markdown", "cell", "format_table", "mean_rows"]

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max")
"""Accuracy columns (printed with 3 decimals; cost columns get 1)."""
TABLE_COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "fit_s", "predict_ms_per_image", "fit_peak_mb")


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A Markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A markdown table of ``rows`` (dicts with ``model``, ``category`` and ``columns``)."""
    body = [[str(row["model"]), str(row["category"]), *(cell(row.get(c), 3 if c in METRICS else 1) for c in columns)]
            for row in rows]
    return markdown(["model", "category", *columns], body)


def cell(value: Any, digits: int) -> str:
    """One table cell: a float with ``digits`` decimals, a missing value (None or NaN) as "–"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> list[dict[str, Any]]:
    """One ``mean`` row per model, averaging each column over the categories that have it."""
    means = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        averaged = {}
        for c in columns:
            values = [r[c] for r in mine if isinstance(r.get(c), (int, float))]
            if len(values) == len(mine):
                averaged[c] = sum(values) / len(values)
        means.append({"model": model, "category": "**mean**", **averaged})
    return means
