"""adlearn.datasets: the MVTec-layout reader, the synthetic generator, ELPV, the download helper.

No network: the download helper is exercised through ``file://`` URLs and local archives.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adlearn.datasets import (
    DEFECT_KINDS,
    ELPV,
    SYNTHETIC_CATEGORIES,
    MVTecAD,
    download_mvtec,
    make_synthetic,
    mvtec,
    synthetic,
)
from adlearn.datasets import _io
from adlearn.errors import AdlearnError
from adlearn.files import temp_prefix

SIZE = 64
COUNTS = {"n_train": 4, "n_test_good": 2, "n_test_defect": 2}


def _save(path: Path, image: Image.Image | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path)
    return path


def _rgb(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _raises_naming(path: Path, fn, *args, **kwargs) -> str:
    """Call ``fn``; it must raise AdlearnError whose message contains ``path``."""
    with pytest.raises(AdlearnError) as info:
        fn(*args, **kwargs)
    assert str(path) in str(info.value), f"message does not name {path}: {info.value}"
    return str(info.value)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", image_size=SIZE, seed=0, **COUNTS)


@pytest.fixture
def layout(tmp_path) -> Path:
    """A minimal MVTec-layout root with one category ``widget`` and one defect kind ``dent``."""
    root = tmp_path / "data"
    category = root / "widget"
    for i in range(2):
        _save(category / "train" / "good" / f"{i:03d}.png", _rgb(seed=i))
    _save(category / "test" / "good" / "000.png", _rgb(seed=5))
    _save(category / "test" / "dent" / "000.png", _rgb(seed=6))
    mask = np.zeros((32, 32), np.uint8)
    mask[10:14, 8:20] = 255
    _save(category / "ground_truth" / "dent" / "000_mask.png", mask)
    return root


# ---------------------------------------------------------------------------------------------
# make_synthetic
# ---------------------------------------------------------------------------------------------


def test_synthetic_writes_the_mvtec_layout_and_a_manifest(synthetic_root):
    for category in SYNTHETIC_CATEGORIES:
        folder = synthetic_root / category
        assert len(list((folder / "train" / "good").glob("*.png"))) == COUNTS["n_train"]
        assert len(list((folder / "test" / "good").glob("*.png"))) == COUNTS["n_test_good"]
        for kind in DEFECT_KINDS:
            images = sorted((folder / "test" / kind).glob("*.png"))
            assert len(images) == COUNTS["n_test_defect"]
            for image in images:
                mask = folder / "ground_truth" / kind / f"{image.stem}_mask.png"
                assert Image.open(mask).size == Image.open(image).size == (SIZE, SIZE)
    manifest = json.loads((synthetic_root / "manifest.json").read_text())
    assert manifest["image_size"] == SIZE and manifest["seed"] == 0
    assert manifest["categories"] == list(SYNTHETIC_CATEGORIES)
    assert manifest["version"] == synthetic.GENERATOR_VERSION


def test_synthetic_has_textures_objects_and_five_defect_kinds():
    kinds = list(SYNTHETIC_CATEGORIES.values())
    assert kinds.count("texture") >= 2 and kinds.count("object") >= 2
    assert {"fabric", "stone", "washer", "capsule"} <= set(SYNTHETIC_CATEGORIES)
    assert len(DEFECT_KINDS) >= 4


@pytest.mark.parametrize("category", list(SYNTHETIC_CATEGORIES))
def test_masks_are_non_empty_for_defects_and_empty_for_good(synthetic_root, category):
    test = MVTecAD(synthetic_root, category, "test", image_size=SIZE)
    assert test.defects == sorted(DEFECT_KINDS)
    for i in range(len(test)):
        s = test[i]
        if s["label"] == 1:
            assert s["mask"].sum() >= 2, f"empty mask for {s['path']}"
        else:
            assert s["defect"] == "good" and s["mask"].sum() == 0


@pytest.mark.parametrize("category", [c for c, kind in SYNTHETIC_CATEGORIES.items() if kind == "object"])
def test_defects_lie_on_the_object(synthetic_root, category):
    mean = torch.stack(
        [s["image"] for s in MVTecAD(synthetic_root, category, "train", image_size=SIZE)]
    ).mean(0)
    border = torch.cat([mean[:, 0], mean[:, -1], mean[:, :, 0], mean[:, :, -1]], dim=1)
    background = border.median(dim=1).values[:, None, None]
    silhouette = (mean - background).abs().mean(0) > 0.08
    assert 0.1 < silhouette.float().mean() < 0.7, "the silhouette estimate itself is broken"
    # objects shift by ±1 px at 64 px and the mean blurs the rim: allow 2 px around the silhouette
    on_object = torch.nn.functional.max_pool2d(silhouette[None].float(), 5, stride=1, padding=2)[0] > 0
    test = MVTecAD(synthetic_root, category, "test", image_size=SIZE)
    for i in (i for i, label in enumerate(test.labels) if label):
        mask = test[i]["mask"][0] > 0
        assert not (mask & ~on_object).any(), f"defect off the object in {test.samples[i].path}"


def test_synthetic_is_byte_identical_for_the_same_arguments(synthetic_root, tmp_path):
    again = make_synthetic(tmp_path / "again", image_size=SIZE, seed=0, **COUNTS)
    assert _files(again) == _files(synthetic_root)


def test_synthetic_images_do_not_depend_on_which_categories_are_generated(synthetic_root, tmp_path):
    alone = make_synthetic(tmp_path / "alone", categories=["washer"], image_size=SIZE, seed=0, **COUNTS)
    washer = _files(synthetic_root / "washer")
    assert washer and _files(alone / "washer") == washer


def test_synthetic_differs_for_another_seed(synthetic_root, tmp_path):
    other = make_synthetic(tmp_path / "other", categories=["fabric"], image_size=SIZE, seed=1, **COUNTS)
    a, b = _files(synthetic_root / "fabric"), _files(other / "fabric")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_synthetic_nominal_images_vary(synthetic_root):
    images = torch.stack([s["image"] for s in MVTecAD(synthetic_root, "washer", "train", image_size=SIZE)])
    assert (images[0] - images[1]).abs().mean() > 0.01


def test_synthetic_scales_to_other_resolutions(tmp_path):
    root = make_synthetic(
        tmp_path / "big", categories=["capsule"], image_size=96, n_train=1, n_test_good=1, n_test_defect=1
    )
    test = MVTecAD(root, "capsule", "test", image_size=96)
    assert test[0]["image"].shape == (3, 96, 96)
    assert all(test[i]["mask"].sum() >= 2 for i, label in enumerate(test.labels) if label)


def test_synthetic_cache_is_reused_without_regenerating(synthetic_root, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the manifest matches")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    assert make_synthetic(synthetic_root, image_size=SIZE, seed=0, **COUNTS) == synthetic_root


def test_synthetic_default_root_lives_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLEARN_DATA", str(tmp_path / "cache"))
    kwargs = {"categories": ["stone"], "image_size": SIZE, "n_train": 1, "n_test_good": 1, "n_test_defect": 1}
    root = make_synthetic(**kwargs)
    assert root.parent == tmp_path / "cache" / "synthetic" and (root / "manifest.json").is_file()
    assert make_synthetic(**kwargs) == root
    assert make_synthetic(**{**kwargs, "seed": 3}) != root


def test_synthetic_regenerates_a_folder_with_another_manifest_without_mixing(tmp_path):
    root = make_synthetic(
        tmp_path / "d",
        categories=["fabric", "stone"],
        image_size=SIZE,
        n_train=2,
        n_test_good=1,
        n_test_defect=1,
    )
    make_synthetic(root, categories=["washer"], image_size=SIZE, n_train=2, n_test_good=1, n_test_defect=1)
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "washer"]
    assert json.loads((root / "manifest.json").read_text())["categories"] == ["washer"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "temporary or stale folders left behind"


def test_synthetic_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    _raises_naming(tmp_path, make_synthetic, tmp_path, categories=["fabric"], image_size=SIZE)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    real = synthetic._render

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "_render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path / "d", categories=["fabric"], image_size=SIZE, **COUNTS)
    assert list(tmp_path.iterdir()) == []


KILLED_GENERATOR = """
import sys
from adlearn.datasets import make_synthetic
make_synthetic(sys.argv[1], categories=["fabric"], image_size=64, n_train=10_000, progress=False)
"""


def test_a_killed_generation_is_cleaned_up_by_the_next_run(tmp_path):
    root = tmp_path / "d"
    child = subprocess.Popen([sys.executable, "-c", KILLED_GENERATOR, str(root)])
    try:
        deadline = time.monotonic() + 120
        while not any(tmp_path.glob(".d.tmp-*/fabric/train/good/*.png")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        child.kill()  # SIGKILL: no clean-up code runs
        child.wait()
    left = list(tmp_path.glob(".d.tmp-*"))
    assert len(left) == 1 and not root.exists(), "the child did not get to write images"
    make_synthetic(root, categories=["fabric"], image_size=SIZE, n_train=1, n_test_good=1, n_test_defect=1)
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "the killed run's temporary folder is still there"
    left[0].mkdir()  # killed again; the data set is already there: the next call still cleans up
    make_synthetic(root, categories=["fabric"], image_size=SIZE, n_train=1, n_test_good=1, n_test_defect=1)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    assert len(MVTecAD(root, "fabric", "test", image_size=SIZE)) == 1 + len(DEFECT_KINDS)


def _as_pid(prefix: str, pid: int) -> str:
    """A temporary-name prefix of this process, as another process ``pid`` would have made it."""
    return prefix.replace(f"-{os.getpid()}@", f"-{pid}@")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_generation_is_not_disturbed(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / _as_pid(temp_prefix("d"), sleeper.pid)
        busy.mkdir()
        make_synthetic(tmp_path / "d", categories=["fabric"], image_size=SIZE, n_train=1, n_test_good=1,
                       n_test_defect=1)
        assert busy.is_dir(), "another process's folder was deleted while it was still running"
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"categories": ["fabric", "tiles"]}, "capsule"),  # the message lists the valid names
        ({"image_size": 16}, "image_size"),
        ({"n_train": 0}, "n_train"),
        ({"seed": -1}, "seed"),
    ],
)
def test_synthetic_rejects_bad_arguments(tmp_path, kwargs, fragment):
    with pytest.raises(AdlearnError, match=fragment):
        make_synthetic(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# MVTecAD: samples
# ---------------------------------------------------------------------------------------------


def test_samples_have_the_documented_types_shapes_and_ranges(synthetic_root):
    test = MVTecAD(synthetic_root, "capsule", "test", image_size=SIZE)
    assert len(test) == COUNTS["n_test_good"] + COUNTS["n_test_defect"] * len(DEFECT_KINDS)
    for i in (0, len(test) - 1):
        s = test[i]
        assert set(s) == {"image", "mask", "label", "defect", "path"}
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, SIZE, SIZE)
        assert 0 <= s["image"].min() and s["image"].max() <= 1 and s["image"].std() > 0.01
        assert s["mask"].dtype == torch.float32 and s["mask"].shape == (1, SIZE, SIZE)
        assert isinstance(s["label"], int) and s["label"] == int(s["defect"] != "good")
        assert Path(s["path"]).is_file()


def test_samples_are_sorted_and_attributes_consistent(synthetic_root):
    test = MVTecAD(synthetic_root, "stone", "test", image_size=SIZE)
    keys = [(s.defect, s.path.name) for s in test.samples]
    assert keys == sorted(keys)
    assert test.labels == [s.label for s in test.samples]
    assert all((s.mask_path is None) == (s.label == 0) for s in test.samples)
    assert test.has_masks and test.split == "test" and test.category == "stone" and test.image_size == SIZE
    assert repr(test).endswith(f"{len(test)} images (2 good, 10 defective in 5 kinds)")
    train = MVTecAD(synthetic_root, "stone", "train", image_size=SIZE)
    assert len(train) == COUNTS["n_train"] and set(train.labels) == {0} and train.defects == []


@pytest.mark.parametrize("size", [40, 100])
def test_masks_stay_exactly_binary_after_resizing(synthetic_root, size):
    test = MVTecAD(synthetic_root, "fabric", "test", image_size=size)
    for i in (i for i, label in enumerate(test.labels) if label):
        s = test[i]
        assert s["image"].shape == (3, size, size)
        assert set(s["mask"].unique().tolist()) == {0.0, 1.0}


def test_images_at_native_size_are_not_resampled(synthetic_root):
    s = MVTecAD(synthetic_root, "washer", "train", image_size=SIZE)[0]
    pixels = np.asarray(Image.open(s["path"]).convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(s["image"], torch.from_numpy(pixels).permute(2, 0, 1))


def test_images_are_resized_with_antialiasing(layout):
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a non-antialiased 2x shrink would alias to 0 or 1
    _save(layout / "widget" / "train" / "good" / "000.png", stripes)
    image = MVTecAD(layout, "widget", "train", image_size=32)[0]["image"]
    assert abs(image.mean().item() - 0.5) < 0.05 and image.std() < 0.1


# ---------------------------------------------------------------------------------------------
# MVTecAD: file formats
# ---------------------------------------------------------------------------------------------


def _only_train_image(root: Path, image: Image.Image, name: str = "000.png") -> torch.Tensor:
    good = root / "widget" / "train" / "good"
    for p in good.iterdir():
        p.unlink()
    _save(good / name, image)
    return MVTecAD(root, "widget", "train", image_size=image.size[0])[0]["image"]


def test_grey_images_become_three_equal_channels(layout):
    grey = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    image = _only_train_image(layout, Image.fromarray(grey))
    assert image.shape == (3, 32, 32)
    for channel in image:
        assert torch.allclose(channel, torch.from_numpy(grey / 255).float())


def test_sixteen_bit_images_are_scaled_not_clipped(layout):
    grey16 = np.full((32, 32), 32768, np.uint16)
    grey16[0, 0] = 65535
    image = _only_train_image(layout, Image.fromarray(grey16))
    assert Image.open(next((layout / "widget" / "train" / "good").iterdir())).mode.startswith("I")
    assert abs(image[0, 5, 5].item() - 0.5) < 1e-3 and image.max().item() == pytest.approx(1.0)
    assert torch.equal(image[0], image[2])


def test_sixteen_bit_images_are_scaled_when_resized(layout):
    _save(
        layout / "widget" / "train" / "good" / "000.png", Image.fromarray(np.full((48, 48), 16384, np.uint16))
    )
    image = MVTecAD(layout, "widget", "train", image_size=16)[0]["image"]
    assert torch.allclose(image, torch.full_like(image, 0.25), atol=1e-3)


def test_rgba_images_keep_their_colours(layout):
    rgba = np.concatenate([_rgb(seed=3), np.full((32, 32, 1), 10, np.uint8)], axis=2)
    image = _only_train_image(layout, Image.fromarray(rgba))
    assert torch.allclose(image, torch.from_numpy(rgba[..., :3] / 255).float().permute(2, 0, 1))


def test_palette_images_use_their_palette(layout):
    palette = Image.new("P", (32, 32))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putdata([1] * (32 * 32))
    image = _only_train_image(layout, palette)
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 100, 50]) / 255)


def _sideways(array: np.ndarray, path: Path) -> None:
    """Save ``array`` as a camera file whose EXIF orientation 6 says: turn 90° clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, exif=exif)


def test_exif_orientation_is_applied_to_images_and_sizes(layout):
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:8, :16] = 255  # a block in the top-left corner: top-right once upright
    (layout / "widget" / "train" / "good" / "001.png").unlink()
    (layout / "widget" / "train" / "good" / "000.png").unlink()
    _sideways(stored, layout / "widget" / "train" / "good" / "000.jpg")
    image = MVTecAD(layout, "widget", "train", image_size=32)[0]["image"]
    upright = np.rot90(stored, k=-1)  # clockwise, as a viewer shows it
    expected = torch.from_numpy(upright / 255).float().permute(2, 0, 1)
    assert (image - expected).abs().mean() < 0.02  # JPEG is lossy
    wide = layout / "wide.jpg"
    _sideways(np.zeros((16, 48, 3), np.uint8), wide)
    assert _io.read_size(wide) == (16, 48)


@pytest.mark.parametrize("name", ["000.jpg", "000.JPEG", "000.bmp", "000.tif"])
def test_other_image_formats_are_read(layout, name):
    image = _only_train_image(layout, Image.fromarray(_rgb()), name)
    assert image.shape == (3, 32, 32)


def test_other_files_are_ignored(layout):
    good = layout / "widget" / "train" / "good"
    (good / "notes.txt").write_text("not an image")
    (good / ".DS_Store").write_bytes(b"\0")
    assert [s.path.name for s in MVTecAD(layout, "widget", "train", image_size=32).samples] == [
        "000.png",
        "001.png",
    ]


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "I;16", "1"])
def test_masks_of_any_mode_become_binary(layout, mode):
    binary = np.zeros((32, 32), bool)
    binary[3:9, 20:23] = True
    if mode == "P":
        mask = Image.new("P", (32, 32))
        mask.putpalette([90, 90, 90, 0, 0, 0] + [0] * 762)  # index 0 is grey, index 1 black
        mask.putdata([0 if b else 1 for b in binary.ravel()])
    elif mode == "I;16":
        mask = Image.fromarray(binary.astype(np.uint16) * 65535)
    else:
        mask = Image.fromarray(binary.astype(np.uint8) * 255).convert(mode)
    _save(layout / "widget" / "ground_truth" / "dent" / "000_mask.png", mask)
    test = MVTecAD(layout, "widget", "test", image_size=32)
    loaded = test[test.labels.index(1)]["mask"][0]
    assert torch.equal(loaded, torch.from_numpy(binary).float())


@pytest.fixture
def warnings_reset(monkeypatch):
    """Forget which once-per-process warnings were given, so each test sees its own."""
    monkeypatch.setattr(_io, "_WARNED", set())


def _defect_mask(layout: Path, mask: Image.Image, name: str = "000_mask.png") -> torch.Tensor:
    gt = layout / "widget" / "ground_truth" / "dent"
    for p in gt.iterdir():
        p.unlink()
    _save(gt / name, mask)
    test = MVTecAD(layout, "widget", "test", image_size=mask.size[0])
    return test[test.labels.index(1)]["mask"][0]


def test_jpeg_masks_are_thresholded_at_half_white_with_a_warning(layout, warnings_reset):
    _save(layout / "widget" / "test" / "dent" / "000.png", _rgb(64))
    square = np.zeros((64, 64), np.uint8)
    square[21:31, 17:27] = 255  # a 100-pixel defect
    path = layout / "widget" / "ground_truth" / "dent" / "000_mask.jpg"
    with pytest.warns(UserWarning, match="save masks as PNG") as caught:
        mask = _defect_mask(layout, Image.fromarray(square), path.name)
    assert str(path) in str(caught[0].message)
    assert (np.asarray(Image.open(path)) > 0).sum() > 150, "PIL's JPEG no longer rings: the test proves nothing"
    assert mask.sum() == 100 and torch.equal(mask, torch.from_numpy(square > 0).float())


def test_a_zero_one_mask_saved_as_jpeg_is_refused(layout, warnings_reset):
    binary = np.zeros((32, 32), np.uint8)
    binary[3:9, 20:23] = 1
    message = _raises_naming(layout, _defect_mask, layout, Image.fromarray(binary), "000_mask.jpg")
    assert "save the mask losslessly as PNG" in message


def test_float_tiffs_in_eight_bit_range_are_scaled_with_a_warning(layout, warnings_reset):
    values = np.random.default_rng(0).uniform(0, 255, (32, 32)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"read as 0\.\.255") as caught:
        image = _only_train_image(layout, Image.fromarray(values), "000.tif")
    assert "000.tif" in str(caught[0].message)
    torch.testing.assert_close(image[0], torch.from_numpy(values / 255))
    assert 0.3 < image.mean() < 0.7, "read as mostly white"


def test_float_tiffs_in_unit_range_are_read_as_they_are(layout, warnings_reset, recwarn):
    values = np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32)
    image = _only_train_image(layout, Image.fromarray(values), "000.tif")
    torch.testing.assert_close(image[1], torch.from_numpy(values))
    assert not recwarn.list


def test_eight_bit_data_in_a_sixteen_bit_file_warns(layout, warnings_reset):
    with pytest.warns(UserWarning, match="save it as an 8-bit image"):
        image = _only_train_image(layout, Image.fromarray(np.full((32, 32), 200, np.uint16)), "000.tif")
    assert image.max() < 0.01  # the documented reading: 16-bit data, so almost black


@pytest.mark.parametrize("values, mode", [
    (np.full((32, 32), -3.0, np.float32), "F"),
    (np.full((32, 32), np.nan, np.float32), "F"),
    (np.full((32, 32), 1e6, np.float32), "F"),
    (np.full((32, 32), 70_000, np.int32), "I"),
])
def test_out_of_range_high_bit_depth_images_are_refused(layout, values, mode):
    assert Image.fromarray(values).mode == mode
    message = _raises_naming(layout, _only_train_image, layout, Image.fromarray(values), "000.tif")
    assert "re-export" in message


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (40, 12)])
def test_tiny_images_are_refused(layout, size):
    good = layout / "widget" / "train" / "good"
    _save(good / "000.png", Image.new("RGB", size))
    train = MVTecAD(layout, "widget", "train", image_size=32)
    assert f"{size[0]}×{size[1]}" in _raises_naming(good / "000.png", train.__getitem__, 0)


def test_elongated_images_warn_that_they_are_stretched(layout, warnings_reset):
    good = layout / "widget" / "train" / "good"
    _save(good / "000.png", Image.new("RGB", (1000, 16)))
    train = MVTecAD(layout, "widget", "train", image_size=32)
    with pytest.warns(UserWarning, match="1000×16 pixels: it is stretched") as caught:
        assert train[0]["image"].shape == (3, 32, 32)
    assert str(good / "000.png") in str(caught[0].message)


def test_visa_style_mask_names_are_accepted(layout):
    gt = layout / "widget" / "ground_truth" / "dent"
    (gt / "000_mask.png").rename(gt / "000.png")
    test = MVTecAD(layout, "widget", "test", image_size=32)
    assert test.samples[test.labels.index(1)].mask_path == gt / "000.png"


def test_masks_downscale_with_nearest(layout):
    big = layout / "widget" / "test" / "dent" / "000.png"
    _save(big, _rgb(128))
    line = np.zeros((128, 128), np.uint8)
    line[40:42, 10:100] = 255  # 2 px thick at 128 px: survives a 2x shrink only if not averaged away
    _save(layout / "widget" / "ground_truth" / "dent" / "000_mask.png", line)
    test = MVTecAD(layout, "widget", "test", image_size=64)
    mask = test[test.labels.index(1)]["mask"][0]
    assert set(mask.unique().tolist()) == {0.0, 1.0} and mask.sum() == 45


# ---------------------------------------------------------------------------------------------
# MVTecAD: every bad input is an AdlearnError naming the path
# ---------------------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    _raises_naming(tmp_path / "nowhere", MVTecAD, tmp_path / "nowhere", "widget")


def test_root_and_category_of_the_wrong_kind(layout):
    (layout / "a_file").write_text("")
    assert "is a file, not a folder" in _raises_naming(layout / "a_file", MVTecAD, layout / "a_file", "widget")
    with pytest.raises(AdlearnError, match="data root must be a folder path"):
        MVTecAD(None, "widget")
    assert "['widget']" in _raises_naming(layout, MVTecAD, layout, None)


def test_out_of_range_index_is_an_index_error_so_iteration_ends(layout):
    train = MVTecAD(layout, "widget", "train", image_size=32)
    with pytest.raises(IndexError, match="index 2 is out of range for the 2 train images"):
        train[2]
    assert len(list(train)) == 2 and torch.equal(train[-1]["image"], train[1]["image"])


def test_synthetic_root_that_is_a_file_or_below_one(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    for root in (blocker, blocker / "data"):
        _raises_naming(blocker, make_synthetic, root, categories=["fabric"], image_size=SIZE, **COUNTS)
    assert blocker.read_text() == "mine"


def test_missing_category_lists_existing_ones(layout):
    message = _raises_naming(layout / "gadget", MVTecAD, layout, "gadget")
    assert "widget" in message


def test_category_folder_passed_as_root_gets_a_hint(layout):
    message = _raises_naming(layout / "widget", MVTecAD, layout / "widget", "widget")
    assert "parent" in message


def test_missing_split_folder(layout):
    for p in sorted((layout / "widget" / "test").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (layout / "widget" / "test").rmdir()
    _raises_naming(layout / "widget" / "test", MVTecAD, layout, "widget", "test")


def test_empty_training_folder(layout):
    good = layout / "widget" / "train" / "good"
    for p in good.iterdir():
        p.unlink()
    message = _raises_naming(good, MVTecAD, layout, "widget", "train")
    assert "nominal" in message


def test_defective_images_in_train_are_refused(layout):
    _save(layout / "widget" / "train" / "dent" / "000.png", _rgb())
    _raises_naming(layout / "widget" / "train", MVTecAD, layout, "widget", "train")


def test_test_split_without_images(layout):
    for p in (layout / "widget" / "test").rglob("*.png"):
        p.unlink()
    _raises_naming(layout / "widget" / "test", MVTecAD, layout, "widget", "test")


def test_missing_mask_names_the_expected_file(layout):
    expected = layout / "widget" / "ground_truth" / "dent" / "000_mask.png"
    expected.unlink()
    _raises_naming(expected, MVTecAD, layout, "widget", "test")


def test_mask_of_the_wrong_size(layout):
    mask = layout / "widget" / "ground_truth" / "dent" / "000_mask.png"
    _save(mask, np.zeros((16, 16), np.uint8))
    _raises_naming(mask, MVTecAD, layout, "widget", "test")


def test_corrupt_image_fails_when_read_naming_the_file(layout):
    broken = layout / "widget" / "test" / "good" / "000.png"
    broken.write_bytes(b"\x89PNG not really")
    test = MVTecAD(layout, "widget", "test", image_size=32)  # construction reads no good-image pixels
    _raises_naming(
        broken, test.__getitem__, test.samples.index(next(s for s in test.samples if s.path == broken))
    )


def test_truncated_mask_fails_when_read_naming_the_file(layout):
    mask = layout / "widget" / "ground_truth" / "dent" / "000_mask.png"
    mask.write_bytes(mask.read_bytes()[:60])  # the header survives, the pixels do not
    test = MVTecAD(layout, "widget", "test", image_size=32)
    _raises_naming(mask, test.__getitem__, test.labels.index(1))


@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_wrong_split(layout, split):
    with pytest.raises(AdlearnError, match="'train' or 'test'"):
        MVTecAD(layout, "widget", split)


# ---------------------------------------------------------------------------------------------
# ELPV
# ---------------------------------------------------------------------------------------------

needs_elpv = pytest.mark.skipif(
    importlib.util.find_spec("elpv_dataset") is None,
    reason="elpv-dataset not installed (pip install elpv-dataset)",
)


@needs_elpv
def test_elpv_split_is_disjoint_labelled_and_maskless():
    train = ELPV("train", image_size=SIZE, n_train=30, n_test=40)
    test = ELPV("test", image_size=SIZE, n_train=30, n_test=40)
    assert len(train) == 30 and len(test) == 40
    assert not {c.path for c in train.samples} & {c.path for c in test.samples}
    assert set(train.labels) == {0} and set(test.labels) == {0, 1}
    assert all(c.probability == 0 or c.probability >= 2 / 3 - 1e-6 for c in test.samples)
    assert not train.has_masks and not test.has_masks
    s = test[test.labels.index(1)]
    assert set(s) == {"image", "label", "defect", "probability", "path"}
    assert s["image"].shape == (3, SIZE, SIZE) and s["image"].dtype == torch.float32
    assert s["label"] == 1 and s["defect"] == "defective" and s["probability"] >= 2 / 3 - 1e-6
    assert torch.equal(s["image"][0], s["image"][1])  # grey cells


@needs_elpv
def test_elpv_default_split_uses_every_cell_once():
    train, test = ELPV("train"), ELPV("test")
    assert not {c.path for c in train.samples} & {c.path for c in test.samples}
    n_nominal = len(train) + test.labels.count(0)
    assert len(train) == n_nominal // 2 and test.labels.count(1) > 500


@needs_elpv
def test_elpv_split_depends_on_the_seed_only():
    a = ELPV("test", n_train=50, n_test=60, seed=0).samples
    assert ELPV("test", n_train=50, n_test=60, seed=0).samples == a
    assert ELPV("test", n_train=50, n_test=60, seed=1).samples != a


@needs_elpv
def test_elpv_threshold_and_cell_type():
    strict = ELPV("test", anomalous_min_probability=1.0, cell_type="mono")
    assert all(c.cell_type == "mono" for c in strict.samples)
    assert all(c.probability in (0.0, 1.0) for c in strict.samples)


@needs_elpv
@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"n_train": 0}, "n_train"), ({"n_train": 10_000}, "n_train"), ({"n_test": 1}, "n_test"),
     ({"cell_type": "thin-film"}, "cell_type"),
     ({"anomalous_min_probability": 0}, "anomalous_min_probability"),
     ({"split": "val"}, "split")],
)  # fmt: skip
def test_elpv_rejects_bad_arguments(kwargs, fragment):
    with pytest.raises(AdlearnError, match=fragment):
        ELPV(**kwargs)


def test_elpv_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(AdlearnError, match="pip install elpv-dataset"):
        ELPV("train")


# ---------------------------------------------------------------------------------------------
# download_mvtec (offline pieces only)
# ---------------------------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, bytes], mode: str = "w:xz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _bottle_archive(folder: Path) -> Path:
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 255
    return _tar(
        folder / "bottle.tar.xz",
        {
            "bottle/train/good/000.png": _png_bytes(_rgb()),
            "bottle/test/good/000.png": _png_bytes(_rgb(seed=1)),
            "bottle/test/broken/000.png": _png_bytes(_rgb(seed=2)),
            "bottle/ground_truth/broken/000_mask.png": _png_bytes(mask),
        },
    )


def test_download_from_a_local_url_verifies_and_extracts(tmp_path):
    archive = _bottle_archive(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / f"{_as_pid(temp_prefix('download'), _dead_pid())}bottle.tar.xz").write_bytes(b"half")  # a killed run's
    kwargs = {"base_url": f"file://{tmp_path}/", "archives": {"bottle": "bottle.tar.xz"}}
    assert download_mvtec(root, ["bottle"], sha256={"bottle": digest}, **kwargs) == root
    assert len(MVTecAD(root, "bottle", "test", image_size=32)) == 2
    assert sorted(p.name for p in root.iterdir()) == ["bottle"], "archive or temporary files left behind"
    archive.unlink()  # present categories are skipped: no download is attempted
    download_mvtec(root, ["bottle"], **kwargs)


def test_download_with_a_wrong_checksum_fails_and_cleans_up(tmp_path):
    _bottle_archive(tmp_path)
    root = tmp_path / "mvtec"
    kwargs = {"base_url": f"file://{tmp_path}/", "archives": {"bottle": "bottle.tar.xz"}}
    with pytest.raises(AdlearnError, match="checksum mismatch"):
        download_mvtec(root, ["bottle"], sha256={"bottle": "0" * 64}, **kwargs)
    assert list(root.iterdir()) == []


def test_download_without_a_known_checksum_warns_with_the_digest(tmp_path):
    archive = _bottle_archive(tmp_path)
    with pytest.warns(UserWarning, match=hashlib.sha256(archive.read_bytes()).hexdigest()):
        download_mvtec(
            tmp_path / "mvtec",
            ["bottle"],
            base_url=f"file://{tmp_path}/",
            archives={"bottle": "bottle.tar.xz"},
        )


def test_download_failure_says_to_download_by_hand(tmp_path):
    root = tmp_path / "mvtec"
    message = _raises_naming(
        tmp_path / "missing", download_mvtec, root, ["bottle"], base_url=f"file://{tmp_path}/missing/"
    )
    assert "mvtec.com/company/research/datasets/mvtec-ad" in message
    assert list(root.iterdir()) == []


def test_download_rejects_unknown_categories(tmp_path):
    with pytest.raises(AdlearnError, match="bottle"):
        download_mvtec(tmp_path, ["fabric"])


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "bottle/../../evil.txt"])
def test_extraction_refuses_path_traversal(tmp_path, name):
    archive = _tar(tmp_path / "evil.tar", {"bottle/ok.txt": b"ok", name: b"pwned"}, mode="w")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(AdlearnError, match="refusing"):
        mvtec._extract_categories(archive, root, ["bottle"])
    assert list(root.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_extraction_refuses_links(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("bottle/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(AdlearnError, match="refusing"):
        mvtec._extract_categories(archive, tmp_path, ["bottle"])


def test_extraction_requires_the_requested_category(tmp_path):
    archive = _tar(tmp_path / "other.tar", {"cable/x.txt": b"x"}, mode="w")
    with pytest.raises(AdlearnError, match="bottle"):
        mvtec._extract_categories(archive, tmp_path, ["bottle"])
