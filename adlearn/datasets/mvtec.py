"""MVTec AD folders as a PyTorch ``Dataset``, and a download helper for users with internet.

The MVTec AD layout (Bergmann et al., CVPR 2019 / IJCV 2021) is the lingua franca of industrial
anomaly detection, so every adlearn data set is stored in it::

    root/<category>/train/good/000.png                       nominal training images only
    root/<category>/test/good/000.png                        nominal test images
    root/<category>/test/<defect>/000.png                    defective test images
    root/<category>/ground_truth/<defect>/000_mask.png       their pixel masks (non-zero = defect)

:class:`MVTecAD` reads this layout for MVTec AD itself, for VisA converted to it (masks named
``000.png`` instead of ``000_mask.png`` are accepted), for :func:`~adlearn.datasets.make_synthetic`
output and for a user's own folders. PNG, JPEG, BMP and TIFF images are read; other files are
ignored. Every problem with the folders raises :class:`~adlearn.errors.AdlearnError` naming the
path and the fix, at construction where a file header suffices, otherwise when the image is read.

MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial, share-alike): it is never bundled with
adlearn, and :func:`download_mvtec` only fetches it for a user who accepts those terms.

>>> from adlearn.datasets import MVTecAD, make_synthetic
>>> root = make_synthetic(categories=["washer"], image_size=128)          # doctest: +SKIP
>>> test = MVTecAD(root, "washer", split="test", image_size=128)          # doctest: +SKIP
>>> s = test[0]; s["image"].shape, s["mask"].shape, s["label"], s["defect"]  # doctest: +SKIP
(torch.Size([3, 128, 128]), torch.Size([1, 128, 128]), 0, 'good')
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from ..env import progress_bar
from ..errors import AdlearnError
from ..files import remove_stale, temp_prefix
from ._io import (
    IMAGE_EXTENSIONS,
    check_folder_path,
    check_image_size,
    check_split,
    list_images,
    load_image,
    load_mask,
    read_size,
)

__all__ = ["MVTEC_CATEGORIES", "MVTecAD", "download_mvtec"]


class Sample(NamedTuple):
    """One entry of :attr:`MVTecAD.samples`."""

    path: Path
    label: int
    defect: str
    mask_path: Path | None


class MVTecAD(Dataset):
    """One category of an MVTec-AD-layout folder, one split.

    ``ds[i]`` is ``{"image": float32[3,S,S] in [0,1], "mask": float32[1,S,S] in {0,1},
    "label": 0|1, "defect": str, "path": str}`` with ``S = image_size``; nominal images
    (``good``) have label 0 and an all-zero mask. Samples are sorted by defect folder, then by
    file name, so the order is the same on every machine.

    Args:
        root: the folder holding the category folders (not the category folder itself).
        category: a sub-folder of ``root``, e.g. ``"bottle"`` or ``"fabric"``.
        split: ``"train"`` (``train/good`` only: the one-class setting) or ``"test"``.
        image_size: side of the square images and masks returned.
    """

    has_masks = True
    """Pixel ground truth exists, so evaluation reports pixel metrics too."""

    def __init__(self, root: str | Path, category: str, split: str = "train", image_size: int = 256) -> None:
        self.root = check_folder_path(root, "data root")
        self.category = category
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        folder = _category_dir(self.root, category)
        self.samples: list[Sample] = _scan_train(folder) if split == "train" else _scan_test(folder)
        self.defects: list[str] = sorted({s.defect for s in self.samples if s.label == 1})
        self.labels: list[int] = [s.label for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, object]:
        if not -len(self) <= index < len(self):  # IndexError: it ends iteration over the dataset
            raise IndexError(f"index {index} is out of range for the {len(self)} {self.split} images of "
                             f"{self.root / self.category}")
        path, label, defect, mask_path = self.samples[index]
        image = load_image(path, self.image_size)
        if mask_path is None:
            mask = torch.zeros(1, self.image_size, self.image_size)
        else:
            mask = load_mask(mask_path, self.image_size)
        return {"image": image, "mask": mask, "label": label, "defect": defect, "path": str(path)}

    def __repr__(self) -> str:
        n_bad = sum(self.labels)
        return (
            f"MVTecAD(root='{self.root}', category={self.category!r}, split={self.split!r}, "
            f"image_size={self.image_size}): {len(self)} images ({len(self) - n_bad} good, "
            f"{n_bad} defective in {len(self.defects)} kinds)"
        )


def _category_dir(root: Path, category: str) -> Path:
    """``root/category`` after checking both exist; the error lists the categories that do."""
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise AdlearnError(
            f"data root {root} {state}: pass the folder that holds the category folders "
            "(make it with adlearn.datasets.make_synthetic() or download_mvtec(root))"
        )
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() or (p / "test").is_dir())
    if not isinstance(category, str) or not category:
        raise AdlearnError(f"category must be the name of a folder in {root}, got {category!r}; found: {found or 'none'}")
    folder = root / category
    if not folder.is_dir():
        hint = (
            f"; {root} itself looks like a category folder, so pass its parent {root.parent} as root"
            if (root / "train").is_dir()
            else ""
        )
        raise AdlearnError(
            f"category folder {folder} does not exist; categories found in {root}: {found or 'none'}{hint}"
        )
    return folder


def _split_dir(folder: Path, split: str) -> Path:
    path = folder / split
    if not path.is_dir():
        raise AdlearnError(
            f"split folder {path} does not exist: the MVTec layout needs {folder}/train/good "
            f"and {folder}/test/<defect>"
        )
    return path


def _scan_train(folder: Path) -> list[Sample]:
    """``train/good``: the only folder allowed in ``train`` (the one-class setting)."""
    train = _split_dir(folder, "train")
    others = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name != "good")
    if others:
        raise AdlearnError(
            f"{train} holds folders other than good/ ({others}): training data must be nominal only; "
            "move defective images to test/<defect>"
        )
    good = train / "good"
    images = list_images(good) if good.is_dir() else []
    if not images:
        raise AdlearnError(
            f"no training images in {good}: put nominal images ({', '.join(IMAGE_EXTENSIONS)}) there"
        )
    return [Sample(p, 0, "good", None) for p in images]


def _scan_test(folder: Path) -> list[Sample]:
    """``test/<defect>`` folders, each defective image paired with its mask (header-checked)."""
    test = _split_dir(folder, "test")
    samples: list[Sample] = []
    for defect_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for path in list_images(defect_dir):
            if defect == "good":
                samples.append(Sample(path, 0, "good", None))
            else:
                samples.append(Sample(path, 1, defect, _mask_for(folder, defect, path)))
    if not samples:
        raise AdlearnError(
            f"no test images in {test}: put nominal ones in {test}/good and defective ones in {test}/<defect>"
        )
    return samples


def _mask_for(folder: Path, defect: str, image: Path) -> Path:
    """The mask of a defective image: MVTec's ``<stem>_mask.png``, or VisA-style ``<stem>.png``."""
    gt = folder / "ground_truth" / defect
    names = [f"{image.stem}{suffix}{ext}" for suffix in ("_mask", "") for ext in IMAGE_EXTENSIONS]
    mask = next((gt / n for n in names if (gt / n).is_file()), None)
    if mask is None:
        raise AdlearnError(
            f"mask missing for defective image {image}: expected {gt / (image.stem + '_mask.png')}; "
            "add it (non-zero pixels = defect) or move the image out of test/"
        )
    mask_size, image_size = read_size(mask), read_size(image)
    if mask_size != image_size:
        raise AdlearnError(
            f"mask {mask} is {mask_size} pixels but its image {image} is {image_size}: "
            "masks must have their image's size; re-export the mask at the image's resolution"
        )
    return mask


# --------------------------------------------------------------------------------------------
# Download (users with internet; never used by the tests or CI)
# --------------------------------------------------------------------------------------------

MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"

MVTEC_BASE_URL = "https://www.mydrive.ch/shares/"
"""Where MVTec hosts the archives. The links have moved several times (an FTP server until 2020,
then mydrive.ch shares whose ids changed in 2025 and 2026; see anomalib issues #250, #1505, #3121,
#3608). When a link 404s, copy the current one from :data:`MVTEC_PAGE` and pass ``base_url`` (and
``archives``) or download by hand."""

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip

FULL_ARCHIVE = "mvtec_anomaly_detection"

MVTEC_ARCHIVES: Mapping[str, str] = {
    FULL_ARCHIVE: "38536/3830184030e49fe74747669442f0f283/download/420938113-1629960298/"
    "mvtec_anomaly_detection.tar.xz",
    "bottle": "38536/3830184030e49fe74747669442f0f282/download/420937370-1629951468/bottle.tar.xz",
    "cable": "38536/3830184030e49fe74747669442f0f282/download/420937413-1629951498/cable.tar.xz",
    "capsule": "38536/3830184030e49fe74747669442f0f282/download/420937454-1629951595/capsule.tar.xz",
    "carpet": "38536/3830184030e49fe74747669442f0f282/download/420937484-1629951672/carpet.tar.xz",
    "grid": "38536/3830184030e49fe74747669442f0f282/download/420937487-1629951814/grid.tar.xz",
    "hazelnut": "38536/3830184030e49fe74747669442f0f282/download/420937545-1629951845/hazelnut.tar.xz",
    "leather": "38536/3830184030e49fe74747669442f0f282/download/420937607-1629951964/leather.tar.xz",
    "metal_nut": "38536/3830184030e49fe74747669442f0f282/download/420937637-1629952063/metal_nut.tar.xz",
    "pill": "43421/11a215a5749fcfb75e331ddd5f8e43ee/download/420938129-1629953099/pill.tar.xz",
    "screw": "38536/3830184030e49fe74747669442f0f282/download/420938130-1629953152/screw.tar.xz",
    "tile": "38536/3830184030e49fe74747669442f0f282/download/420938133-1629953189/tile.tar.xz",
    "toothbrush": "38536/3830184030e49fe74747669442f0f282/download/420938134-1629953256/toothbrush.tar.xz",
    "transistor": "38536/3830184030e49fe74747669442f0f282/download/420938166-1629953277/transistor.tar.xz",
    "wood": "38536/3830184030e49fe74747669442f0f282/download/420938383-1629953354/wood.tar.xz",
    "zipper": "38536/3830184030e49fe74747669442f0f282/download/420938385-1629953449/zipper.tar.xz",
}
"""Archive paths under :data:`MVTEC_BASE_URL`. The full archive's link was reported working in
March 2026 (anomalib issue #3441) and dead again in May 2026 (#3608, fixed by anomalib PR #3673
with a link not recorded here); the per-category links are the 2021 ones that many repositories
copy. Expect to pass the current link from :data:`MVTEC_PAGE` as ``base_url`` / ``archives``."""

MVTEC_SHA256: Mapping[str, str] = {
    FULL_ARCHIVE: "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
}
"""Known SHA-256 digests (the full archive's, as recorded by anomalib). MVTec publishes no
per-category digests: pass your own via ``download_mvtec(..., sha256={"bottle": "..."})``;
without one the archive is used unverified and a warning prints the digest to record."""


def download_mvtec(
    root: str | Path,
    categories: Iterable[str] | None = None,
    *,
    base_url: str = MVTEC_BASE_URL,
    archives: Mapping[str, str] | None = None,
    sha256: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download MVTec AD (CC BY-NC-SA 4.0) into ``root`` in its official layout; returns ``root``.

    ``categories=None`` fetches the full 4.9 GB archive (its SHA-256 is known) and extracts the
    categories not yet in ``root``; a list fetches those categories' own archives (verified when
    ``sha256`` gives their digest). Categories already present are skipped, archives are streamed
    with a progress bar, checked, extracted without letting any member escape ``root``, and
    deleted (what a killed run left, ``.download.tmp-*``, is deleted by the next). By downloading you accept the licence: non-commercial use, share-alike, cite
    Bergmann et al. (IJCV 2021).

    If the download fails (no internet, a moved link), get the data by hand from
    https://www.mvtec.com/company/research/datasets/mvtec-ad, extract it and pass the folder to
    :class:`MVTecAD`.
    """
    root = Path(root).expanduser()
    wanted = _check_categories(categories)
    missing = [c for c in wanted if not (root / c).is_dir()]
    if not missing:
        return root
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root, _DOWNLOAD)  # archives and extractions of a killed earlier run
    paths = {**MVTEC_ARCHIVES, **(archives or {})}
    digests = {**MVTEC_SHA256, **(sha256 or {})}
    jobs = [(FULL_ARCHIVE, missing)] if categories is None else [(c, [c]) for c in missing]
    for name, contents in jobs:
        archive = root / f"{temp_prefix(_DOWNLOAD)}{name}.tar.xz"
        try:
            _fetch(base_url + paths[name], archive, timeout)
            _verify_sha256(archive, digests.get(name))
            _extract_categories(archive, root, contents)
        finally:
            archive.unlink(missing_ok=True)
    return root


_DOWNLOAD = "download"
"""Name under which :func:`download_mvtec` keeps its temporary archive and extraction folder."""


def _check_categories(categories: Iterable[str] | None) -> list[str]:
    if categories is None:
        return list(MVTEC_CATEGORIES)
    chosen = [categories] if isinstance(categories, str) else list(categories)
    unknown = sorted(set(chosen) - set(MVTEC_CATEGORIES))
    if unknown:
        raise AdlearnError(f"unknown MVTec AD categories {unknown}; valid ones: {list(MVTEC_CATEGORIES)}")
    return chosen


def _fetch(url: str, dest: Path, timeout: float) -> None:
    """Stream ``url`` to ``dest`` with a progress bar; any network failure becomes an AdlearnError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise AdlearnError(
            f"could not download {url}: {err}. MVTec's links move often: download the data by hand "
            f"from {MVTEC_PAGE}, extract it, and pass the folder as MVTecAD(root=...) "
            "(or pass download_mvtec(base_url=..., archives=...) with the current link)"
        ) from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _verify_sha256(path: Path, expected: str | None) -> None:
    """Raise if ``path`` does not have digest ``expected``; warn (with the digest) if none is known."""
    actual = _sha256(path)
    if expected is None:
        warnings.warn(
            f"no SHA-256 known for {path.name}; it was not verified. Its digest is {actual}: "
            "record it and pass sha256={...} next time",
            stacklevel=3,
        )
    elif actual != expected.lower():
        raise AdlearnError(
            f"checksum mismatch for {path}: expected SHA-256 {expected}, got {actual}. The download "
            "is corrupt or the file changed upstream; retry, or download by hand from "
            f"{MVTEC_PAGE}"
        )


def _extract_categories(archive: Path, root: Path, categories: list[str]) -> None:
    """Extract the ``categories`` folders of ``archive`` into ``root``, all or nothing per category.

    Members are extracted to a temporary folder first and each category folder is renamed into
    place only when complete, so an interrupted run never leaves a half category that a later
    call would mistake for a finished one.
    """
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(dir=root, prefix=temp_prefix(_DOWNLOAD)) as tmp:
        members = [m for m in _safe_members(tar, archive) if Path(m.name).parts[0] in categories]
        tar.extractall(tmp, members=members, filter="data")
        for category in categories:
            if not (Path(tmp) / category).is_dir():
                raise AdlearnError(
                    f"{archive} holds no folder {category}/: it is not the MVTec AD archive expected; "
                    f"check the link or download by hand from {MVTEC_PAGE}"
                )
            shutil.move(str(Path(tmp) / category), str(root / category))


def _safe_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """All members, refusing any that could write outside the target (path traversal, links)."""
    members = tar.getmembers()
    for m in members:
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise AdlearnError(
                f"refusing to extract {archive}: member {m.name!r} is a link, a device or points "
                "outside the target folder; the archive is not a genuine MVTec AD archive, "
                f"download it again from {MVTEC_PAGE}"
            )
    return members
