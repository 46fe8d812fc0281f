"""Tests of adlearn.metrics against sklearn, brute force and curves computed by hand.

The PRO cases follow the official MVTec AD protocol (reference/methods.md §0.1). The toy ramps
rebuild the cases of anomalib's ``tests/unit/metrics/aupro/test_aupro.py`` (methods.md §7.5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from skimage import measure
from torch.utils.data import DataLoader, Dataset, TensorDataset

from adlearn import metrics
from adlearn.errors import AdlearnError
from adlearn.metrics import (
    aupro, aupro_rd4ad, evaluate, evaluate_maps, f1_max, image_auroc, image_f1_max, pixel_auroc,
    pixel_f1_max, pro_curve, roc_curve,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[None, 7], ids=["one-chunk", "chunk=7"])
def chunk(request, monkeypatch):
    """Run a test with the default chunk size and with a tiny one, so ties straddle chunk borders."""
    if request.param is not None:
        monkeypatch.setattr(metrics, "CHUNK", request.param)


def blobs(rng, n=8, size=24, p_anomalous=0.5):
    """Masks [n,size,size] with 1-3 random rectangles on a fraction ``p_anomalous`` of the images."""
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if rng.random() < p_anomalous:
            for _ in range(rng.integers(1, 4)):
                r, c = rng.integers(0, size - 4, 2)
                h, w = rng.integers(1, 6, 2)
                masks[i, r : r + h, c : c + w] = True
    masks[0, 2:5, 2:5] = True  # at least one region
    return masks


# --- ROC AUC -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(chunk, ties):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    labels = rng.random(500) < 0.3
    scores += labels  # informative, but far from perfect
    if ties:
        scores = np.round(scores, 1)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_matches_sklearn_on_a_million_tied_pixels():
    rng = np.random.default_rng(1)
    masks = rng.random((16, 250, 250)) < 0.05
    maps = (rng.random(masks.shape, dtype=np.float32) + 0.3 * masks).astype(np.float32)
    maps = np.round(maps * 1000).astype(np.float32) / 1000  # ~1,300 distinct values: many ties
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-6)
    as_tensors = torch.from_numpy(maps), torch.from_numpy(masks).float()
    assert pixel_auroc(*as_tensors) == pytest.approx(expected, abs=1e-6)


def test_inverted_scores_give_auroc_below_half_never_flipped():
    rng = np.random.default_rng(2)
    labels = np.arange(100) % 2
    scores = rng.normal(size=100) + 2 * labels
    good = image_auroc(scores, labels)
    assert good > 0.8
    assert image_auroc(-scores, labels) == pytest.approx(1 - good)
    assert image_auroc(-scores, labels) < 0.5


def test_all_tied_scores_give_half():
    assert image_auroc(np.zeros(10), np.arange(10) % 2) == 0.5


def test_roc_curve_matches_sklearn(chunk):
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=300), 1)
    labels = rng.random(300) < 0.4
    fpr, tpr, thresholds = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thresholds[1:], sk_thresholds[1:])
    assert thresholds[0] == np.inf


# --- F1-max ------------------------------------------------------------------------------------
def brute_force_f1_max(scores, labels):
    best = 0.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = np.sum(predicted & labels)
        best = max(best, 2 * tp / (predicted.sum() + labels.sum()))
    return best


def test_f1_max_matches_brute_force(chunk):
    rng = np.random.default_rng(4)
    labels = rng.random(400) < 0.2
    scores = np.round(rng.normal(size=400) + labels, 1)
    expected = brute_force_f1_max(scores, labels)
    assert f1_max(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert image_f1_max(scores, labels) == pytest.approx(expected, abs=1e-12)
    maps, masks = scores.reshape(4, 10, 10), labels.reshape(4, 10, 10)
    assert pixel_f1_max(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_f1_max_of_a_perfect_score_is_one():
    assert image_f1_max([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0


# --- PRO: curves computed by hand --------------------------------------------------------------
def test_pro_curve_by_hand_two_regions_of_different_sizes(chunk):
    # region A: 3 pixels (top-left L), region B: 1 pixel (bottom-right); 12 anomaly-free pixels
    masks = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    maps = np.array([[0.9, 0.5, 0.1, 0.1], [0.3, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.6, 0.8]])
    fpr, pro = pro_curve(maps, masks)
    # thresholds 0.9 (A), 0.8 (B), 0.6 (ok), 0.5 (A), 0.3 (A), 0.2 (ok), 0.1 (ten ok pixels, tied)
    # each pixel of A adds 1/(3*2), B adds 1/(1*2), each ok pixel 1/12 to the FPR
    expected_fpr = [0, 0, 0, 1 / 12, 1 / 12, 1 / 12, 2 / 12, 1]
    expected_pro = [0, 1 / 6, 2 / 3, 2 / 3, 5 / 6, 1, 1, 1]
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, expected_pro, atol=1e-12)
    # trapezoid up to 0.3: 2/3 * 1/12 + 1 * (2/12 - 1/12) + 1 * (0.3 - 2/12), then / 0.3
    limit = Fraction(3, 10)
    expected = (Fraction(2, 3) * Fraction(1, 12) + Fraction(1, 12) + limit - Fraction(2, 12)) / limit
    assert aupro(maps, masks) == pytest.approx(float(expected), abs=1e-12)


def test_interpolation_at_the_fpr_limit(chunk):
    # 10 ok pixels, one region of 2; ties put the curve through (0,0), (0.2,0.5), (0.4,1), (1,1)
    masks = np.zeros((3, 4), dtype=bool)
    masks[0, :2] = True
    maps = np.full((3, 4), 0.1)
    maps[0, :2] = [0.9, 0.8]
    maps[1, :2] = 0.9
    maps[1, 2:] = 0.8
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 0.2, 0.4, 1], atol=1e-12)
    np.testing.assert_allclose(pro, [0, 0.5, 1, 1], atol=1e-12)
    # 0.3 lies between 0.2 and 0.4, where the curve is 0.75: (0.2*0.5/2 + 0.1*(0.5+0.75)/2) / 0.3
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx((0.05 + 0.0625) / 0.3, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=0.2) == pytest.approx(0.05 / 0.2, abs=1e-12)  # on a point
    assert aupro(maps, masks, fpr_limit=0.5) == pytest.approx((0.05 + 0.15 + 0.1) / 0.5, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.05 + 0.15 + 0.6, abs=1e-12)


def test_regions_are_8_connected():
    # a diagonal pair is ONE region of 2 pixels; with (3,3) as a second region there are 2, not 3
    masks = np.zeros((4, 4), dtype=bool)
    masks[0, 0] = masks[1, 1] = masks[3, 3] = True
    maps = np.zeros((4, 4))
    maps[0, 0] = 1.0
    fpr, pro = pro_curve(maps, masks)
    assert (fpr[1], pro[1]) == (0.0, pytest.approx(1 / 4))  # 1/(|region| * regions) = 1/(2*2); 4-conn: 1/3


def test_pro_averages_over_all_regions_of_the_set_not_per_image():
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, :3, :3] = True  # image 0: one region
    masks[1, 0, 0] = masks[1, 0, 5] = masks[1, 5, 0] = True  # image 1: three regions
    maps = np.zeros((2, 6, 6))
    maps[0, :3, :3] = 1.0  # image 0's region found first, nothing of image 1
    fpr, pro = pro_curve(maps, masks)
    assert pro[1] == pytest.approx(1 / 4)  # mean over 4 regions; a mean of image means would say 1/2


def test_anomaly_free_images_add_to_the_fpr():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 0.5
    maps[1] = 1.0  # an anomaly-free image scored above the defect
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr[:3], [0, 16 / 31, 16 / 31])
    np.testing.assert_allclose(pro[:3], [0, 0, 1])


def brute_force_pro_curve(maps, masks):
    """One point per distinct threshold: FPR over ok pixels, PRO = mean over all regions of the set."""
    regions = []
    for m, mask in zip(maps, masks):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [m[labelled == k] for k in range(1, n + 1)]
    ok = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        points.append((np.mean(ok >= t), np.mean([np.mean(r >= t) for r in regions])))
    return np.array(points).T


def official_trapezoid(x, y, x_max):
    """mvtec_ad_evaluation's generic_util.trapezoid, restated."""
    inside = x <= x_max
    area = np.sum((x[inside][1:] - x[inside][:-1]) * (y[inside][1:] + y[inside][:-1])) / 2
    if x_max not in x:
        i = np.searchsorted(x, x_max, side="right")
        y_max = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        area += (x_max - x[i - 1]) * (y[i - 1] + y_max) / 2
    return area


def test_pro_curve_and_aupro_match_brute_force_on_random_data(chunk):
    rng = np.random.default_rng(5)
    masks = blobs(rng)
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)  # ties within and across images
    fpr, pro = pro_curve(maps, masks)
    expected_fpr, expected_pro = brute_force_pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, expected_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, expected_pro, atol=1e-12)
    for limit in (0.05, 0.3, 1.0):
        expected = official_trapezoid(expected_fpr, expected_pro, limit) / limit
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


# --- PRO: the anomalib toy cases and the landmarks ----------------------------------------------
RAMP = (np.arange(2800) / 2800).reshape(400, 7)  # scores rise along each row, then down the image
ONE_STRIPE = np.zeros((400, 7), dtype=bool)
ONE_STRIPE[:, 3] = True
THREE_STRIPES = np.zeros((400, 7), dtype=bool)
THREE_STRIPES[:, [1, 3, 5]] = True


@pytest.mark.parametrize(
    "maps, masks",
    [
        (RAMP, ONE_STRIPE),
        (RAMP, THREE_STRIPES),
        (np.stack([RAMP, RAMP]), np.stack([ONE_STRIPE, THREE_STRIPES])),
    ],
    ids=["one-region", "three-regions", "both-images"],
)
def test_anomalib_toy_cases(maps, masks):
    # every row adds as much FPR as PRO, so the curve hugs the diagonal: AU-PRO(1/3) = (1/3)^2/2 / (1/3)
    assert aupro(maps, masks, fpr_limit=1 / 3) == pytest.approx(1 / 6, abs=1e-5)


def test_perfect_inverted_and_random_maps():
    rng = np.random.default_rng(6)
    masks = blobs(rng, n=40, size=64)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)
    # random scores: every region's overlap ~ FPR, so AU-PRO ~ fpr_limit / 2. With 300 regions of
    # 8x8 pixels its standard deviation is ~0.003
    masks = np.zeros((100, 64, 64), dtype=bool)
    for i, (r, c) in enumerate(rng.integers(0, 30, (100, 2))):
        for dr, dc in [(0, 0), (20, 0), (0, 20)]:
            masks[i, r + dr : r + dr + 8, c + dc : c + dc + 8] = True
    random_maps = rng.random(masks.shape, dtype=np.float32)
    assert aupro(random_maps, masks) == pytest.approx(0.15, abs=0.01)
    assert aupro(random_maps, masks, fpr_limit=0.1) == pytest.approx(0.05, abs=0.01)


# --- the RD4AD / DDAD / DiAD variant ---------------------------------------------------------------
def ddad_pixel_pro(masks, amaps, num_th=200):
    """DDAD's metrics.py::Metric.pixel_pro (after RD4AD test.py), restated with lists instead of pandas."""
    amaps = ((amaps - amaps.min()) / (amaps.max() - amaps.min())).astype(np.float32)
    delta = (amaps.max() - amaps.min()) / num_th
    pros, fprs = [], []
    # [:num_th]: float32 arange can add a 201st threshold just below the max; adlearn uses exactly 200
    for th in np.arange(amaps.min(), amaps.max(), delta)[:num_th]:
        binary = amaps > th
        per_region = [
            binary[i][r.coords[:, 0], r.coords[:, 1]].sum() / r.area
            for i, mask in enumerate(masks) for r in measure.regionprops(measure.label(mask))
        ]
        pros.append(np.mean(per_region))
        fprs.append(np.logical_and(~masks, binary).sum() / (~masks).sum())
    fprs, pros = np.array(fprs), np.array(pros)
    kept = fprs < 0.3
    return sk_auc(fprs[kept] / fprs[kept].max(), pros[kept])


def test_rd4ad_variant_matches_ddad_code():
    rng = np.random.default_rng(7)
    masks = blobs(rng, n=12, size=32, p_anomalous=0.8)
    assert sum(measure.label(mask).max() for mask in masks) > 10  # region ids * 201 bins overflow uint8
    maps = ndimage.gaussian_filter(rng.normal(size=masks.shape) + masks, (0, 2, 2))
    assert aupro_rd4ad(maps, masks) == pytest.approx(ddad_pixel_pro(masks, maps), abs=1e-6)


def test_rd4ad_variant_cannot_tell_apart():
    """Two detectors that the 200-threshold grid sees alike and the exact curve does not.

    A step of the grid, (0.500, 0.505], holds 24 % of the ok pixels and the whole defect. When the
    defect scores above those ok pixels the official AU-PRO is 5/6; when below, 1/30. The grid only
    sees FPR 0.05 (PRO 0) and FPR 0.29 (PRO 1) and says 12/29 for both: a 12x inflation of the second.
    """
    masks = np.zeros((100, 100), dtype=bool)
    masks[:10, :10] = True  # one region of 100 pixels, 9,900 ok pixels
    maps = np.full((100, 100), 0.1)
    ok = np.flatnonzero(~masks.ravel())
    maps.flat[ok[:495]] = 1.0  # 5 % of the ok pixels above everything
    maps.flat[ok[495:2871]] = 0.5035  # 24 % in the grid step (0.500, 0.505]
    maps.flat[ok[-1]] = 0.0
    for defect, official in [(0.504, 5 / 6), (0.501, 1 / 30)]:
        maps[masks] = defect
        assert aupro(maps, masks) == pytest.approx(official, abs=1e-12)
        assert aupro_rd4ad(maps, masks) == pytest.approx(12 / 29, abs=1e-12)
        assert ddad_pixel_pro(masks[None], maps[None]) == pytest.approx(12 / 29, abs=1e-6)


# --- degenerate inputs -------------------------------------------------------------------------
GOOD_MAPS = np.random.default_rng(8).random((2, 8, 8))
GOOD_MASKS = np.zeros((2, 8, 8), dtype=bool)
GOOD_MASKS[0, :2, :2] = True
NAN_MAPS = GOOD_MAPS.copy()
NAN_MAPS[1, 0, :2] = np.nan
PIXEL_FUNCTIONS = [pixel_auroc, pixel_f1_max, aupro, aupro_rd4ad, pro_curve]


@pytest.mark.parametrize("function", [image_auroc, image_f1_max, f1_max, roc_curve])
@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]], ids=["all-nominal", "all-anomalous"])
def test_one_image_class_raises(function, labels):
    with pytest.raises(AdlearnError, match="needs both nominal and anomalous"):
        function([0.1, 0.5, 0.9], labels)


def test_image_auroc_message():
    message = "image AUROC needs both nominal and anomalous test images, got 3 nominal"
    with pytest.raises(AdlearnError, match=message):
        image_auroc([0.1, 0.5, 0.9], [0, 0, 0])


@pytest.mark.parametrize("function", PIXEL_FUNCTIONS)
@pytest.mark.parametrize(
    "maps, masks, message",
    [
        (GOOD_MAPS, np.zeros((2, 8, 8)), "anomalous pixels, got 128 nominal and 0 anomalous"),
        (GOOD_MAPS, np.ones((2, 8, 8)), "needs both nominal and anomalous pixels, got 0 nominal"),
        (GOOD_MAPS, GOOD_MASKS[:, :4], r"shape \(2, 8, 8\) but masks have shape \(2, 4, 8\)"),
        (GOOD_MAPS, GOOD_MASKS * 0.5, "must be binary"),
        (NAN_MAPS, GOOD_MASKS, "contain 2 NaN or infinite values"),
        (np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), "empty"),
        (GOOD_MAPS[..., None], GOOD_MASKS[..., None], "must have shape"),
    ],
    ids=["no-anomalous-pixel", "no-ok-pixel", "shapes", "not-binary", "nan", "empty", "5-d"],
)
def test_degenerate_pixel_inputs_raise(function, maps, masks, message):
    with pytest.raises(AdlearnError, match=message):
        function(maps, masks)


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, np.inf], [0, 1], "1 NaN or infinite"),
        ([0.1, 0.2, 0.3], [0, 1], r"shape \(3,\) but image labels have shape \(2,\)"),
        ([], [], "empty"),
        ([0.1, 0.2], [0, 2], "must be binary"),
        (np.zeros((2, 2)), np.eye(2), "one-dimensional"),
        (["a", "b"], [0, 1], "real numbers"),
    ],
)
def test_degenerate_image_inputs_raise(scores, labels, message):
    with pytest.raises(AdlearnError, match=message):
        image_auroc(scores, labels)


@pytest.mark.parametrize("limit", [0, -0.1, 1.5])
def test_bad_fpr_limit_raises(limit):
    with pytest.raises(AdlearnError, match="fpr_limit"):
        aupro(GOOD_MAPS, GOOD_MASKS, fpr_limit=limit)


def test_rd4ad_variant_raises_where_the_original_gives_nan():
    with pytest.raises(AdlearnError, match="undefined"):
        aupro_rd4ad(GOOD_MASKS.astype(float), GOOD_MASKS)  # every sampled FPR is 0: 0/0 in DDAD's code


# --- evaluate -----------------------------------------------------------------------------------
class TinyDefects(Dataset):
    """Six 16x16 images, three with a bright square in channel 0 that the mask marks."""

    def __init__(self, has_masks=True, mask_value=1.0):
        self.has_masks = has_masks
        self.masks = torch.zeros(6, 1, 16, 16)
        for i, (r, c) in enumerate([(2, 3), (8, 8), (10, 1)]):
            self.masks[3 + i, :, r : r + 4, c : c + 3] = mask_value
        self.images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
        self.images[:, :1] += 0.5 * (self.masks > 0)

    def __len__(self):
        return 6

    def __getitem__(self, i):
        sample = {
            "image": self.images[i], "label": int(i >= 3), "defect": "square" if i >= 3 else "good",
            "path": f"{i}.png",
        }
        if self.has_masks:
            sample["mask"] = self.masks[i]
        return sample


class Oracle:
    """Knows that a defect is bright in channel 0: a perfect detector on TinyDefects."""

    batch_size = 4  # evaluate's default batch size; 6 images leave a partial last batch

    def __init__(self, map_size=None):
        self.map_size = map_size

    def predict(self, images):
        amap = (images[:, 0] >= 0.5).float()
        if self.map_size:
            amap = amap[:, : self.map_size, : self.map_size]
        return SimpleNamespace(score=amap.flatten(1).amax(1), anomaly_map=amap)


PIXEL_KEYS = {"pixel_auroc", "aupro", "pixel_f1_max"}
IMAGE_KEYS = {"image_auroc", "image_f1_max", "predict_ms_per_image", "n_images", "n_anomalous", "resolution"}


def test_evaluate_perfect_oracle():
    result = evaluate(Oracle(), TinyDefects(), progress=False)
    assert set(result) == IMAGE_KEYS | PIXEL_KEYS
    for key in ["image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "aupro"]:
        assert result[key] == pytest.approx(1.0, abs=1e-12), key
    assert (result["n_images"], result["n_anomalous"], result["resolution"]) == (6, 3, 16)
    assert result["predict_ms_per_image"] >= 0
    json.dumps(result)  # plain python numbers


def test_evaluate_without_masks_omits_pixel_keys():
    assert set(evaluate(Oracle(), TinyDefects(has_masks=False), progress=False)) == IMAGE_KEYS
    assert set(evaluate(Oracle(), TinyDefects(), pixel_metrics=False, progress=False)) == IMAGE_KEYS
    with pytest.raises(AdlearnError, match="has no ground-truth masks"):
        evaluate(Oracle(), TinyDefects(has_masks=False), pixel_metrics=True, progress=False)


def test_evaluate_rejects_bad_predictions_and_masks():
    with pytest.raises(AdlearnError, match=r"anomaly_map \(4, 8, 8\)"):
        evaluate(Oracle(map_size=8), TinyDefects(), progress=False)
    with pytest.raises(AdlearnError, match="must be binary"):
        evaluate(Oracle(), TinyDefects(mask_value=0.5), progress=False)


def test_evaluate_accepts_tensor_datasets_and_loaders():
    data = TinyDefects()
    labels = torch.tensor([int(i >= 3) for i in range(6)])
    reference = evaluate(Oracle(), data, progress=False)
    with_masks = evaluate(Oracle(), TensorDataset(data.images, data.masks, labels), progress=False)
    images_only = evaluate(Oracle(), TensorDataset(data.images, labels), progress=False)
    loader = evaluate(Oracle(), DataLoader(data, batch_size=5), progress=False)
    for result, keys in ((with_masks, IMAGE_KEYS | PIXEL_KEYS), (images_only, IMAGE_KEYS), (loader, set(reference))):
        assert set(result) == keys
        assert all(result[k] == reference[k] for k in keys - {"predict_ms_per_image"})
    with pytest.raises(AdlearnError, match="has no ground-truth masks"):
        evaluate(Oracle(), TensorDataset(data.images, labels), pixel_metrics=True, progress=False)


def test_evaluate_needs_a_model():
    with pytest.raises(AdlearnError, match="needs a fitted model with a predict"):
        evaluate("model.pt", TinyDefects(), progress=False)


@pytest.mark.parametrize("dataset, got", [
    (TensorDataset(torch.rand(2, 3, 8, 8)), "a tuple of length 1"),
    ([{"img": torch.rand(3, 8, 8), "label": 0}], "a dict with keys ['img', 'label']"),
    ([torch.rand(3, 8, 8)], "a Tensor"),
])
def test_evaluate_says_which_samples_it_needs(dataset, got):
    with pytest.raises(AdlearnError) as err:
        evaluate(Oracle(), dataset, progress=False)
    assert got in str(err.value) and "TensorDataset(images, masks, labels)" in str(err.value)


def test_evaluate_maps_is_the_metrics_of_its_arrays(chunk):
    rng = np.random.default_rng(9)
    masks = blobs(rng, n=10, size=32)
    maps = rng.random(masks.shape, dtype=np.float32) + masks
    labels = masks.any(axis=(1, 2))
    scores = maps.max(axis=(1, 2))
    result = evaluate_maps(scores, labels, maps, masks)
    assert result == {
        "image_auroc": image_auroc(scores, labels), "image_f1_max": image_f1_max(scores, labels),
        "pixel_auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks),
        "pixel_f1_max": pixel_f1_max(maps, masks), "n_images": 10, "n_anomalous": int(labels.sum()),
        "resolution": 32,
    }
    assert set(evaluate_maps(scores, labels)) == {"image_auroc", "image_f1_max", "n_images", "n_anomalous"}
    with pytest.raises(AdlearnError, match="both maps and masks"):
        evaluate_maps(scores, labels, maps)
    with pytest.raises(AdlearnError, match="10 image scores but 9 anomaly maps"):
        evaluate_maps(scores, labels, maps[:9], masks[:9])


# --- memory --------------------------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, re, numpy as np
    from adlearn.metrics import pixel_auroc, aupro

    def rss(field):  # kB -> bytes, from the kernel's accounting: includes every C allocation
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    rng = np.random.default_rng(0)
    maps = rng.random((300, 256, 256), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[::2, 100:140, 60:90] = True
    baseline = rss("VmRSS")
    auroc, pro = pixel_auroc(maps, masks), aupro(maps, masks)
    print(json.dumps({"growth": rss("VmHWM") - baseline, "auroc": auroc, "aupro": pro}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc (Linux)")
def test_memory_of_pixel_metrics_on_300_maps_of_256():
    """Peak RSS growth of pixel AUROC + AU-PRO on 19.7 M pixels, measured in a fresh process.

    Expected: the argsort's int64 indices (8 bytes per pixel, 157 MB), the region ids (uint8 here:
    150 regions, 20 MB) and the sorted pass's fixed working set (chunks of 2^18 samples, ~30 MB),
    i.e. ~210 MB; measured ~220 MB. The 300 MB bound leaves room for allocator noise and fails
    as soon as a full-size temporary is added (a float64 copy of the maps alone is 157 MB).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", MEMORY_SCRIPT]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["auroc"] == pytest.approx(0.5, abs=0.01)
    assert result["aupro"] == pytest.approx(0.15, abs=0.01)
    assert result["growth"] < 300e6, f"peak RSS grew by {result['growth'] / 1e6:.0f} MB"


def test_auroc_standard_error_matches_the_closed_form_and_the_spread_of_resampled_aurocs() -> None:
    # A = 0.5, 50 + 50 images: Q1 = Q2 = 1/3, SE² = (1/4 + 2·49·(1/3 − 1/4)) / 2500
    assert metrics.auroc_standard_error(0.5, 50, 50) == pytest.approx(((0.25 + 98 / 12) / 2500) ** 0.5)
    assert metrics.auroc_standard_error(1.0, 10, 10) == 0.0
    assert metrics.auroc_standard_error(0.75, 200, 200) < metrics.auroc_standard_error(0.75, 20, 20)
    # Hanley and McNeil derive it for exponential scores: nominal ~ Exp(1), anomalous ~ Exp(1/3) → A = 0.75
    rng = np.random.default_rng(0)
    n_anomalous, n_nominal, repeats = 30, 50, 4000
    anomalous = rng.exponential(3.0, (repeats, n_anomalous, 1))
    nominal = rng.exponential(1.0, (repeats, 1, n_nominal))
    aurocs = (anomalous > nominal).mean(axis=(1, 2))
    assert aurocs.mean() == pytest.approx(0.75, abs=0.01)
    assert metrics.auroc_standard_error(0.75, n_anomalous, n_nominal) == pytest.approx(aurocs.std(), rel=0.1)


@pytest.mark.parametrize("args", [(1.2, 10, 10), (0.7, 0, 10), (0.7, 10, 0)])
def test_auroc_standard_error_rejects_impossible_inputs(args) -> None:
    with pytest.raises(AdlearnError):
        metrics.auroc_standard_error(*args)


def _brute_force_delong(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong's paired variance from its definition: ψ(X, Y) = 1, ½ or 0 over every (anomalous, nominal) pair."""
    def placements(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        psi = (s[y][:, None] > s[~y][None]) + 0.5 * (s[y][:, None] == s[~y][None])
        return psi.mean(1), psi.mean(0)

    (v10_a, v01_a), (v10_b, v01_b) = placements(a), placements(b)
    d10, d01 = v10_a - v10_b, v01_a - v01_b
    return float(d10.mean()), float((d10.var(ddof=1) / len(d10) + d01.var(ddof=1) / len(d01)) ** 0.5)


def test_paired_auroc_difference_matches_the_definition_sklearn_and_the_bootstrap() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    shared = rng.normal(size=200)  # both models find the same images hard: correlated errors
    a = np.round(shared + rng.normal(size=200) + 1.2 * y, 1)  # rounded: ties must count half
    b = np.round(shared + rng.normal(size=200) + 0.8 * y, 1)
    result = metrics.paired_auroc_difference(a, b, y)
    assert result["auroc_a"] == pytest.approx(roc_auc_score(y, a))
    assert result["auroc_b"] == pytest.approx(roc_auc_score(y, b))
    difference, se = _brute_force_delong(a, b, y)
    assert result["difference"] == pytest.approx(difference)
    assert result["standard_error"] == pytest.approx(se)
    assert result["ci_low"] < result["difference"] < result["ci_high"]
    resampled = []
    for _ in range(1000):
        i = rng.integers(0, 200, 200)
        resampled.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert result["standard_error"] == pytest.approx(np.std(resampled), rel=0.15)
    # pairing is the point: the paired SE is well below the two unpaired SEs combined
    unpaired = np.hypot(*(metrics.auroc_standard_error(result[k], int(y.sum()), int((~y).sum()))
                          for k in ("auroc_a", "auroc_b")))
    assert result["standard_error"] < 0.8 * unpaired


def test_paired_auroc_difference_of_a_model_with_itself_is_zero_and_a_clear_win_is_significant() -> None:
    y = np.array([0] * 50 + [1] * 50, dtype=bool)
    scores = np.random.default_rng(1).normal(size=100) + y
    same = metrics.paired_auroc_difference(scores, scores, y)
    assert (same["difference"], same["standard_error"], same["p"]) == (0.0, 0.0, 1.0)
    clear = metrics.paired_auroc_difference(y + 0.01 * scores, scores, y)
    assert clear["auroc_a"] == 1.0 and clear["difference"] > 0 and clear["p"] < 1e-3


@pytest.mark.parametrize("b, labels", [(np.zeros(5), [0, 1, 0, 1]), (np.zeros(4), [1, 1, 1, 1]),
                                       (np.array([0, np.nan, 0, 1]), [0, 1, 0, 1])])
def test_paired_auroc_difference_rejects_unpaired_or_invalid_inputs(b, labels) -> None:
    with pytest.raises(AdlearnError):
        metrics.paired_auroc_difference(np.arange(4.0), b, labels)
