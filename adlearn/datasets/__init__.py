"""Data sets in the MVTec AD layout: real folders, the synthetic generator, ELPV solar cells.

>>> from adlearn.datasets import make_synthetic, MVTecAD
>>> root = make_synthetic(categories=["fabric"], image_size=128)   # doctest: +SKIP
>>> train = MVTecAD(root, "fabric", split="train", image_size=128)  # doctest: +SKIP
"""

from __future__ import annotations

from .elpv import ELPV
from .mvtec import MVTecAD, download_mvtec
from .synthetic import DEFECT_KINDS, SYNTHETIC_CATEGORIES, make_synthetic

__all__ = ["DEFECT_KINDS", "ELPV", "SYNTHETIC_CATEGORIES", "MVTecAD", "download_mvtec", "make_synthetic"]
