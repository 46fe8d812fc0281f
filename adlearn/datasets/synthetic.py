"""A procedural stand-in for MVTec AD: textures and objects with small defects and exact masks.

:func:`make_synthetic` writes PNG images and masks in the MVTec AD layout (read them with
:class:`~adlearn.datasets.MVTecAD`), so the demo, the tests and every chapter run offline in
seconds, and code written for it runs unchanged on MVTec AD.

* Categories (:data:`SYNTHETIC_CATEGORIES`): ``fabric`` (a plain weave with fibre noise, random
  phase and a slight rotation) and ``stone`` (granite-like fractal noise with marble veins and
  grains) are textures; ``washer`` (a brushed metal ring with an orientation notch on a dark
  belt) and ``capsule`` (a two-tone pill with an imprint) are objects.
* Defects (:data:`DEFECT_KINDS`): ``scratch`` (a thin curved line, slightly brighter or darker),
  ``hole`` (a missing piece showing what lies beneath), ``stain`` (a soft-edged tint),
  ``crack`` (a branching dark random walk), ``contamination`` (a cluster of specks). Objects are
  damaged on the object only. A mask pixel is one whose defect weight is ≥ ½ of full strength.
* Nominal variation, so that "different from the mean image" is not a detector: lighting gain,
  offset, gradient and white balance, sensor noise, random texture phase, and small shifts and
  rotations of the objects. Defects are small and low-contrast on purpose: a per-pixel
  mean-image baseline fails (see ``data/README.md``) while they stay visible to a person.

Every image has its own random stream, seeded by ``(seed, category, folder, index)``, so the
output does not depend on which categories are generated or in which order, and the same
arguments give byte-identical files. Geometry is specified at 256 px and scaled to
``image_size`` (lines never thinner than 2 px so masks survive).

>>> from adlearn.datasets import make_synthetic, MVTecAD
>>> root = make_synthetic(categories=["fabric", "washer"], image_size=128)  # doctest: +SKIP
>>> test = MVTecAD(root, "washer", "test", image_size=128)                # doctest: +SKIP
>>> len(test), test.defects                                               # doctest: +SKIP
(45, ['contamination', 'crack', 'hole', 'scratch', 'stain'])
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageDraw

from ..env import data_dir, progress_bar
from ..errors import AdlearnError
from ..files import check_writable_dir, remove_stale, temp_prefix
from ._io import check_folder_path, check_int

__all__ = ["DEFECT_KINDS", "GENERATOR_VERSION", "SYNTHETIC_CATEGORIES", "make_synthetic"]

GENERATOR_VERSION = 1
"""Bumped whenever the images change, so cached folders of an older generator are not reused."""

SYNTHETIC_CATEGORIES: Mapping[str, str] = MappingProxyType(
    {"fabric": "texture", "stone": "texture", "washer": "object", "capsule": "object"}
)
"""Category name → ``"texture"`` or ``"object"``, in the order that seeds them."""

DEFECT_KINDS: tuple[str, ...] = ("scratch", "hole", "stain", "crack", "contamination")

_MIN_IMAGE_SIZE = 32
_REFERENCE_SIZE = 256
"""All lengths below are in pixels of a 256 px image and scale with ``image_size``."""


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def make_synthetic(
    root: str | Path | None = None,
    categories: Iterable[str] | str | None = None,
    image_size: int = 256,
    seed: int = 0,
    n_train: int = 80,
    n_test_good: int = 20,
    n_test_defect: int = 5,
    *,
    progress: bool = True,
) -> Path:
    """Generate the synthetic data set in the MVTec AD layout and return its root folder.

    Args:
        root: where to write. ``None``: ``adlearn.env.data_dir()/synthetic/<parameters>``.
        categories: names from :data:`SYNTHETIC_CATEGORIES`; ``None`` = all of them.
        image_size: side of the square images in pixels (≥ 32).
        seed: with the other arguments, fixes every pixel.
        n_train: nominal training images per category.
        n_test_good: nominal test images per category.
        n_test_defect: defective test images per defect kind and category.
        progress: show a progress bar while generating.

    ``root/manifest.json`` records the arguments and :data:`GENERATOR_VERSION`. A folder whose
    manifest matches is returned at once; one with another manifest is regenerated (never
    mixed); a non-empty folder without a manifest is refused. Images are generated into a
    temporary sibling folder (``.<root name>.tmp-<pid>@<host>-*``) that is renamed into place at
    the end, so an interrupted run leaves no half-written data set, and parallel processes asking
    for the same data set are safe. A temporary folder left by a killed run (SIGKILL, power loss)
    is deleted by the next call once its process is gone (:func:`adlearn.files.remove_stale`);
    one that a live process is still writing is left alone.
    """
    manifest = _manifest(_check_categories(categories), image_size, seed, n_train, n_test_good, n_test_defect)
    root = _default_root(manifest) if root is None else check_folder_path(root, "root")
    remove_stale(root.parent, root.name)  # what a killed run left behind
    if _read_manifest(root) == manifest:
        return root
    if root.exists() and not root.is_dir():
        raise AdlearnError(f"{root} is a file: pass a new or empty folder, or root=None for the cache")
    if root.exists() and _read_manifest(root) is None and any(root.iterdir()):
        raise AdlearnError(
            f"{root} is not empty and was not made by make_synthetic (no manifest.json): "
            "pass a new or empty folder, or root=None for the cache"
        )
    check_writable_dir(root.parent, "folder for the synthetic data set")
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=temp_prefix(root.name)))
    try:
        _write_dataset(tmp, manifest, progress)
        _publish(tmp, root, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_categories(categories: Iterable[str] | str | None) -> list[str]:
    if categories is None:
        return list(SYNTHETIC_CATEGORIES)
    chosen = [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in chosen if c not in SYNTHETIC_CATEGORIES]
    if unknown or not chosen:
        raise AdlearnError(
            f"unknown synthetic categories {unknown or chosen}; valid ones: {list(SYNTHETIC_CATEGORIES)}"
        )
    return list(dict.fromkeys(chosen))


def _manifest(
    categories: list[str], image_size: int, seed: int, n_train: int, n_test_good: int, n_test_defect: int
) -> dict:
    check_int("image_size", image_size, _MIN_IMAGE_SIZE)
    check_int("seed", seed, 0)
    for name, count in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        check_int(name, count, 1)
    return {
        "generator": "adlearn.datasets.make_synthetic",
        "version": GENERATOR_VERSION,
        "categories": categories,
        "defect_kinds": list(DEFECT_KINDS),
        "image_size": image_size,
        "seed": seed,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
    }


def _default_root(manifest: dict) -> Path:
    """``data_dir()/synthetic/256px-seed0-<digest>``: a folder per distinct set of arguments."""
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
    return data_dir() / "synthetic" / f"{manifest['image_size']}px-seed{manifest['seed']}-{digest}"


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, root: Path, manifest: dict) -> None:
    """Rename the finished ``tmp`` to ``root``, replacing an outdated data set atomically."""
    try:
        os.rename(tmp, root)  # succeeds when root is absent or an empty folder
        return
    except OSError:
        if _read_manifest(root) == manifest:  # another process finished the same data set first
            return
    stale = Path(tempfile.mkdtemp(dir=root.parent, prefix=temp_prefix(root.name))) / "old"
    os.rename(root, stale)
    os.rename(tmp, root)
    shutil.rmtree(stale.parent, ignore_errors=True)


def _write_dataset(folder: Path, manifest: dict, progress: bool) -> None:
    """Write every image and mask, then the manifest (last: its presence means "complete")."""
    size = manifest["image_size"]
    folders = [("train", None, manifest["n_train"]), ("test", None, manifest["n_test_good"])]
    folders += [("test", kind, manifest["n_test_defect"]) for kind in DEFECT_KINDS]
    jobs = [
        (c, subdir, kind, i) for c in manifest["categories"] for subdir, kind, n in folders for i in range(n)
    ]
    for category, subdir, kind, index in progress_bar(jobs, desc="make_synthetic", enabled=progress):
        rng = _image_rng(manifest["seed"], category, subdir, kind, index)
        image, mask = _render(category, kind, size, rng)
        name = f"{index:03d}"
        _save(image, folder / category / subdir / (kind or "good") / f"{name}.png")
        if mask is not None:
            _save(mask.astype(np.uint8) * 255, folder / category / "ground_truth" / kind / f"{name}_mask.png")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _image_rng(seed: int, category: str, subdir: str, kind: str | None, index: int) -> np.random.Generator:
    """The random stream of one image, independent of every other image."""
    folder = 0 if subdir == "train" else 1 if kind is None else 2 + DEFECT_KINDS.index(kind)
    category_index = list(SYNTHETIC_CATEGORIES).index(category)
    return np.random.default_rng(np.random.SeedSequence([seed, category_index, folder, index]))


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def _render(
    category: str, defect: str | None, image_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image ``uint8[S,S,3]`` and, for a defect, its mask ``bool[S,S]`` (``None`` when nominal)."""
    scene = _SCENES[category](rng, image_size)
    mask = None
    if defect is not None:
        scene, mask = _damage(scene, defect, rng)
    return _photograph(scene.rgb, rng), mask


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    """A clean rendering before lighting and noise."""

    rgb: np.ndarray
    """float32[S,S,3], about [0,1]."""
    body: np.ndarray
    """float32[S,S]: coverage of the product (1 everywhere for textures); defects stay on it."""
    support: np.ndarray
    """bool[S,S]: where a defect may be centred (the body minus a margin)."""
    beneath: np.ndarray
    """float32[S,S,3]: what a hole reveals."""

    @property
    def size(self) -> int:
        return self.rgb.shape[0]

    @property
    def scale(self) -> float:
        return self.size / _REFERENCE_SIZE


def _grid(size: int, rng: np.random.Generator, shift: float, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to a jittered centre, rotated by a random angle: (along, across)."""
    s = size / _REFERENCE_SIZE
    cy, cx = (size - 1) / 2 + rng.uniform(-shift, shift, 2) * s
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    y, x = y - cy, x - cx
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _noise(
    rng: np.random.Generator,
    size: int,
    beta: float,
    k_max: float = np.inf,
    stretch: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Gaussian noise with power spectrum ∝ k^-beta, zero mean, unit std (FFT, no loops).

    ``k`` is in cycles per image, so the same call looks alike at every resolution; ``k_max``
    (cycles per image) smoothly removes finer detail; ``stretch`` = (y, x) frequency factors:
    a large y factor makes structures elongated along y (fibres).
    """
    ky = np.fft.fftfreq(size)[:, None] * size * stretch[0]
    kx = np.fft.rfftfreq(size)[None, :] * size * stretch[1]
    k = np.hypot(ky, kx)
    k[0, 0] = 1.0
    amplitude = k ** (-beta / 2) * np.exp(-((k / k_max) ** 2))
    amplitude[0, 0] = 0.0  # zero mean
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * amplitude, s=(size, size))
    field -= field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _textured(rgb: np.ndarray, beneath: np.ndarray, margin: float) -> _Scene:
    """A texture fills the frame: the whole image is body; defects keep ``margin`` px off the border."""
    size = rgb.shape[0]
    m = round(margin * size / _REFERENCE_SIZE)
    support = np.zeros((size, size), bool)
    support[m : size - m, m : size - m] = True
    return _Scene(
        rgb.astype(np.float32), np.ones((size, size), np.float32), support, beneath.astype(np.float32)
    )


def _fabric(rng: np.random.Generator, size: int) -> _Scene:
    """Plain weave: warp and weft threads alternate over/under at every crossing."""
    s = size / _REFERENCE_SIZE
    u, v = _grid(size, rng, shift=_REFERENCE_SIZE, degrees=2.0)  # the shift is a random phase
    period = 12.0 * s * rng.uniform(0.97, 1.03)
    tu, tv = (u / period) % 1.0, (v / period) % 1.0
    warp_on_top = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    warp = np.sin(np.pi * tu) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * tv))
    weft = np.sin(np.pi * tv) ** 0.6 * (0.7 + 0.3 * np.sin(np.pi * tu))
    fibres = np.where(
        warp_on_top, _noise(rng, size, 1.0, 90, (1.0, 0.15)), _noise(rng, size, 1.0, 90, (0.15, 1.0))
    )
    height = np.where(warp_on_top, warp, weft) * (1 + 0.12 * fibres)
    colour = np.array([0.62, 0.58, 0.50]) * rng.uniform(0.97, 1.03, 3)
    rgb = colour * (0.45 + 0.55 * height[..., None])
    beneath = colour * 0.35 * (1 + 0.05 * _noise(rng, size, 2.0)[..., None])
    return _textured(rgb, beneath, margin=12)


def _stone(rng: np.random.Generator, size: int) -> _Scene:
    """Granite/marble: cloudy fractal noise, veins along the zero set of a smooth field, grains."""
    clouds = 1 / (1 + np.exp(-1.5 * _noise(rng, size, 3.0)))
    vein_field = _noise(rng, size, 3.5)
    veins = np.exp(-((vein_field / 0.06) ** 2))
    grains = _noise(rng, size, 0.5, 110)
    light, dark = np.array([0.80, 0.77, 0.72]), np.array([0.50, 0.48, 0.47])
    rgb = light + (dark - light) * clouds[..., None]
    rgb = rgb * (1 - 0.22 * veins[..., None]) + 0.045 * grains[..., None]
    beneath = rgb * 0.62  # a pit is in its own shadow
    return _textured(rgb, beneath, margin=12)


def _washer(rng: np.random.Generator, size: int) -> _Scene:
    """Brushed metal ring with a notch, lit from one side, on a dark conveyor belt."""
    s = size / _REFERENCE_SIZE
    a, b = _grid(size, rng, shift=4.0, degrees=6.0)
    r, theta = np.hypot(a, b), np.arctan2(b, a)
    r_out, r_in = 92.0 * s, 42.0 * s
    ring = np.clip(r_out - r + 0.5, 0, 1) * np.clip(r - r_in + 0.5, 0, 1)
    notch = np.clip(a - (r_out - 9.0 * s) + 0.5, 0, 1) * np.clip(5.0 * s - np.abs(b) + 0.5, 0, 1)
    body = ring * (1 - notch)
    rings = rng.standard_normal(_REFERENCE_SIZE)  # concentric brush marks every 1.5 px of radius
    brushed = np.interp(r, np.arange(_REFERENCE_SIZE) * 1.5 * s, rings)
    light = 0.55 + 0.13 * np.cos(2 * (theta - 0.6)) + 0.06 * (r - r_in) / (r_out - r_in) + 0.02 * brushed
    metal = np.array([0.93, 0.95, 1.0]) * light[..., None]
    belt = np.array([0.10, 0.10, 0.11]) * (1 + 0.4 * _noise(rng, size, 2.5)[..., None])
    rgb = belt + (metal - belt) * body[..., None]
    margin = 6.0 * s
    support = (r > r_in + margin) & (r < r_out - margin) & (np.abs(theta) > 0.25)
    return _Scene(rgb.astype(np.float32), body.astype(np.float32), support, belt.astype(np.float32))


_IMPRINT = [
    [(-1, 1), (-0.5, -1), (0, 1)],
    [(-0.8, 0.2), (-0.2, 0.2)],
    [(0.25, -1), (0.25, 1), (0.9, 0.6), (0.9, -0.6), (0.25, -1)],
]
"""The strokes of "AD" in a box of ±1, printed on the capsule."""


def _capsule(rng: np.random.Generator, size: int) -> _Scene:
    """Two-tone capsule (a stadium shape) with cylindrical shading, a highlight and an imprint."""
    s = size / _REFERENCE_SIZE
    a, b = _grid(size, rng, shift=4.0, degrees=4.0)
    half, radius = 62.0 * s, 34.0 * s
    d = np.hypot(np.maximum(np.abs(a) - half, 0), b)
    body = np.clip(radius - d + 0.5, 0, 1)
    shade = np.sqrt(np.clip(1 - (d / radius) ** 2, 0, 1))
    highlight = np.exp(-(((b + 0.45 * radius) / (0.12 * radius)) ** 2)) * (np.abs(a) < half + 0.6 * radius)
    cap, base = np.array([0.80, 0.32, 0.18]), np.array([0.92, 0.89, 0.80])
    colour = np.where((a < 0)[..., None], cap, base)
    seam = 1 - 0.35 * np.exp(-((a / (1.2 * s)) ** 2))
    pill = colour * (0.45 + 0.55 * shade[..., None]) * seam[..., None] + 0.22 * highlight[..., None]
    pill = pill * (1 - 0.5 * _imprint(a, b, half * 0.5, radius * 0.4, s)[..., None])
    tray = np.array([0.24, 0.27, 0.30]) * (1 + 0.15 * _noise(rng, size, 2.5)[..., None])
    rgb = tray + (pill - tray) * body[..., None]
    support = d < radius - 6.0 * s
    return _Scene(rgb.astype(np.float32), body.astype(np.float32), support, (tray * 0.6).astype(np.float32))


def _imprint(a: np.ndarray, b: np.ndarray, centre: float, height: float, s: float) -> np.ndarray:
    """Coverage of the imprint strokes: distance of each pixel to the nearest stroke segment."""
    width = max(1.0, 1.6 * s)
    distance = np.full(a.shape, np.inf, np.float32)
    for stroke in _IMPRINT:
        points = [(centre + height * 0.6 * x, height * y) for x, y in stroke]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            distance = np.minimum(distance, _segment_distance(a, b, x0, y0, x1, y1))
    return np.clip(width - distance + 0.5, 0, 1)


def _segment_distance(a: np.ndarray, b: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((a - x0) * dx + (b - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(a - x0 - t * dx, b - y0 - t * dy)


_SCENES: Mapping[str, Callable[[np.random.Generator, int], _Scene]] = MappingProxyType(
    {"fabric": _fabric, "stone": _stone, "washer": _washer, "capsule": _capsule}
)


# --------------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------------


def _damage(scene: _Scene, kind: str, rng: np.random.Generator) -> tuple[_Scene, np.ndarray]:
    """Blend a defect into the scene: ``rgb += w·(target − rgb)``, mask = (shape ≥ ½) on the body.

    Redrawn (from the same stream, so still deterministic) in the rare case that the shape falls
    off the body entirely, so every defective image has a non-empty mask.
    """
    for _ in range(100):
        y, x = _pick(rng, scene.support)
        shape, strength, target = _DEFECTS[kind](scene, rng, y, x)
        mask = (shape >= 0.5) & (scene.body >= 0.5)
        if mask.any():
            weight = (shape * strength * scene.body)[..., None]
            rgb = scene.rgb + weight * (target - scene.rgb)
            return _Scene(rgb.astype(np.float32), scene.body, scene.support, scene.beneath), mask
    raise RuntimeError(f"could not place a {kind} on the object")  # a generator bug, not user input


def _pick(rng: np.random.Generator, support: np.ndarray) -> tuple[float, float]:
    flat = np.flatnonzero(support)
    y, x = divmod(int(flat[rng.integers(len(flat))]), support.shape[1])
    return float(y), float(x)


def _canvas(scene: _Scene, draw: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """Rasterise PIL drawing commands into a crisp 0/1 float shape (exact masks, no blur)."""
    image = Image.new("L", (scene.size, scene.size), 0)
    draw(ImageDraw.Draw(image))
    return (np.asarray(image) > 127).astype(np.float32)


def _width(scene: _Scene, width: float) -> int:
    """A line width at this resolution, never below 2 px so that the mask survives."""
    return max(2, round(width * scene.scale))


def _scratch(
    scene: _Scene, rng: np.random.Generator, y: float, x: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """A thin curved line (a quadratic Bézier), slightly brighter or darker than the surface."""
    length = rng.uniform(28, 50) * scene.scale
    angle, bend = rng.uniform(0, np.pi), rng.uniform(-0.35, 0.35) * length
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    p0, p2 = np.array([x - dx, y - dy]), np.array([x + dx, y + dy])
    p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(angle), np.cos(angle)])
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    shape = _canvas(
        scene, lambda d: d.line([tuple(p) for p in curve], fill=255, width=_width(scene, 1.6), joint="curve")
    )
    delta = rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.18)
    return shape, 1.0, scene.rgb + delta


def _hole(
    scene: _Scene, rng: np.random.Generator, y: float, x: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """A small irregular missing piece showing what lies beneath (belt, tray, backing, pit)."""
    radius = max(2.0, rng.uniform(4.0, 7.0) * scene.scale)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = radius * rng.uniform(0.7, 1.3, 9)
    polygon = [(x + r * np.cos(t), y + r * np.sin(t)) for r, t in zip(radii, angles)]
    shape = _canvas(scene, lambda d: d.polygon(polygon, fill=255))
    return shape, rng.uniform(0.65, 0.9), scene.beneath


def _stain(
    scene: _Scene, rng: np.random.Generator, y: float, x: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """A soft-edged tinted blob (coffee, rust, oil): a colour filter with a noisy outline."""
    size, s = scene.size, scene.scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, ry, rx = rng.uniform(0, np.pi), *(rng.uniform(7, 13, 2) * s)
    u = ((xx - x) * np.cos(angle) + (yy - y) * np.sin(angle)) / max(rx, 2.0)
    v = (-(xx - x) * np.sin(angle) + (yy - y) * np.cos(angle)) / max(ry, 2.0)
    shape = np.clip(2.0 * (1 - np.hypot(u, v)) + 0.35 * _noise(rng, size, 2.0, 40), 0, 1)
    tint = np.array([[0.80, 0.62, 0.42], [0.85, 0.55, 0.35], [0.55, 0.55, 0.62]])[rng.integers(3)]
    return shape, rng.uniform(0.6, 0.9), scene.rgb * tint


def _crack(
    scene: _Scene, rng: np.random.Generator, y: float, x: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """A branching random walk, darker than the surface."""
    s = scene.scale
    trunk = _walk(rng, (x, y), rng.uniform(0, 2 * np.pi), int(rng.integers(8, 14)), 3.0 * s)
    start = trunk[int(rng.integers(2, len(trunk) - 2))]
    branch = _walk(rng, start, rng.uniform(0, 2 * np.pi), int(rng.integers(4, 8)), 3.0 * s)
    width = _width(scene, 1.6)

    def draw(d: ImageDraw.ImageDraw) -> None:
        d.line(trunk, fill=255, width=width, joint="curve")
        d.line(branch, fill=255, width=width, joint="curve")

    return _canvas(scene, draw), rng.uniform(0.3, 0.45), scene.rgb * 0.2


def _walk(
    rng: np.random.Generator, start: tuple[float, float], heading: float, steps: int, step: float
) -> list[tuple[float, float]]:
    points = [start]
    for turn in rng.normal(0, 0.45, steps):
        heading += turn
        x, y = points[-1]
        points.append((x + step * np.cos(heading), y + step * np.sin(heading)))
    return points


def _contamination(
    scene: _Scene, rng: np.random.Generator, y: float, x: float
) -> tuple[np.ndarray, float, np.ndarray]:
    """A cluster of small specks of dust or debris."""
    s = scene.scale
    n = int(rng.integers(5, 11))
    centres = np.array([x, y]) + rng.normal(0, 6.0 * s, (n, 2))
    radii = np.maximum(1.0, rng.uniform(1.0, 2.2, n) * s)

    def draw(d: ImageDraw.ImageDraw) -> None:
        for (cx, cy), r in zip(centres, radii):
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)

    dust = np.array([[0.30, 0.24, 0.18], [0.18, 0.18, 0.20], [0.20, 0.26, 0.34]])[rng.integers(3)]
    return _canvas(scene, draw), rng.uniform(0.6, 0.85), np.broadcast_to(dust, scene.rgb.shape)


_DEFECTS: Mapping[
    str, Callable[[_Scene, np.random.Generator, float, float], tuple[np.ndarray, float, np.ndarray]]
] = MappingProxyType(
    {"scratch": _scratch, "hole": _hole, "stain": _stain, "crack": _crack, "contamination": _contamination}
)


# --------------------------------------------------------------------------------------------
# Camera
# --------------------------------------------------------------------------------------------


def _photograph(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (gain, offset, gradient, white balance) and sensor noise, quantised to 8 bits."""
    size = rgb.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    direction = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0, 0.25) * (x * np.cos(direction) + y * np.sin(direction))
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    lit = rgb * gain * gradient[..., None] + rng.uniform(-0.04, 0.04)
    noisy = lit + rng.normal(0, 0.012, lit.shape)
    return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)
