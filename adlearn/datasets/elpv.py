"""ELPV: real electroluminescence images of solar cells, installable offline from PyPI.

``pip install elpv-dataset`` (90 MB) ships 2,624 grey 300×300 images of mono- and
polycrystalline solar cells cut from 44 modules, normalised for size and perspective, each with
the probability that it is defective as judged by experts: 0, ⅓, ⅔ or 1. There are no pixel
masks, so :attr:`ELPV.has_masks` is False and evaluation reports image metrics only.

The anomaly-detection protocol used here:

* nominal = probability 0; anomalous = probability ≥ ``anomalous_min_probability`` (⅔ by
  default). Cells in between (the ⅓ "probably fine, not sure" ones) are left out: their label
  is what the experts were unsure of, and counting them either way would measure label noise
  rather than the detector. Leaving them out makes the task easier than a production line,
  where such cells do occur: say so when you report ELPV numbers.
* a seeded split: ``n_train`` random nominal cells train (default: half of them); the test set
  is every other nominal cell plus every anomalous one, optionally subsampled to ``n_test``
  cells stratified by label. Train and test never share a cell.

Licence: CC BY-NC-SA 4.0 (non-commercial, share-alike), the same terms as MVTec AD. Cite
Buerhop-Lutz, Deitsch et al., "A benchmark for visual identification of defective solar cells
in electroluminescence imagery", EU PVSEC 2018 (doi:10.4229/35thEUPVSEC20182018-5CV.3.15), and
Deitsch et al., "Automatic classification of defective photovoltaic module cells in
electroluminescence images", Solar Energy 185, 2019 (doi:10.1016/j.solener.2019.02.067).

>>> from adlearn.datasets import ELPV
>>> train = ELPV("train", image_size=128, n_train=100)                  # doctest: +SKIP
>>> test = ELPV("test", image_size=128, n_train=100, n_test=200)        # doctest: +SKIP
>>> sorted(test[0])                                                     # doctest: +SKIP
['defect', 'image', 'label', 'path', 'probability']
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset

from ..errors import AdlearnError
from ._io import check_image_size, check_int, check_split, load_image

__all__ = ["ELPV"]

_INSTALL = "pip install elpv-dataset (90 MB, CC BY-NC-SA 4.0)"
_CELL_TYPES = ("mono", "poly")


class Cell(NamedTuple):
    """One row of ``labels.csv``, with the label this protocol gives it."""

    path: Path
    probability: float
    cell_type: str

    @property
    def label(self) -> int:
        return int(self.probability > 0)


class ELPV(Dataset):
    """Solar-cell electroluminescence images (image labels only), one split.

    ``ds[i]`` is ``{"image": float32[3,S,S] in [0,1], "label": 0|1, "defect": "good"|"defective",
    "probability": float, "path": str}``; there is no ``"mask"`` key.

    Args:
        split: ``"train"`` (nominal cells only) or ``"test"``.
        image_size: side of the square images returned (the cells are 300 px).
        n_train: nominal cells used for training; ``None`` = half of the nominal cells.
        n_test: test cells kept, stratified by label; ``None`` = all remaining ones.
        anomalous_min_probability: smallest defect probability counted as anomalous.
        cell_type: ``"mono"``, ``"poly"`` or ``None`` for both.
        seed: fixes the split; train and test built with the same arguments never overlap.
    """

    has_masks = False
    """Image labels only: evaluation reports image metrics."""

    def __init__(
        self,
        split: str = "train",
        image_size: int = 256,
        n_train: int | None = None,
        n_test: int | None = None,
        anomalous_min_probability: float = 2 / 3,
        cell_type: str | None = None,
        seed: int = 0,
    ) -> None:
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.seed = seed
        if not 0 < anomalous_min_probability <= 1:
            raise AdlearnError(
                f"anomalous_min_probability must be in (0, 1], got {anomalous_min_probability}"
            )
        cells = _read_labels(_package_dir(), cell_type)
        nominal = [c for c in cells if c.probability == 0]
        anomalous = [c for c in cells if c.probability >= anomalous_min_probability - 1e-9]
        train, test = _split(nominal, anomalous, n_train, n_test, np.random.default_rng(seed))
        self.samples: list[Cell] = train if split == "train" else test
        self.defects: list[str] = ["defective"]
        self.labels: list[int] = [c.label for c in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, object]:
        cell = self.samples[index]
        return {
            "image": load_image(cell.path, self.image_size),
            "label": cell.label,
            "defect": "defective" if cell.label else "good",
            "probability": cell.probability,
            "path": str(cell.path),
        }

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return (
            f"ELPV(split={self.split!r}, image_size={self.image_size}, seed={self.seed}): "
            f"{len(self)} cells ({len(self) - n_bad} good, {n_bad} defective)"
        )


def _package_dir() -> Path:
    """The installed ``elpv_dataset`` folder (found without importing it)."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise AdlearnError(f"the ELPV solar-cell images are not installed: {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def _read_labels(package: Path, cell_type: str | None) -> list[Cell]:
    """Parse ``data/labels.csv``: whitespace-separated ``images/cellNNNN.png probability type``."""
    if cell_type not in (None, *_CELL_TYPES):
        raise AdlearnError(f"cell_type must be 'mono', 'poly' or None, got {cell_type!r}")
    labels = package / "data" / "labels.csv"
    if not labels.is_file():
        raise AdlearnError(
            f"{labels} is missing: the elpv-dataset installation is incomplete; reinstall: {_INSTALL}"
        )
    cells = []
    for line_no, line in enumerate(labels.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            path, probability, kind = fields
            cells.append(Cell(labels.parent / path, float(probability), kind))
        except ValueError as err:
            raise AdlearnError(
                f"{labels}:{line_no} is not 'path probability type': {line!r}; reinstall: {_INSTALL}"
            ) from err
    return [c for c in cells if cell_type is None or c.cell_type == cell_type]


def _split(
    nominal: list[Cell],
    anomalous: list[Cell],
    n_train: int | None,
    n_test: int | None,
    rng: np.random.Generator,
) -> tuple[list[Cell], list[Cell]]:
    """Seeded split: ``n_train`` nominal cells train; the rest, plus the anomalous ones, test."""
    if not anomalous:
        raise AdlearnError(
            "no anomalous cells with these arguments: lower anomalous_min_probability or drop cell_type"
        )
    n_train = len(nominal) // 2 if n_train is None else check_int("n_train", n_train, 1)
    if n_train >= len(nominal):
        raise AdlearnError(
            f"n_train={n_train}, but there are {len(nominal)} nominal cells and at least one must stay "
            f"for testing: choose 1 ≤ n_train ≤ {len(nominal) - 1}"
        )
    shuffled = [nominal[i] for i in rng.permutation(len(nominal))]
    train, test_good = shuffled[:n_train], shuffled[n_train:]
    if n_test is not None:
        test_good, anomalous = _stratified(test_good, anomalous, n_test, rng)
    return sorted(train), sorted(test_good + anomalous)


def _stratified(
    good: list[Cell], bad: list[Cell], n_test: int, rng: np.random.Generator
) -> tuple[list[Cell], list[Cell]]:
    """Keep ``n_test`` cells in the test set's class proportions, at least one of each class."""
    available = len(good) + len(bad)
    if check_int("n_test", n_test, 2) > available:
        raise AdlearnError(
            f"n_test={n_test}, but the test set has {available} cells: choose 2 ≤ n_test ≤ {available}"
        )
    proportional = round(n_test * len(good) / available)
    n_good = int(np.clip(proportional, max(1, n_test - len(bad)), min(len(good), n_test - 1)))
    n_bad = n_test - n_good
    return [good[i] for i in rng.choice(len(good), n_good, replace=False)], [
        bad[i] for i in rng.choice(len(bad), n_bad, replace=False)
    ]
