"""SPADE — Semantic Pyramid Anomaly Detection (Cohen & Hoshen, 2020, arXiv:2005.02357).

"Sub-Image Anomaly Detection with Deep Pyramid Correspondences": no training, only nearest
neighbours in the feature space of an ImageNet CNN, first between whole images, then between
pixels of the retrieved images.

1. Image level: f_y = global average pool of the last stage of the CNN for image y. The image's
   anomaly score is the mean distance to its K nearest training images (K = 50 in the paper):
       d(y) = 1/K Σ_{f ∈ N_K(f_y)} ‖f − f_y‖                                       (Eq. 1)
2. Pixel level: the gallery G = the features F(x_k, p) of *every* position p of the K retrieved
   images x_k, for each layer of the pyramid (ResNet layer1–3, strides 4, 8, 16). A test pixel's
   score is the mean distance to its κ nearest gallery features (κ = 1 in the paper):
       d(y, p) = 1/κ Σ_{f ∈ N_κ(F(y, p))} ‖f − F(y, p)‖                            (Eq. 2)
   The per-layer maps are upsampled to the image and averaged (the paper's "ensemble" pyramid),
   then smoothed by a Gaussian of σ = 4 pixels.

Distances are Euclidean (not squared), as in the implementation the authors point to
(byungjae89/SPADE-pytorch). What adlearn does differently from that code (reference/methods.md
§3, §7.2), and why:

* Distances are computed explicitly over channels as ‖g‖² − 2 g·q + ‖q‖² (one matrix product per
  block), never with ``torch.pairwise_distance`` on broadcast 4-D tensors: newer PyTorch reduces
  that over the last dimension instead of the channels and silently breaks the pixel AUROC.
* The gallery is searched in chunks of ``chunk_size`` vectors and blocks of 2²⁰ distances, so
  predict memory is bounded by those, never by the training-set size; every vector is searched
  (the popular loop skips the last N mod 100).
* The training feature maps are kept once, channels-last, in float16 by default (half the memory;
  distances are still computed in float32), on the model's device; the popular code keeps
  float32 copies of the whole training set on the GPU.
* K > N (fewer training images than neighbours asked for) uses all N images with a warning.
* The global feature of EfficientNet backbones is the last *stage* of the pyramid (320 channels
  for Lite0) pooled, not the 1,280-channel head convolution that timm's feature pyramids omit;
  for ResNets it is exactly the paper's ``avgpool`` feature (layer4 pooled).
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..backbones import Pretrained, stage_count
from ..env import progress_bar
from ..errors import AdlearnError
from ..knn import nearest_neighbours
from ..batches import iter_images
from ..ops import upsample
from ..prediction import Prediction, anomaly_prediction
from ..profiles import sigma_for
from .base import AnomalyModel

__all__ = ["SPADE"]

GALLERY_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
class SPADE(AnomalyModel):
    """SPADE anomaly detection; constructor defaults are the paper's (WRN50-2, K=50, κ=1, σ=4).

    Args:
        backbone: timm model name with its weight tag (the paper: torchvision's WRN50-2,
            ``"wide_resnet50_2.tv_in1k"``; offline: ``"tf_efficientnet_lite0"``).
        layers: timm ``out_indices`` of the pixel-level pyramid (1, 2, 3 = ResNet layer1–3); the
            last stage (global feature) is added automatically.
        k: K, training images retrieved per test image (Eq. 1). The popular repository uses 5.
            With fewer than K training images, all of them are used (``k_``) and a warning says so.
        kappa: κ, nearest gallery features averaged per pixel (Eq. 2).
        sigma: std (pixels) of the Gaussian smoothing of the anomaly map.
        pretrained: ImageNet weights: ``True`` (error if unavailable), ``"auto"`` (loud fallback to
            random weights), ``False``.
        image_score: ``"knn"``, the paper's mean distance to the K nearest training images' global
            features (Eq. 1), or ``"max"``, the maximum of the anomaly map (what most
            re-implementations report; global features can miss small defects).
        gallery_dtype: storage of the training feature maps: ``"float16"`` (default, half the
            memory), ``"bfloat16"`` or ``"float32"``; distances are computed in float32 either way.
        chunk_size: gallery vectors per distance block; bounds predict memory.
        batch_size: images per forward pass.
        device: ``None`` = CUDA when present, else CPU.
    """

    name = "SPADE"
    profiles = {
        # K=10 of the fast profile's 24 training images (the paper's K=50 needs ≥ 50 images)
        "fast": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": sigma_for(128), "k": 10},
        "book": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto"},  # the paper's K=50 of 80 images
    }
    _learned_attrs = ("pretrained_", "weights_", "k_", "feature_shapes_")

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: tuple[int, ...] = (1, 2, 3),
        k: int = 50,
        kappa: int = 1,
        sigma: float = 4.0,
        pretrained: Pretrained = True,
        image_score: Literal["knn", "max"] = "knn",
        gallery_dtype: str = "float16",
        chunk_size: int = 4096,
        batch_size: int = 32,
    ) -> None:
        self.register_buffer("global_features", None)
        self.register_buffer("gallery", None)

    def _check_params(self) -> None:
        if len(set(self.layers)) != len(self.layers) or min(self.layers, default=-1) < 0:
            raise AdlearnError(
                f"layers={self.layers} must be distinct, non-negative timm out_indices, e.g. (1, 2, 3)"
            )
        if self.gallery_dtype not in GALLERY_DTYPES:
            raise AdlearnError(f"gallery_dtype={self.gallery_dtype!r}; choose one of {sorted(GALLERY_DTYPES)}")
        if self.image_score not in ("knn", "max"):
            raise AdlearnError(f"image_score={self.image_score!r}; choose 'knn' (the paper's Eq. 1) or 'max'")
        if self.k < 1 or self.kappa < 1 or self.chunk_size < 1:
            raise AdlearnError(f"k={self.k}, kappa={self.kappa} and chunk_size={self.chunk_size} must be ≥ 1")

    def _build(self, load_weights: bool) -> None:
        last = stage_count(self.backbone) - 1
        self._stages = tuple(sorted({*self.layers, last}))  # timm returns stages in this order
        self._build_feature_extractor(self._stages, load_weights)

    # --- features: the global vector f_y and the pyramid F(y, p) -----------------------------
    def extract(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(f_y [B, D], [F_l [B, C_l, h_l, w_l] for each layer])`` for images in [0, 1]."""
        features = dict(zip(self._stages, self.feature_extractor(images)))
        global_feature = features[self._stages[-1]].mean(dim=(2, 3))  # global average pool
        return global_feature.float(), [features[layer].float() for layer in self.layers]

    def _layer_galleries(self) -> list[Tensor]:
        """Views ``[N, h·w, C]`` of the stored gallery, one per pyramid layer."""
        views, offset = [], 0
        for c, h, w in self.feature_shapes_:
            views.append(self.gallery[:, offset : offset + h * w * c].view(len(self.gallery), h * w, c))
            offset += h * w * c
        return views

    # --- fit: store the training features -------------------------------------------------------
    @torch.no_grad()
    def _fit(self, data: Dataset | DataLoader) -> None:
        dtype = GALLERY_DTYPES[self.gallery_dtype]
        global_features, galleries = [], []
        batches = iter_images(data, self.batch_size, self.device)  # one image size, so one gallery shape
        for images in progress_bar(batches, desc="SPADE fit", unit="batch", leave=False):
            global_feature, pyramid = self.extract(images)
            shapes = [tuple(f.shape[1:]) for f in pyramid]
            global_features.append(global_feature)
            # channels-last rows: image k's positions p are the gallery vectors F(x_k, p)
            rows = [f.flatten(2).transpose(1, 2).flatten(1) for f in pyramid]
            galleries.append(torch.cat(rows, 1).to(dtype))
        gallery = torch.cat(galleries)
        del galleries
        if not torch.isfinite(gallery).all():
            raise AdlearnError(f"features overflow {self.gallery_dtype}; use gallery_dtype='float32'")
        self.feature_shapes_ = [(c, h, w) for c, h, w in shapes]
        self.global_features = torch.cat(global_features)
        self.gallery = gallery
        n = len(gallery)
        self.k_ = min(self.k, n)
        if self.k > n:
            warnings.warn(f"SPADE: k={self.k} nearest images asked for but only {n} training images given; "
                          f"using all {n} (pass k ≤ {n} to silence this)", UserWarning, stacklevel=3)

    def _learned_shapes(self) -> dict[str, tuple[int, ...]]:
        n = len(self.global_features)
        return {"global_features": (n, self.global_features.shape[1]),
                "gallery": (n, sum(c * h * w for c, h, w in self.feature_shapes_))}

    # --- predict: Eq. 1, then Eq. 2 on the retrieved images -----------------------------------
    def retrieve(self, global_feature: Tensor) -> tuple[Tensor, Tensor]:
        """Image-level kNN: distances and indices ``[B, K]`` of the K nearest training images."""
        return nearest_neighbours(global_feature, self.global_features.unsqueeze(1), self.k_,
                                  chunk_size=self.chunk_size)

    def layer_maps(self, pyramid: list[Tensor], neighbours: Tensor) -> list[Tensor]:
        """Pixel-level kNN (Eq. 2): per layer, ``[B, h_l, w_l]`` mean distance to the κ nearest
        features among all positions of each image's retrieved training images ``neighbours [B, K]``."""
        maps = []
        for feature, gallery in zip(pyramid, self._layer_galleries()):
            b, c, h, w = feature.shape
            size = neighbours.shape[1] * gallery.shape[1]
            if self.kappa > size:
                raise AdlearnError(f"kappa={self.kappa} exceeds the {size} gallery features of this layer")
            queries = feature.flatten(2).transpose(1, 2)  # [B, h·w, C]
            per_image = [
                nearest_neighbours(q, gallery, self.kappa, rows=rows, chunk_size=self.chunk_size,
                                   return_index=False)[0].mean(1)
                for q, rows in zip(queries, neighbours)
            ]
            maps.append(torch.stack(per_image).view(b, h, w))
        return maps

    def _predict(self, images: Tensor) -> Prediction:
        global_feature, pyramid = self.extract(images)
        distances, neighbours = self.retrieve(global_feature)
        size = images.shape[-2:]
        layer_maps = [upsample(m, size) for m in self.layer_maps(pyramid, neighbours)]
        prediction = anomaly_prediction(torch.stack(layer_maps).mean(0), size, self.sigma)
        if self.image_score == "knn":
            prediction.score = distances.mean(1)  # Eq. 1
        return prediction
