"""Anomaly detection metrics, written from the protocols they implement, and :func:`evaluate`.

Image level (one score per test image, the model's ``score``):

* :func:`image_auroc`: area under the ROC curve. Tied scores count half (Mann-Whitney U with
  average ranks), which is what ``sklearn.metrics.roc_auc_score`` computes.
* :func:`image_f1_max`: the best F1 over all thresholds.
* :func:`auroc_standard_error`: how far an AUROC on this many images can move by chance
  (Hanley and McNeil, 1982): read a difference between two rows against it.
* :func:`paired_auroc_difference`: the difference of two models' AUROCs on the *same* images,
  with its standard error and p-value (DeLong et al., 1988). Two models that fail on the same
  hard images are correlated, so this is tighter than two unpaired standard errors.

Pixel level (one anomaly map per test image, at the resolution of the ground-truth masks):

* :func:`pixel_auroc` and :func:`pixel_f1_max`: the same two metrics with every pixel of the test
  set as one sample.
* :func:`aupro`: the area under the per-region-overlap (PRO) curve up to a false positive rate of
  0.3, divided by 0.3. It follows the official MVTec AD protocol (``mvtec_ad_evaluation`` v1.0,
  Bergmann et al., IJCV 2021). :func:`pro_curve` returns the curve itself.
* :func:`aupro_rd4ad`: the coarser 200-threshold variant used in DDAD's and DiAD's code. It is
  here only so the two can be compared; it is not the official number.

Every curve comes from one sorted pass, :func:`_sweep`. It sorts the scores once, from highest
to lowest (a single argsort). It then lowers the threshold through every distinct score and keeps
running sums of per-sample weights, with one curve point per distinct threshold (tied scores
enter together). The weights are looked up in a small table by a per-sample id: the label for
ROC and F1, the ground-truth region for PRO. The pass walks the data in chunks, so besides the
inputs it needs the argsort's indices (8 bytes per pixel), 1-2 bytes per pixel of region ids
for PRO, and a fixed working set of about 30 MB. Nothing is copied to float64. For 1,000 maps of
256² that is 0.55 GB for pixel AUROC and 0.7 GB for AU-PRO.

Bad inputs raise :class:`~adlearn.errors.AdlearnError` and never give NaN: a set with a single
class, shapes that do not match, masks that are not binary, NaN or infinite scores, empty input.
An AUROC below 0.5 is reported as it is, never flipped to ``1 - AUROC``.

>>> import numpy as np
>>> image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
0.75
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from .env import progress_bar
from .errors import AdlearnError

__all__ = [
    "image_auroc", "auroc_standard_error", "paired_auroc_difference", "pixel_auroc", "roc_curve", "f1_max", "image_f1_max", "pixel_f1_max",
    "aupro", "pro_curve", "aupro_rd4ad", "evaluate_maps", "evaluate",
]

CHUNK = 1 << 18
"""Samples per step of the sorted pass. This bounds its working memory (about 30 MB)."""

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
"""Structuring element for ground-truth regions: 8-connectivity, as in ``pro_curve_util.py``."""

_TP, _FP, _PRO = 0, 1, 2
"""Columns of the weight tables summed by :func:`_sweep`."""

_LABEL_WEIGHTS = np.array([[0.0, 1.0], [1.0, 0.0]])
"""Row = label (0 nominal, 1 anomalous), columns (TP, FP): an anomalous sample adds a true
positive and a nominal sample adds a false positive once the threshold drops below its score."""


# --- input checking ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kind:
    """The names a message uses for one kind of sample, and how to fix a set of one class."""

    scores: str
    labels: str
    unit: str
    fix: str


_IMAGES = _Kind(
    "image scores", "image labels", "test images",
    "evaluate on a test split that holds good (label 0) and defective (label 1) images",
)
_PIXELS = _Kind(
    "anomaly maps", "masks", "pixels",
    "pixel metrics need masks with defects (1) and background (0): check that the ground-truth "
    "masks were loaded and are not inverted; for a dataset with image labels only, use image metrics "
    "(evaluate(..., pixel_metrics=False))",
)
_SAMPLES = _Kind("scores", "labels", "samples", "pass labels that contain both 0 and 1")


def _numpy(x: Any) -> np.ndarray:
    """``x`` as a numpy array without copying where possible (tensors are detached, moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _scores(x: Any, what: str) -> np.ndarray:
    """Finite, non-empty real scores. float32 and float64 are kept as they are; other types become float."""
    arr = _numpy(x)
    if arr.size == 0:
        raise AdlearnError(f"{what} are empty: there is nothing to evaluate; pass one score per test sample")
    if arr.dtype.kind not in "biuf":
        raise AdlearnError(f"{what} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    elif arr.itemsize < 4:
        arr = arr.astype(np.float32)
    if not (np.isfinite(arr.min()) and np.isfinite(arr.max())):  # NaN propagates through min/max
        bad = arr.size - np.count_nonzero(np.isfinite(arr))
        raise AdlearnError(
            f"{what} contain {bad} NaN or infinite values (of {arr.size}); the model produced them. "
            "Check for a division by zero or an overflow (e.g. a singular covariance: add a ridge)"
        )
    return arr


def _binary(x: Any, what: str) -> np.ndarray:
    """Labels or masks as bool. Values other than 0 and 1 are an error, never silently thresholded."""
    arr = _numpy(x)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise AdlearnError(f"{what} must be 0/1 or bool, got dtype {arr.dtype}")
    positive = arr != 0
    bad = positive & (arr != 1)
    if bad.any():
        raise AdlearnError(
            f"{what} must be binary (0/1 or bool), found {np.count_nonzero(bad)} other values, e.g. "
            f"{arr[bad][:3].tolist()}; a mask resized with bilinear interpolation needs nearest-neighbour "
            "resizing or an explicit threshold (mask > 0.5)"
        )
    return positive


def _stack(x: np.ndarray, what: str) -> np.ndarray:
    """Maps or masks as ``[N,H,W]``. Accepts ``[H,W]``, ``[N,H,W]`` and ``[N,1,H,W]``."""
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 2:
        return x[None]
    if x.ndim == 3:
        return x
    raise AdlearnError(f"{what} must have shape [N,H,W] (or [N,1,H,W] or [H,W]), got {x.shape}")


def _validated(scores: Any, labels: Any, metric: str, kind: _Kind) -> tuple[np.ndarray, np.ndarray]:
    """Check a scores/labels pair for ``metric``. Returns (scores, bool labels) of equal shape.

    Pixel inputs come back as ``[N,H,W]`` and image inputs as ``[N]``. Any other kind keeps its
    shape.
    """
    s, y = _scores(scores, kind.scores), _binary(labels, kind.labels)
    if kind is _PIXELS:
        s_stack, y_stack = _stack(s, kind.scores), _stack(y, kind.labels)
    else:
        s_stack, y_stack = s, y
    if s_stack.shape != y_stack.shape or (kind is _IMAGES and s.ndim != 1):
        raise AdlearnError(
            f"{metric}: {kind.scores} have shape {s.shape} but {kind.labels} have shape {y.shape}; "
            f"they must match, one label per score"
            + (" and one-dimensional" if kind is _IMAGES else "")
            + (" (resize the anomaly maps to the masks' size, not the masks)" if kind is _PIXELS else "")
        )
    n_pos = np.count_nonzero(y_stack)
    if n_pos in (0, y_stack.size):
        raise AdlearnError(
            f"{metric} needs both nominal and anomalous {kind.unit}, got {y_stack.size - n_pos} nominal "
            f"and {n_pos} anomalous; {kind.fix}"
        )
    return s_stack, y_stack


def _check_limit(fpr_limit: float) -> float:
    if not 0 < fpr_limit <= 1:
        raise AdlearnError(f"fpr_limit must lie in (0, 1], got {fpr_limit}; the MVTec AD protocol uses 0.3")
    return float(fpr_limit)


# --- the sorted pass ---------------------------------------------------------------------------
def _sweep(
    scores: np.ndarray, ids: np.ndarray, weights: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The one sorted pass behind every curve in this module.

    Lower a threshold ``t`` through the distinct values of ``scores``, from highest to lowest.
    Yield, chunk by chunk, ``(t, totals)`` with ``totals[j] = sum(weights[ids[i]] for scores[i] >= t[j])``.
    That is one row per distinct threshold, taken after the last sample tied at it (the
    ``keep_mask`` of ``compute_pro`` in ``mvtec_ad_evaluation``). Running sums are float64; they
    are exact for counts.
    """
    scores, ids = scores.ravel(), ids.ravel()
    order = np.argsort(scores)[::-1]  # descending, as a view: the only O(n) allocation
    carry = np.zeros(weights.shape[1])
    for start in range(0, order.size, CHUNK):
        idx = order[start : start + CHUNK]
        s = scores[idx]
        totals = np.cumsum(weights[ids[idx]], axis=0)
        totals += carry
        carry = totals[-1].copy()
        after = start + idx.size  # the first sample of the next chunk may tie with this one's last
        last = np.empty(s.size, dtype=bool)
        np.not_equal(s[:-1], s[1:], out=last[:-1])
        last[-1] = after == order.size or scores[order[after]] != s[-1]
        if last.any():
            yield s[last], totals[last]


@dataclass(frozen=True)
class _Axes:
    """Map running totals to curve coordinates: ``x = totals[:, x_col] / x_norm``, the same for y.

    Both are clipped to 1, as ``compute_pro`` does, against rounding in the running float sums.
    """

    x_col: int
    x_norm: float
    y_col: int
    y_norm: float = 1.0

    def __call__(self, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.minimum(totals[:, self.x_col] / self.x_norm, 1.0)
        return x, np.minimum(totals[:, self.y_col] / self.y_norm, 1.0)


class _Area:
    """Trapezoid-rule area under a curve that arrives piece by piece (x ascending) from (0, 0).

    With ``x_max`` the area stops there, interpolating the curve linearly between the two points
    on either side of ``x_max``. This is ``generic_util.trapezoid(x, y, x_max)`` of
    ``mvtec_ad_evaluation``.
    """

    def __init__(self, axes: _Axes, x_max: float = np.inf) -> None:
        self.axes, self.x_max = axes, x_max
        self.area, self.done = 0.0, False
        self._x, self._y = 0.0, 0.0

    def update(self, thresholds: np.ndarray, totals: np.ndarray) -> None:
        if self.done:  # other consumers of the same pass may still need the rest of the curve
            return
        x, y = self.axes(totals)
        x, y = np.concatenate(([self._x], x)), np.concatenate(([self._y], y))
        inside = int(np.searchsorted(x, self.x_max, side="right"))  # points with x <= x_max
        self.area += float(np.sum((x[1:inside] - x[: inside - 1]) * (y[1:inside] + y[: inside - 1]))) / 2
        if inside < x.size:  # the segment from point inside-1 to point inside crosses x_max
            x0, y0, x1, y1 = x[inside - 1], y[inside - 1], x[inside], y[inside]
            y_max = y0 + (y1 - y0) * (self.x_max - x0) / (x1 - x0)
            self.area += float((self.x_max - x0) * (y0 + y_max)) / 2
            self.done = True
        self._x, self._y = x[-1], y[-1]


class _F1Max:
    """Best F1 = 2 TP / (TP + FP + P) over all thresholds, where P is the number of positives."""

    done = False

    def __init__(self, n_pos: int) -> None:
        self.n_pos, self.best = n_pos, 0.0

    def update(self, thresholds: np.ndarray, totals: np.ndarray) -> None:
        tp, fp = totals[:, _TP], totals[:, _FP]
        self.best = max(self.best, float(np.max(2 * tp / (tp + fp + self.n_pos))))


class _Points:
    """Collect the curve itself for figures: x, y and thresholds, starting at (0, 0, +inf)."""

    done = False

    def __init__(self, axes: _Axes) -> None:
        self.axes = axes
        self._parts: list[tuple[np.ndarray, ...]] = [(np.zeros(1), np.zeros(1), np.array([np.inf]))]

    def update(self, thresholds: np.ndarray, totals: np.ndarray) -> None:
        self._parts.append((*self.axes(totals), thresholds))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, thresholds = (np.concatenate(part) for part in zip(*self._parts))
        return x, y, thresholds


def _run(scores: np.ndarray, ids: np.ndarray, weights: np.ndarray, *consumers: Any) -> None:
    """Feed one :func:`_sweep` to several consumers. It stops early once all of them are done."""
    for thresholds, totals in _sweep(scores, ids, weights):
        for consumer in consumers:
            consumer.update(thresholds, totals)
        if all(consumer.done for consumer in consumers):
            return


# --- ROC and F1 --------------------------------------------------------------------------------
def _roc_axes(labels: np.ndarray) -> _Axes:
    n_pos = np.count_nonzero(labels)
    return _Axes(_FP, labels.size - n_pos, _TP, n_pos)


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    area = _Area(_roc_axes(labels))
    _run(scores, labels.view(np.uint8), _LABEL_WEIGHTS, area)
    return area.area


def _f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    f1 = _F1Max(np.count_nonzero(labels))
    _run(scores, labels.view(np.uint8), _LABEL_WEIGHTS, f1)
    return f1.best


def image_auroc(scores: Any, labels: Any) -> float:
    """Image-level ROC AUC: ``scores`` float[N] (higher = more anomalous), ``labels`` 0/1 [N].

    Exact, with ties counted half, like ``sklearn.metrics.roc_auc_score``. A value below 0.5 is
    returned as it is: the scores rank anomalies *below* nominal images.
    """
    return _auroc(*_validated(scores, labels, "image AUROC", _IMAGES))


def auroc_standard_error(auroc: float, n_anomalous: int, n_nominal: int) -> float:
    """Standard error of an AUROC measured on ``n_anomalous`` and ``n_nominal`` test images.

    Hanley and McNeil (1982, Radiology 143, Eq. 1): SE² = [A(1−A) + (n_A−1)(Q₁−A²) + (n_N−1)(Q₂−A²)]
    / (n_A·n_N), with Q₁ = A/(2−A) and Q₂ = 2A²/(1+A). Two AUROCs on the same test set that differ
    by less than about two of these are not told apart by it.
    """
    if not 0 <= auroc <= 1:
        raise AdlearnError(f"an AUROC lies in [0, 1], got {auroc}")
    if n_anomalous < 1 or n_nominal < 1:
        raise AdlearnError(f"need ≥ 1 anomalous and ≥ 1 nominal image, got {n_anomalous} and {n_nominal}")
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    variance = (auroc * (1 - auroc) + (n_anomalous - 1) * (q1 - auroc**2)
                + (n_nominal - 1) * (q2 - auroc**2)) / (n_anomalous * n_nominal)
    return float(max(variance, 0.0) ** 0.5)


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def _placements(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V₁₀ for each anomalous image (the share of nominal scores below
    it, ties half) and V₀₁ for each nominal image (the share of anomalous scores above it)."""
    anomalous, nominal = scores[labels].astype(np.float64), scores[~labels].astype(np.float64)
    m, n = len(anomalous), len(nominal)
    every = _midranks(np.concatenate([anomalous, nominal]))
    v10 = (every[:m] - _midranks(anomalous)) / n
    v01 = 1 - (every[m:] - _midranks(nominal)) / m
    return v10, v01


def paired_auroc_difference(scores_a: Any, scores_b: Any, labels: Any) -> dict[str, float]:
    """AUROC(a) − AUROC(b) for two score sets on the same images, with DeLong's paired standard error.

    DeLong, DeLong and Clarke-Pearson (1988, Biometrics 44:837, Eqs. 2-5): with V₁₀ and V₀₁ each
    image's placement values (:func:`_placements`; their means are the AUROC), S₁₀ and S₀₁ their
    2×2 covariance matrices over the m anomalous and the n nominal images,

        Var(A − B) = (S₁₀ᵃᵃ + S₁₀ᵇᵇ − 2 S₁₀ᵃᵇ) / m + (S₀₁ᵃᵃ + S₀₁ᵇᵇ − 2 S₀₁ᵃᵇ) / n,

    and z = (A − B) / SE is read against a standard normal (two-sided ``p``). Returns ``auroc_a``,
    ``auroc_b``, ``difference``, ``standard_error``, ``ci_low`` and ``ci_high`` (95 %, ±1.96 SE) and ``p``.
    """
    a, y = _validated(scores_a, labels, "paired AUROC difference (scores_a)", _IMAGES)
    b, _ = _validated(scores_b, labels, "paired AUROC difference (scores_b)", _IMAGES)
    if a.shape != b.shape:
        raise AdlearnError(f"paired AUROC difference: scores_a has {a.size} scores and scores_b {b.size}; "
                           "pass both models' scores of the same test images, in the same order")
    (v10_a, v01_a), (v10_b, v01_b) = _placements(a, y), _placements(b, y)
    m, n = len(v10_a), len(v01_a)
    difference = float(v10_a.mean() - v10_b.mean())
    variance = 0.0
    for components, count in (((v10_a, v10_b), m), ((v01_a, v01_b), n)):
        if count > 1:
            s = np.cov(np.stack(components))
            variance += (s[0, 0] + s[1, 1] - 2 * s[0, 1]) / count
    se = float(max(variance, 0.0) ** 0.5)
    p = 1.0 if se == 0 else float(math.erfc(abs(difference) / se / math.sqrt(2)))
    return {"auroc_a": float(v10_a.mean()), "auroc_b": float(v10_b.mean()), "difference": difference,
            "standard_error": se, "ci_low": difference - 1.96 * se, "ci_high": difference + 1.96 * se, "p": p}


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel-level ROC AUC over every pixel of the set. ``maps`` float[N,H,W], ``masks`` 0/1 [N,H,W].

    The result depends on the resolution of the maps and masks, so report it. The pass needs
    8 bytes per pixel of working memory (the argsort), e.g. 0.5 GB for 1,000 maps of 256².
    """
    return _auroc(*_validated(maps, masks, "pixel AUROC", _PIXELS))


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, from (0, 0) at threshold +inf.

    This is ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``. Any shape
    works; the arrays are flattened.
    """
    s, y = _validated(scores, labels, "ROC curve", _SAMPLES)
    points = _Points(_roc_axes(y))
    _run(s, y.view(np.uint8), _LABEL_WEIGHTS, points)
    return points.arrays()


def f1_max(scores: Any, labels: Any) -> float:
    """Maximum F1 over every threshold (predict anomalous when ``score >= threshold``), any shape."""
    return _f1_max(*_validated(scores, labels, "F1-max", _SAMPLES))


def image_f1_max(scores: Any, labels: Any) -> float:
    """:func:`f1_max` of image scores float[N] against image labels [N]."""
    return _f1_max(*_validated(scores, labels, "image F1-max", _IMAGES))


def pixel_f1_max(maps: Any, masks: Any) -> float:
    """:func:`f1_max` over every pixel: ``maps`` float[N,H,W] against ``masks`` 0/1 [N,H,W]."""
    return _f1_max(*_validated(maps, masks, "pixel F1-max", _PIXELS))


# --- PRO (official MVTec AD protocol) --------------------------------------------------------------
def _regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth regions of masks bool[N,H,W]: the 8-connected components of each image.

    Returns ``ids`` [N,H,W] and ``sizes`` int64[R+1]. In ``ids``, 0 means anomaly-free and
    k = 1..R numbers the regions across the whole set; their type is the smallest unsigned
    integer that holds R (usually uint8 or uint16: 1-2 bytes per pixel). ``sizes[k]`` is the
    pixel count of region k, and ``sizes[0]`` the number of anomaly-free pixels.
    """
    ids = np.empty(masks.shape, dtype=np.int32)
    sizes, n_ok, n_regions = [], 0, 0
    for mask, out in zip(masks, ids):
        n = ndimage.label(mask, structure=_EIGHT_CONNECTED, output=out)
        counts = np.bincount(out.ravel(), minlength=n + 1)
        n_ok += int(counts[0])
        sizes.append(counts[1:])
        np.add(out, n_regions, out=out, where=out > 0)  # number regions across the set
        n_regions += n
    return ids.astype(np.min_scalar_type(n_regions)), np.concatenate([[n_ok], *sizes]).astype(np.int64)


def _pro_weights(sizes: np.ndarray) -> np.ndarray:
    """Weight table over region ids, columns (TP, FP, PRO), following ``compute_pro``.

    An anomaly-free pixel adds one false positive; FPR = FP / anomaly-free pixels. A pixel of
    region k adds one true positive and ``1 / (|region_k| * R)`` to the PRO. So the PRO at a
    threshold is the mean, over all R regions of the set, of the fraction of each region above
    it.
    """
    weights = np.zeros((sizes.size, 3))
    weights[0, _FP] = 1.0
    weights[1:, _TP] = 1.0
    weights[1:, _PRO] = 1.0 / (sizes[1:] * (sizes.size - 1))
    return weights


def _pro_problem(maps: Any, masks: Any, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Axes]:
    """Validated maps, region ids, region sizes, and the (FPR, PRO) axes for ``metric``."""
    maps, masks = _validated(maps, masks, metric, _PIXELS)
    ids, sizes = _regions(masks)
    return maps, ids, sizes, _Axes(_FP, sizes[0], _PRO)


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``: the official MVTec AD AU-PRO.

    Protocol (``mvtec_ad_evaluation`` v1.0, ``pro_curve_util.compute_pro`` and
    ``generic_util.trapezoid``):

    1. The regions are the 8-connected components of each ground-truth mask.
    2. The curve is exact, with one point per distinct score of the whole set. FPR is taken over
       all anomaly-free pixels of all images, anomaly-free images included. PRO is the mean
       overlap over all regions of the set, not a mean of per-image means.
    3. The curve starts at (0, 0). Trapezoid rule up to ``fpr_limit``, interpolating the curve
       linearly at the limit. Then divide by ``fpr_limit``.

    So a perfect map gives 1, a map that ranks every anomalous pixel last gives 0, and a random
    map gives about ``fpr_limit / 2``. Maps and masks must have the same resolution; report it.
    Memory besides the inputs: about 10 bytes per pixel (argsort indices and region ids), e.g.
    0.7 GB for 1,000 maps of 256².
    """
    fpr_limit = _check_limit(fpr_limit)
    maps, ids, sizes, axes = _pro_problem(maps, masks, "AUPRO")
    area = _Area(axes, x_max=fpr_limit)
    _run(maps, ids, _pro_weights(sizes), area)
    return area.area / fpr_limit


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve (fpr, pro) of :func:`aupro`. It starts at (0, 0) and ends at (1, 1).

    It has one point per distinct score, so up to one per pixel. For figures of very large sets,
    subsample the returned points.
    """
    maps, ids, sizes, axes = _pro_problem(maps, masks, "PRO curve")
    points = _Points(axes)
    _run(maps, ids, _pro_weights(sizes), points)
    fpr, pro, _ = points.arrays()
    return fpr, pro


def aupro_rd4ad(maps: Any, masks: Any, num_thresholds: int = 200, fpr_limit: float = 0.3) -> float:
    """AU-PRO as computed by DDAD's and DiAD's code (after RD4AD's ``test.py``). For comparison only.

    The procedure:

    1. Min-max normalise the maps over the whole set. That uses test statistics; it does not
       change the ranking.
    2. Take ``num_thresholds`` equally spaced thresholds ``t`` in [0, 1). A pixel is positive when
       its normalised score is greater than ``t``.
    3. At each threshold, PRO is the mean over all regions (8-connected, as
       ``skimage.measure.label``) of TP / area, and FPR is taken over all anomaly-free pixels.
    4. Keep the points with FPR < ``fpr_limit`` and divide their FPR by the largest one kept.
    5. Trapezoid rule over the kept points (``sklearn.metrics.auc``), with no point at (0, 0).

    How it differs from :func:`aupro`, which is the number to report. It is a different
    number, and it is not comparable across methods:

    * It divides by the largest sampled FPR below the limit, not by the limit: the result is
      the area between the first and the last sampled FPR divided by the last one, a range that
      depends on each method's score distribution. When a few extreme pixels stretch the
      min-max range, the grid can jump from FPR 0.02 to 0.4, and the "AU-PRO" then describes
      FPR <= 0.02 only.
    * The curve is coarse, and its chords cut across whatever happens between two thresholds.
      When a sharp rise of the PRO falls inside one threshold step, the chord credits PRO that
      the exact curve reaches only at the end of that step. This inflates the score, by up to
      12x in ``tests/test_metrics.py::test_rd4ad_variant_cannot_tell_apart``. It cannot tell
      apart two detectors whose official AU-PRO is 1/30 and 5/6.
    * On smooth maps whose PRO rises and saturates, it is usually a little *lower* than
      :func:`aupro`. It drops the stretch before the first sampled point, and an increasing
      curve averaged over a shorter range is lower.

    The original's float32 ``np.arange`` can add a 201st threshold just below the maximum. Here
    the thresholds are exactly ``k / num_thresholds``.
    """
    fpr_limit = _check_limit(fpr_limit)
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise AdlearnError(f"num_thresholds must be an integer >= 2, got {num_thresholds}")
    maps, ids, sizes, _ = _pro_problem(maps, masks, "AUPRO (RD4AD variant)")
    counts = _counts_above(maps, ids, sizes.size, np.arange(num_thresholds) / num_thresholds)
    fpr = counts[0] / sizes[0]
    pro = np.mean(counts[1:] / sizes[1:, None], axis=0)
    kept = fpr < fpr_limit
    if np.count_nonzero(kept) < 2 or fpr[kept].max() == 0:
        raise AdlearnError(
            f"the RD4AD-style AUPRO is undefined here: only {np.count_nonzero(kept)} of {num_thresholds} "
            f"thresholds give FPR < {fpr_limit}, with largest FPR {fpr[kept].max(initial=0.0):.3g} "
            "(the original code returns NaN). Use aupro(), the official protocol, which has no such gap"
        )
    fpr, pro = fpr[kept] / fpr[kept].max(), pro[kept]
    return float(np.sum((fpr[:-1] - fpr[1:]) * (pro[:-1] + pro[1:]))) / 2  # FPR falls as thresholds rise


def _counts_above(maps: np.ndarray, ids: np.ndarray, n_ids: int, thresholds: np.ndarray) -> np.ndarray:
    """``counts[k, j]`` = pixels with id k whose min-max normalised score is > ``thresholds[j]``.

    Computed as one histogram per id over the threshold bins, processed in blocks of images.
    """
    lo, hi = float(maps.min()), float(maps.max())
    if hi == lo:
        raise AdlearnError("the RD4AD-style AUPRO is undefined for constant anomaly maps (min == max)")
    n_bins = thresholds.size + 1
    hist = np.zeros(n_ids * n_bins, dtype=np.int64)
    step = max(1, CHUNK // maps[0].size)
    for start in range(0, len(maps), step):
        normalised = (maps[start : start + step].astype(np.float64) - lo) / (hi - lo)
        below = np.searchsorted(thresholds, normalised.ravel(), side="left")  # thresholds < score
        cells = ids[start : start + step].ravel().astype(np.int64) * n_bins + below
        hist += np.bincount(cells, minlength=hist.size)
    hist = hist.reshape(n_ids, n_bins)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # sum over bins above threshold j


# --- evaluation of a model -------------------------------------------------------------------------
def evaluate_maps(scores: Any, labels: Any, maps: Any = None, masks: Any = None) -> dict[str, float | int]:
    """The metric dict of :func:`evaluate`, computed from arrays.

    ``scores`` float[N] and ``labels`` 0/1 [N] give ``image_auroc`` and ``image_f1_max``.
    ``maps`` float[N,H,W] and ``masks`` 0/1 [N,H,W], when given, add ``pixel_auroc``,
    ``pixel_f1_max`` and ``aupro`` (official protocol, FPR limit 0.3) from one sorted pass, and
    ``resolution`` (H). Nothing is normalised with test statistics.
    """
    s, y = _validated(scores, labels, "image AUROC", _IMAGES)
    image_area, image_f1 = _Area(_roc_axes(y)), _F1Max(np.count_nonzero(y))
    _run(s, y.view(np.uint8), _LABEL_WEIGHTS, image_area, image_f1)
    result: dict[str, float | int] = {"image_auroc": image_area.area, "image_f1_max": image_f1.best}
    if maps is not None or masks is not None:
        result.update(_pixel_metrics(maps, masks, n_images=len(s)))
    result.update(n_images=len(s), n_anomalous=int(np.count_nonzero(y)))
    return result


def _pixel_metrics(maps: Any, masks: Any, n_images: int) -> dict[str, float]:
    """Pixel AUROC, AU-PRO (limit 0.3) and pixel F1-max from a single sorted pass, and the resolution."""
    if maps is None or masks is None:
        raise AdlearnError("pixel metrics need both maps and masks; pass both or neither")
    maps, ids, sizes, pro_axes = _pro_problem(maps, masks, "pixel metrics")
    if len(maps) != n_images:
        raise AdlearnError(
            f"got {n_images} image scores but {len(maps)} anomaly maps; pass one map per image"
        )
    n_pos = int(sizes[1:].sum())
    roc = _Area(_Axes(_FP, sizes[0], _TP, n_pos))
    pro = _Area(pro_axes, x_max=0.3)
    f1 = _F1Max(n_pos)
    _run(maps, ids, _pro_weights(sizes), roc, pro, f1)
    return {
        "pixel_auroc": roc.area, "aupro": pro.area / 0.3, "pixel_f1_max": f1.best,
        "resolution": maps.shape[1],
    }


@dataclass
class _Collected:
    """What :func:`evaluate` gathers from the model: arrays for :func:`evaluate_maps` and timing."""

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray | None
    masks: np.ndarray | None
    seconds: float
    resolution: int


SAMPLE_FORMATS = (
    "a dict with 'image' (float[3,H,W] in [0,1]) and 'label' (0 or 1), plus 'mask' (float[1,H,W] in "
    "{0,1}) for pixel metrics, as MVTecAD returns; or a tuple (image, label) or (image, mask, label), "
    "as TensorDataset(images, labels) or TensorDataset(images, masks, labels) returns"
)
"""The samples :func:`evaluate` accepts (the wording of its error message)."""


def evaluate(
    model: Any, dataset: Dataset | DataLoader, *, batch_size: int | None = None, pixel_metrics: bool | None = None,
    progress: bool = True,
) -> dict[str, float | int]:
    """Score every image of ``dataset`` with ``model.predict`` and compute the metrics.

    Returns ``image_auroc``, ``image_f1_max``, ``pixel_auroc``, ``aupro``, ``pixel_f1_max``,
    ``predict_ms_per_image``, ``n_images``, ``n_anomalous`` and ``resolution``.

    * ``dataset`` yields the samples of :data:`SAMPLE_FORMATS`: :class:`~adlearn.datasets.MVTecAD`'s
      dicts, or tuples ``(image, label)`` / ``(image, mask, label)`` such as a
      :class:`~torch.utils.data.TensorDataset` gives. A ``DataLoader`` is used as it is.
    * The image score is the model's ``score``. Nothing is normalised with test-set statistics,
      and no AUROC is flipped.
    * Pixel metrics are computed at the dataset's image resolution, ``resolution`` (the height
      H, for square images). The model's maps are at its input size, and the masks are never
      resized. AU-PRO follows the official MVTec AD protocol with FPR limit 0.3 (see
      :func:`aupro`).
    * The pixel keys are left out, not set to NaN, when ``dataset.has_masks`` is False (image
      labels only, e.g. ELPV), when the samples carry no mask (a dataset without ``has_masks``
      is asked for its first sample), or with ``pixel_metrics=False``.
    * ``predict_ms_per_image`` times only the ``predict`` calls (with a CUDA synchronise), not
      the data loading.

    ``batch_size`` defaults to ``model.batch_size`` or 16. Memory: maps are kept as float32 and
    masks as bool (5 bytes per pixel). The metrics then need about 10 bytes per pixel more, e.g.
    1 GB in all for 1,000 test images of 256².
    """
    if not callable(getattr(model, "predict", None)):
        raise AdlearnError(
            f"evaluate needs a fitted model with a predict(images) method (e.g. adlearn.models.build(...).fit(train)), "
            f"got {type(model).__name__}"
        )
    if isinstance(dataset, DataLoader):
        loader, dataset = dataset, dataset.dataset
    else:
        size = batch_size or getattr(model, "batch_size", None) or 16
        loader = DataLoader(dataset, batch_size=size, shuffle=False)
    if len(dataset) == 0:
        raise AdlearnError("the test set is empty; check the dataset's folder and split (split='test')")
    with_maps = _wants_pixel_metrics(dataset, pixel_metrics)
    got = _predict_all(model, loader, len(dataset), with_maps, progress)
    result = evaluate_maps(got.scores, got.labels, got.maps, got.masks)
    result.update(predict_ms_per_image=1000 * got.seconds / len(got.scores), resolution=got.resolution)
    return result


def _wants_pixel_metrics(dataset: Dataset, pixel_metrics: bool | None) -> bool:
    has_masks = getattr(dataset, "has_masks", None)
    if has_masks is None:  # not declared: look at the first sample
        has_masks = "mask" in _fields(dataset[0])
    if pixel_metrics and not has_masks:
        raise AdlearnError(
            f"pixel_metrics=True, but {type(dataset).__name__} has no ground-truth masks (has_masks is "
            "False, or its samples carry none); only image metrics can be computed: leave pixel_metrics unset"
        )
    return bool(has_masks) if pixel_metrics is None else bool(pixel_metrics)


def _fields(sample: Any) -> dict[str, Any]:
    """A sample or a collated batch as a dict with ``image``, ``label`` and, if it has one, ``mask``."""
    if isinstance(sample, dict) and {"image", "label"} <= set(sample):
        return sample
    if isinstance(sample, (tuple, list)) and len(sample) in (2, 3):
        names = ("image", "label") if len(sample) == 2 else ("image", "mask", "label")
        return dict(zip(names, sample))
    if isinstance(sample, dict):
        got = f"a dict with keys {sorted(sample)}"
    elif isinstance(sample, (tuple, list)):
        got = f"a {type(sample).__name__} of length {len(sample)}"
    else:
        got = f"a {type(sample).__name__}"
    raise AdlearnError(f"evaluate needs samples that are {SAMPLE_FORMATS}; the dataset gives {got}")


def _predict_all(model: Any, loader: DataLoader, n: int, with_maps: bool, progress: bool) -> _Collected:
    """Run ``model.predict`` over ``loader``. Scores, labels, maps and masks go into preallocated arrays."""
    scores, labels = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.int64)
    maps = masks = None
    seconds, start = 0.0, 0
    for batch in progress_bar(loader, desc="evaluate", unit="batch", enabled=progress):
        batch = _fields(batch)
        images = batch["image"]
        b, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        prediction, elapsed = _timed_predict(model, images)
        seconds += elapsed
        _check_prediction(prediction, images.shape)
        scores[start : start + b] = _numpy(prediction.score)
        labels[start : start + b] = _numpy(batch["label"])
        if with_maps:
            if maps is None:
                maps, masks = np.empty((n, h, w), dtype=np.float32), np.empty((n, h, w), dtype=bool)
            maps[start : start + b] = _numpy(prediction.anomaly_map)
            masks[start : start + b] = _batch_masks(batch, (b, h, w))
        start += b
    return _Collected(scores, labels, maps, masks, seconds, resolution=int(h))


def _timed_predict(model: Any, images: torch.Tensor) -> tuple[Any, float]:
    """``model.predict(images)`` and its wall time; waits for CUDA work to finish before stopping."""
    begin = time.perf_counter()
    with torch.inference_mode():
        prediction = model.predict(images)
    if isinstance(prediction.anomaly_map, torch.Tensor) and prediction.anomaly_map.is_cuda:
        torch.cuda.synchronize(prediction.anomaly_map.device)
    return prediction, time.perf_counter() - begin


def _check_prediction(prediction: Any, image_shape: torch.Size) -> None:
    b, _, h, w = image_shape
    score, amap = tuple(prediction.score.shape), tuple(prediction.anomaly_map.shape)
    if score != (b,) or amap != (b, h, w):
        raise AdlearnError(
            f"model.predict returned score {score} and anomaly_map {amap} for images {tuple(image_shape)}; "
            f"expected score ({b},) and anomaly_map ({b}, {h}, {w}), at the input resolution"
        )


def _batch_masks(batch: dict[str, Any], shape: tuple[int, int, int]) -> np.ndarray:
    """The batch's masks as bool[B,H,W], checked to be binary and at the images' resolution."""
    if "mask" not in batch:
        raise AdlearnError(
            "the dataset's samples have no 'mask'; set has_masks = False on the dataset or call "
            "evaluate(..., pixel_metrics=False) for image metrics only"
        )
    masks = _stack(_binary(batch["mask"], "dataset masks"), "dataset masks")
    if masks.shape != shape:
        raise AdlearnError(
            f"dataset masks have shape {tuple(batch['mask'].shape)} but the images are "
            f"{shape[1]}x{shape[2]}; masks must be at the image resolution (resize them with "
            "nearest-neighbour interpolation)"
        )
    return masks
