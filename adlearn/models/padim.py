"""PaDiM — a Patch Distribution Modeling framework (Defard et al., ICPR-W 2020, arXiv:2011.08785).

Every patch position (i, j) of the nominal images gets a multivariate Gaussian over pretrained
CNN features; a test patch is scored by its Mahalanobis distance to the Gaussian of its position.

1. Embedding: layers 1–3 of an ImageNet CNN, coarser layers upsampled to layer 1's grid and
   concatenated, then a *random* subset of d channels (Rd100 for ResNet18, Rd550 for WRN50-2).
2. Fit, per position: μ_ij = mean of x^k_ij over the N training images and
   Σ_ij = 1/(N−1) Σ_k (x^k_ij − μ_ij)(x^k_ij − μ_ij)ᵀ + ε·I            (Eq. 1, ε = 0.01).
3. Score: M(x_ij) = sqrt((x_ij − μ_ij)ᵀ Σ_ij⁻¹ (x_ij − μ_ij))           (Eq. 2),
   upsampled to the image, smoothed by a Gaussian (σ = 4); image score = max of the map.

What adlearn does differently from the popular code (reference/methods.md §2, §7.1), and why:

* Σ_ij is accumulated from streamed sufficient statistics (Chan et al.'s pairwise update, in
  place with ``baddbmm_``), so fit memory does not grow with N — the public code stacks every
  embedding and runs out of memory on large or high-resolution sets.
* Σ_ij⁻¹ is never formed: Σ_ij = L Lᵀ (Cholesky) and we keep W = L⁻¹, so M = ‖W (x − μ)‖;
  this is exact, numerically better, and a batched ``bmm`` on the model's device at test time.
* Only the selected channels are upsampled (identical to concatenate-then-select).
* No min–max normalisation over the test set: a score depends on its own image only.
* Fitting splits across processes: each process streams its shard, then the statistics are
  merged exactly by all-reduce (below), so N processes fit what one process would.

Several processes (CPUs with ``gloo``, GPUs with ``nccl``): launch the same script N times with
``torchrun --nproc_per_node N fit.py`` or ``accelerate launch --num_processes N fit.py``::

    import torch.distributed as dist
    from adlearn.datasets import MVTecAD
    from adlearn.models import PaDiM
    dist.init_process_group("gloo")         # accelerate.Accelerator() does this for you
    model = PaDiM().fit(MVTecAD(root, "bottle", "train"))  # every process ends with the same model
    if dist.get_rank() == 0:
        model.save("padim.pt")

Given a Dataset (or tensor), process r of W fits images r, r + W, r + 2W, … . A DataLoader is
taken to be sharded already (a ``DistributedSampler``, ``accelerate``'s ``prepare``); one that
gives every process the whole data set is an error. A ``DistributedSampler`` without
``drop_last`` pads the shards by repeating up to W − 1 images, which a Dataset avoids.

Backbones (``PAPER_D``): ResNet18 → Rd100 and WideResNet50-2 → Rd550 are the paper's main
models (layer1–3, 448 and 1,792 channels). Its EfficientNet-B5 row (Table V) takes the embedding
from the outputs of blocks 7, 20 and 26 of B5's 39 MBConv blocks (levels 2, 4 and 5): the end of
the stride-4 stage and the first and last block of the stride-16 stage, all channels (no random
selection). adlearn does not offer that recipe: timm's feature pyramids return stage outputs only
(``out_indices``), so block 20 would need a forward hook, and two thirds of that embedding would
come from one resolution. adlearn's offline default is ``tf_efficientnet_lite0`` with layers 1–3,
the same stage outputs as for ResNets (strides 4/8/16, 24 + 40 + 112 = 176 channels), with d = 100.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..backbones import Pretrained
from ..batches import iter_images
from ..distributed import all_reduce_moments, check_sharded, shard, world_size
from ..env import progress_bar
from ..errors import AdlearnError
from ..prediction import Prediction, anomaly_prediction
from ..profiles import sigma_for
from .base import AnomalyModel

__all__ = ["PaDiM", "PatchGaussian"]

PAPER_D = {"resnet18": 100, "wide_resnet50_2": 550}
"""The paper's number of random channels per backbone (Rd100, Rd550); other backbones: 100."""


class PatchGaussian:
    """Streaming per-position mean and scatter matrix: memory O(P·d²), independent of N.

    ``update`` merges a batch with the running statistics (Chan, Golub & LeVeque 1979):
    M2 ← M2 + M2_batch + δ δᵀ · n·b/(n+b), with δ the difference of the two means.
    """

    def __init__(self, positions: int, dim: int, device: torch.device) -> None:
        self.n = 0
        self.mean = torch.zeros(positions, dim, device=device)
        self.m2 = torch.zeros(positions, dim, dim, device=device)

    def update(self, x: Tensor) -> None:
        """Add a batch ``x`` of shape ``[P, b, d]`` (positions, images, channels)."""
        b = x.shape[1]
        batch_mean = x.mean(dim=1)
        centred = x - batch_mean.unsqueeze(1)
        delta = batch_mean - self.mean
        total = self.n + b
        self.m2.baddbmm_(centred.transpose(1, 2), centred)
        self.m2.baddbmm_(delta.unsqueeze(2), delta.unsqueeze(1), alpha=self.n * b / total)
        self.mean += delta * (b / total)
        self.n = total

    def all_reduce(self) -> None:
        """Merge the statistics of every process into the whole data set's (exact, by Chan's update)."""
        self.n, self.mean, self.m2 = all_reduce_moments(self.n, self.mean, self.m2)

    def covariance(self, epsilon: float) -> Tensor:
        """Σ_ij = M2 / (N − 1) + ε·I (Eq. 1), computed in place over the scatter buffer."""
        if self.n < 2:
            raise AdlearnError(f"PaDiM needs at least 2 training images to estimate a covariance, got {self.n}")
        cov = self.m2.div_(self.n - 1)
        cov.diagonal(dim1=1, dim2=2).add_(epsilon)
        return cov


def whitening_factor(cov: Tensor, chunk: int = 256) -> Tensor:
    """W = L⁻¹ with Σ = L Lᵀ, so that (x − μ)ᵀ Σ⁻¹ (x − μ) = ‖W (x − μ)‖²; overwrites ``cov``.

    Factorised in float64 chunks of positions: a batched ``torch.linalg.inv`` hung in MKL on
    CPU, and Cholesky is the stable route for symmetric positive-definite matrices anyway.
    """
    eye = torch.eye(cov.shape[-1], dtype=torch.float64, device=cov.device)
    for start in range(0, cov.shape[0], chunk):
        block = cov[start : start + chunk].double()
        lower, info = torch.linalg.cholesky_ex(block)
        if info.any():
            raise AdlearnError("a covariance is not positive definite; increase epsilon (default 0.01)")
        cov[start : start + chunk] = torch.linalg.solve_triangular(lower, eye, upper=False).to(cov.dtype)
    return cov


class PaDiM(AnomalyModel):
    """PaDiM anomaly detection; constructor defaults are the paper's (ResNet18, Rd100, ε=0.01, σ=4).

    Args:
        backbone: timm model name with its weight tag: the paper's torchvision weights are
            ``"resnet18.tv_in1k"`` and ``"wide_resnet50_2.tv_in1k"`` (timm's bare names load other
            weights); ``"tf_efficientnet_lite0"`` installs offline.
        layers: timm ``out_indices`` of the feature pyramid (1, 2, 3 = ResNet layer1–3).
        d: number of randomly selected channels; ``None`` = the paper's value for the backbone.
        epsilon: ε added to the covariance diagonal (Eq. 1).
        sigma: std (pixels) of the Gaussian smoothing of the anomaly map.
        pretrained: ImageNet weights: ``True`` (error if unavailable), ``"auto"`` (loud fallback to
            random weights), ``False``.
        seed: seed of the random channel selection (saved with the model).
        batch_size: images per forward pass.
        device: ``None`` = CUDA when present, else CPU.
    """

    name = "PaDiM"
    profiles = {
        "fast": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": sigma_for(128)},
        "book": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto"},
        "paper": {"backbone": "wide_resnet50_2.tv_in1k"},
    }
    _learned_attrs = ("pretrained_", "weights_", "n_train_")

    def __init__(
        self,
        backbone: str = "resnet18.tv_in1k",
        layers: tuple[int, ...] = (1, 2, 3),
        d: int | None = None,
        epsilon: float = 0.01,
        sigma: float = 4.0,
        pretrained: Pretrained = True,
        seed: int = 1024,
        batch_size: int = 32,
    ) -> None:
        self.register_buffer("channel_idx", None)
        self.register_buffer("mean", None)
        self.register_buffer("whitening", None)

    def _build(self, load_weights: bool) -> None:
        self._build_feature_extractor(self.layers, load_weights)

    # --- the embedding of Section 3.1 --------------------------------------------------------
    def _dimension(self) -> int:
        """d, the number of selected channels (the paper's for the backbone when ``d=None``)."""
        return self.d if self.d is not None else PAPER_D.get(self.backbone.split(".")[0], 100)

    def _select_channels(self) -> Tensor:
        total = sum(self.feature_extractor.channels)
        d = self._dimension()
        if not 0 < d <= total:
            raise AdlearnError(f"d={d} must lie in 1..{total} (the channels of layers {self.layers} of {self.backbone})")
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(total, generator=generator)[:d].sort().values

    def embed(self, images: Tensor) -> Tensor:
        """The patch embeddings ``[B, d, h, w]`` on layer 1's grid (concatenate, then select).

        The result is stored channels-last: each position's d values are contiguous, which is
        the layout the per-position statistics need (≈ 10× faster than a transpose afterwards).
        """
        features = self.feature_extractor(images)
        grid = features[0].shape[-2:]
        parts, offset = [], 0
        for feature in features:
            start, offset = offset, offset + feature.shape[1]
            local = self.channel_idx[(self.channel_idx >= start) & (self.channel_idx < offset)] - start
            if len(local):  # a small d may draw no channel from a layer
                selected = feature[:, local].contiguous(memory_format=torch.channels_last)
                parts.append(F.interpolate(selected, size=grid, mode="nearest"))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _by_position(embedding: Tensor) -> Tensor:
        """``[B, d, h, w]`` → ``[P, B, d]`` (P = h·w positions), contiguous."""
        return embedding.flatten(2).permute(2, 0, 1).contiguous()

    # --- fit: the Gaussian of Eq. 1 ----------------------------------------------------------
    @torch.no_grad()
    def _fit(self, data: Dataset | DataLoader) -> None:
        self.channel_idx = self._select_channels().to(self.device)
        stats: PatchGaussian | None = None
        batches = iter_images(shard(data), self.batch_size, self.device)
        for images in progress_bar(batches, desc="PaDiM fit", unit="batch", leave=False):
            self._check_image_size(images, fitting=stats is None)
            embedding = self.embed(images)
            b, d, h, w = embedding.shape
            stats = stats or PatchGaussian(h * w, d, self.device)
            stats.update(self._by_position(embedding))
        if world_size() > 1:
            check_sharded(data, stats.n, self.device)
            stats.all_reduce()
        self.n_train_ = stats.n
        self.mean = stats.mean
        self.whitening = whitening_factor(stats.covariance(self.epsilon))

    def _learned_shapes(self) -> dict[str, tuple[int, ...]]:
        d, positions = self._dimension(), len(self.mean)
        return {"channel_idx": (d,), "mean": (positions, d), "whitening": (positions, d, d)}

    # --- predict: the Mahalanobis distance of Eq. 2 -------------------------------------------
    def mahalanobis(self, embedding: Tensor) -> Tensor:
        """M(x_ij) for an embedding ``[B, d, h, w]`` → ``[B, h, w]``, batched over positions."""
        b, _, h, w = embedding.shape
        centred = self._by_position(embedding) - self.mean.unsqueeze(1)  # [P, B, d]
        whitened = torch.bmm(centred, self.whitening.transpose(1, 2))  # W (x − μ), per position
        return whitened.pow(2).sum(-1).sqrt().T.reshape(b, h, w)

    def _predict(self, images: Tensor) -> Prediction:
        self._check_image_size(images)
        distances = self.mahalanobis(self.embed(images))  # Eq. 2 on layer 1's grid
        return anomaly_prediction(distances, images.shape[-2:], self.sigma)
