"""Image and mask loading shared by every adlearn dataset.

One place decides how a file on disk becomes a tensor, so MVTec AD, VisA converted to the MVTec
layout, a user's own folders and the ELPV cells are all read the same way:

* images become ``float32[3,H,W]`` in [0,1] whatever their mode: grey (``L``), palette (``P``),
  ``RGBA`` / ``LA`` (alpha is dropped: the colour values are the measurement), ``CMYK``, and
  16-bit (``I;16``, scaled by 1/65535 so a 16-bit image is not read as mostly white);
* images are resized with an antialiasing bicubic filter (PIL's filters widen their support when
  shrinking, so a 1024 px MVTec image does not alias at 256 px);
* masks become ``float32[1,H,W]`` with values exactly 0 or 1: any non-zero pixel is a defect,
  and masks are resized with NEAREST so no new values appear. (DDAD and DiAD resize masks
  *bilinearly* and binarise with ``> 0``, which dilates every defect by about a pixel; see
  ``reference/methods.md`` §0.4. Their pixel metrics are therefore not comparable to ours.)

>>> from adlearn.datasets._io import load_image, load_mask
>>> image = load_image("bottle/test/broken_large/000.png", 256)        # doctest: +SKIP
>>> mask = load_mask("bottle/ground_truth/broken_large/000_mask.png", 256)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import AdlearnError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""File endings read as images (case-insensitive); other files in the folders are ignored."""

SPLITS = ("train", "test")

_HIGH_BIT_DEPTH = {
    "I;16": 65535.0,
    "I;16B": 65535.0,
    "I;16L": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,
    "F": 1.0,
}
"""Modes PIL cannot turn into 8-bit RGB without losing or clipping values, and their full scale.
32-bit integer ``I`` images are assumed to hold 16-bit data (what 16-bit TIFFs and PNGs become)."""

_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check_split(split: str) -> str:
    """Return ``split`` if it is ``"train"`` or ``"test"``, else raise a clear error."""
    if split not in SPLITS:
        raise AdlearnError(f"split must be 'train' or 'test', got {split!r}")
    return split


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int ≥ ``minimum`` (bools excluded), else raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AdlearnError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return value


def check_image_size(image_size: int) -> int:
    """Return ``image_size`` if it is a usable side length in pixels (the output is square)."""
    return check_int("image_size", image_size, 8)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def read_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (fast: no pixels are decoded)."""
    try:
        with Image.open(path) as im:
            return im.size
    except _UNREADABLE as err:
        raise _unreadable(path, err) from err


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """Read any image as ``float32[3, image_size, image_size]`` in [0, 1]."""
    with _open(path) as im:
        if im.mode in _HIGH_BIT_DEPTH:
            array = _resize_float(np.asarray(im, dtype=np.float32) / _HIGH_BIT_DEPTH[im.mode], image_size)
            array = np.repeat(array[..., None], 3, axis=2)
        else:
            rgb = im.convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
            array = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def load_mask(path: str | Path, image_size: int) -> torch.Tensor:
    """Read a ground-truth mask as ``float32[1, image_size, image_size]`` with values exactly {0, 1}."""
    with _open(path) as im:
        if im.mode in ("P", "PA"):
            im = im.convert("RGB")  # palette index 0 need not be black
        array = np.asarray(im)
    defect = array[..., :3].max(axis=-1) > 0 if array.ndim == 3 else array > 0
    binary = Image.fromarray(defect.astype(np.uint8) * 255)
    if binary.size != (image_size, image_size):
        binary = binary.resize((image_size, image_size), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.float32)[None])


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` (PIL is lazy: a truncated file fails only on ``load``)."""
    try:
        im = Image.open(path)
        im.load()
    except _UNREADABLE as err:
        raise _unreadable(Path(path), err) from err
    return im


def _resize_float(array: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a single-channel float image with PIL's antialiasing bicubic filter, kept in [0, 1]."""
    if array.shape != (image_size, image_size):
        resized = Image.fromarray(array).resize((image_size, image_size), Image.Resampling.BICUBIC)
        array = np.asarray(resized, dtype=np.float32)
    return np.clip(array, 0.0, 1.0)


def _unreadable(path: Path, err: Exception) -> AdlearnError:
    return AdlearnError(
        f"cannot read image {path}: {err}. The file is corrupt, truncated or not an image; "
        "re-download or re-export it, or delete it from the data set"
    )
