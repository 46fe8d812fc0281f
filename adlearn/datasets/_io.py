"""Image and mask loading shared by every adlearn dataset.

One place decides how a file on disk becomes a tensor, so MVTec AD, VisA converted to the MVTec
layout, a user's own folders and the ELPV cells are all read the same way:

* images become ``float32[3,H,W]`` in [0,1] whatever their mode: grey (``L``), palette (``P``),
  ``RGBA`` / ``LA`` (alpha is dropped: the colour values are the measurement), ``CMYK``,
  16-bit (``I;16``, and 32-bit ``I`` holding 16-bit data: scaled by 1/65535 so a 16-bit image
  is not read as mostly white; one whose values stay ≤ 255, 8-bit data in a 16-bit file, reads
  almost black and warns), and float (``F``, e.g. a float TIFF). A float image is divided by
  the smallest full scale its values fit: 1 (floats in [0, 1], read as they are), 255 (8-bit
  data saved as floats) or 65535, with a warning in the last two cases, since that is a guess;
  values below 0, above 65535 or not finite are refused. The full scale is the same for every
  image of a data set unless an image is almost black (a 0..255 image whose brightest pixel
  is ≤ 1): images are never normalised by their own range, which would hide anomalies;
* an image smaller than :data:`MIN_SIDE` pixels on a side is refused, and one more than
  :data:`MAX_ASPECT` times wider than high (or higher than wide) is stretched to a square with a
  warning: crop or tile such images first;
* images are resized with an antialiasing bicubic filter (PIL's filters widen their support when
  shrinking, so a 1024 px MVTec image does not alias at 256 px);
* masks become ``float32[1,H,W]`` with values exactly 0 or 1: any non-zero pixel is a defect,
  and masks are resized with NEAREST so no new values appear. A JPEG mask is the exception:
  lossy compression rings around every edge (a 100-pixel square saved as a JPEG has ~175
  non-zero pixels), so it is thresholded at half of white (≥ 128) with a warning to save masks
  as PNG, and refused when no pixel reaches 128 (a 0/1 mask does not survive JPEG; masks are read for
  defective images only, so an empty one is a mistake). (DDAD and DiAD resize masks
  *bilinearly* and binarise with ``> 0`` (DDAD's ``dataset.py``, DiAD's ``mvtecad_dataloader.py``),
  which dilates every defect by about a pixel, so their pixel metrics are not comparable to ours.)

>>> from adlearn.datasets._io import load_image, load_mask
>>> image = load_image("bottle/test/broken_large/000.png", 256)        # doctest: +SKIP
>>> mask = load_mask("bottle/ground_truth/broken_large/000_mask.png", 256)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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
32-bit integer ``I`` images are assumed to hold 16-bit data (what 16-bit TIFFs and PNGs become);
float ``F`` images take the smallest of :data:`_FLOAT_SCALES` their values fit."""

_FLOAT_SCALES = (1.0, 255.0, 65535.0)
"""Full scales a float (``F``) image may have; it is divided by the smallest its values fit."""

MIN_SIDE = 16
"""Smallest image side, in pixels, that adlearn reads (smaller ones are refused)."""

MAX_ASPECT = 2.0
"""Images more elongated than this are stretched to a square with a warning."""

_LOSSY = ("JPEG", "MPO")
"""PIL formats whose compression changes pixel values (MPO: the JPEG variant of many cameras)."""

_WARNED: set[str] = set()
"""Kinds of warning already given in this process: each is shown once, for its first file."""

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


def check_folder_path(path: object, what: str) -> Path:
    """``path`` as an expanded :class:`~pathlib.Path` if it is a str or path-like, else a clear error."""
    if not isinstance(path, (str, os.PathLike)):
        raise AdlearnError(f"{what} must be a folder path (str or pathlib.Path), got {path!r}")
    return Path(path).expanduser()


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


_TRANSPOSING = {5, 6, 7, 8}
"""EXIF orientations that rotate by 90°, swapping width and height."""
_ORIENTED = {"JPEG", "MPO"}
"""Camera formats whose EXIF orientation is honoured here: theirs sits in the header, so
:func:`read_size` stays header-only (a PNG's may follow the pixels; PIL turns TIFFs itself)."""


def read_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (after a camera file's EXIF orientation), from
    its header only (fast: no pixels are decoded)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            turned = im.format in _ORIENTED and im.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING
    except _UNREADABLE as err:
        raise _unreadable(path, err) from err
    return (height, width) if turned else (width, height)


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """Read any image as ``float32[3, image_size, image_size]`` in [0, 1]."""
    with _open(path) as im:
        _check_geometry(Path(path), im.size)
        if im.mode in _HIGH_BIT_DEPTH:
            array = _resize_float(_unit_range(Path(path), im), image_size)
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
        lossy = im.format in _LOSSY
        if im.mode in ("P", "PA"):
            im = im.convert("RGB")  # palette index 0 need not be black
        array = np.asarray(im)
    value = array[..., :3].max(axis=-1) if array.ndim == 3 else array
    defect = _lossy_mask(Path(path), value) if lossy else value > 0
    binary = Image.fromarray(defect.astype(np.uint8) * 255)
    if binary.size != (image_size, image_size):
        binary = binary.resize((image_size, image_size), Image.Resampling.NEAREST)
    return torch.from_numpy((np.asarray(binary) > 0).astype(np.float32)[None])


def _check_geometry(path: Path, size: tuple[int, int]) -> None:
    """Refuse tiny images; warn (once) about elongated ones, which become squares."""
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise AdlearnError(
            f"image {path} is {width}×{height} pixels, below adlearn's minimum of {MIN_SIDE} px a side: "
            "it holds too little to detect anything; remove it from the data set or re-export it at full size"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        _warn_once(
            "aspect",
            f"image {path} is {width}×{height} pixels: it is stretched to a square, which distorts every "
            f"shape in it; crop or tile such images into near-square pieces (at most {MAX_ASPECT:g}:1) first",
        )


def _unit_range(path: Path, im: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float image as float32 in [0, 1] (see the module docstring)."""
    array = np.asarray(im, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    scales = _FLOAT_SCALES if im.mode == "F" else (_HIGH_BIT_DEPTH[im.mode],)
    full = next((scale for scale in scales if high <= scale), None)
    if full is None or not low >= 0:  # NaN fails both tests
        raise AdlearnError(
            f"image {path} (PIL mode {im.mode}) holds values from {low:g} to {high:g}, outside 0..{scales[-1]:g}: "
            "adlearn reads such images as intensities from 0 to a full scale of 1, 255 or 65535; "
            "re-export it as an 8- or 16-bit PNG/TIFF, or as floats in [0, 1]"
        )
    if im.mode != "F" and 0 < high <= 255:
        _warn_once(
            "8-bit-in-16",
            f"{im.mode} image {path} holds values only up to {high:g} of 65535, so it reads almost black: "
            "if it holds 8-bit data, save it as an 8-bit image (PIL mode L or RGB)",
        )
    elif full != scales[0]:
        _warn_once(
            f"scale-{full:g}",
            f"float image {path} holds values up to {high:g}, so it is read as 0..{full:g} (divided by "
            f"{full:g}); save floats in [0, 1], or 8- or 16-bit images, to make the scale explicit",
        )
    return array / full


def _lossy_mask(path: Path, value: np.ndarray) -> np.ndarray:
    """Defect pixels of a JPEG mask: ≥ half of white, since compression blurs every edge."""
    if value.max() < 128:
        raise AdlearnError(
            f"mask {path} is a JPEG whose brightest pixel is {value.max()}: after lossy compression no "
            "pixel is clearly a defect (white, 255), e.g. a 0/1 mask; save the mask losslessly as PNG"
        )
    _warn_once(
        "jpeg-mask",
        f"mask {path} is a JPEG: lossy compression blurs its edges, so pixels ≥ 128 count as defect "
        "(not every non-zero one); save masks as PNG to keep them exact",
    )
    return value >= 128


def _warn_once(kind: str, message: str) -> None:
    """Warn about ``kind`` for the first file only (a data set of 1,000 JPEG masks warns once)."""
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(f"{message} (further files like this are not reported)", UserWarning, stacklevel=4)


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` (PIL is lazy: a truncated file fails only on ``load``),
    turned upright as a camera file's EXIF orientation says: a phone photo is stored sideways, and
    its mask was drawn on the upright view."""
    try:
        im = Image.open(path)
        im.load()
        if im.format in _ORIENTED:
            ImageOps.exif_transpose(im, in_place=True)
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
