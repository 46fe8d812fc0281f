"""DDAD — Anomaly Detection with Conditioned Denoising Diffusion Models
(Mousakhan, Brox & Tayyub, DAGM GCPR 2024, arXiv:2305.15956; code: arimousa/DDAD).

A diffusion denoiser ε_θ is trained on the nominal images of one category (DDPM loss, linear β
from 1e-4 to 0.02, T = 1000). At test time the image y is noised to T' = 250 and denoised back
with 10 DDIM steps (η = 1), each step pulled towards y itself:

    y_t = √ᾱ_t · y + √(1 − ᾱ_t) · ε_θ(x_t, t)
    ε̂  = ε_θ(x_t, t) − w · √(1 − ᾱ_t) · (y_t − x_t)                    (conditioning, "Eq. 7")

so the reconstruction x̂₀ keeps y's nominal content and repairs what the denoiser has never seen.
The anomaly map compares x̂₀ with y:

    f_d = Σ_{l∈{2,3}} up(1 − cos(φ_l(x̂₀), φ_l(y)))    (3×3-averaged features of a pretrained CNN)
    i_d = mean_RGB |x̂₀ − y|                              (pixels, in [-1, 1])
    A   = blur_σ=4(f_d + v · s · i_d),   image score = max A,

(adlearn's fast and book profiles standardise the map per pixel before the blur, see below),
and φ may first be *domain-adapted*: a trainable copy φ̂ is pulled, with AdamW (lr 1e-4), to
give the same features to a reconstruction x̂₀ (of x conditioned on another nominal image y,
w_DA = 3) and to y, while two λ-weighted terms keep it close to the frozen φ:

    L_DA = Σ_l (1 − cos(φ̂_l(x̂₀), φ̂_l(y))) + λ(1 − cos(φ̂_l(y), φ_l(y))) + λ(1 − cos(φ̂_l(x̂₀), φ_l(x̂₀)))

Notation (paper symbol → code):

    ====================  ==========================================================
    ε_θ(x_t, t)           ``self.unet`` via :func:`adlearn.diffusion.unet_epsilon`
    ᾱ_t                   ``self.alpha_bar[t]`` (DDPM's linear β, T = 1000)
    T'                    ``test_steps`` (250); the DDIM stride is ``skip`` (25)
    η                     ``eta``
    y, x_t, y_t, x̂₀      the input, the sample at step t, the noised input, the reconstruction
    w                     ``w`` (conditioning at test time); w_DA = ``w_da``
    φ_l, φ̂_l             ``feature_extractor`` (frozen copy / adapted), layers ``layers`` / ``da_layers``
    f_d, i_d              :meth:`DDAD.distance_maps` (feature and pixel distance)
    v, s                  ``v`` and the learned buffer ``pixel_scale``
    λ                     ``da_lambda``
    ====================  ==========================================================

(The equation labels in quotes follow a secondary summary of the paper and the author's issue
replies on arimousa/DDAD; they could not be checked against the paper's own numbering here.)

What adlearn does differently from the official code (reference/methods.md §4, §7.3), and why:

* **The pixel scale s is fixed at fit time.** The official code uses s = max f_d / max i_d over
  the *test batch* ("Eq. 9"), so an image's score depends on its neighbours and on the test batch
  size (issues #20, #30). adlearn computes the same ratio once, on held-out nominal images of the
  training set (the validation split), and stores it with the model.
* **Seeded noise, shared by the batch.** Sampling is stochastic (η = 1); every image draws the
  same noise sequence ``[1,C,H,W]`` from a generator seeded by ``seed``, so ``predict`` is
  reproducible and independent of the batch.
* **The first DDIM step is taken at the noise level the image was given** (t = 250, 225, …, 25,
  then the clean image); the official code noises to 250 but calls the network with t = 225 first.
* **An internal resolution** ``input_size`` for the denoiser (the paper: 256, the image size);
  the fast and book profiles denoise at 32–64 px. Both images are then brought back to the
  input's H×W before the backbone, so the feature map keeps a fine grid and the two images carry
  the same detail; maps are returned at the input's H×W.
* **Optionally, the map is standardised per pixel** (``standardize``, an adlearn addition; off in
  the paper profile): A = blur((f_d + v·s·i_d − μ_F) / (σ_F + 10⁻³·σ̄_F)), with μ_F and σ_F the
  per-pixel mean and std of the fused map over the nominal training images (σ̄_F: σ_F's mean over
  the image), fixed at fit time. A small denoiser reconstructs every nominal image worst at the
  same places (edges, borders, fine structure); at the book profile's budget those nominal errors
  drown the defects (``benchmarks/results/ddad_ablation``; the paper's profile, a 33 M UNet at
  256 px, was not measured with it). The per-pixel Gaussian is PaDiM's idea, applied to the
  distance instead of the features.
* Domain adaptation runs φ̂ once on x̂₀ and y concatenated (one forward pass, so it also runs
  under DDP); the official code makes two passes, so its BatchNorm sees the two halves apart.
* The denoiser and the domain adaptation are trained by :func:`adlearn.training.train` (one
  loop for CPU, GPU, multi-GPU DDP and mixed precision); the denoiser's best epoch is chosen on
  the validation split's loss, never on the test set.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..backbones import Pretrained
from ..batches import as_dataset, iter_images
from ..diffusion import (
    UNetConfig,
    alpha_bar_at,
    alpha_bar_table,
    ddim_sample,
    ddim_timesteps,
    epsilon_loss,
    q_sample,
    seeded_noise,
    to_signed,
    to_unit,
    unet_epsilon,
)
from ..env import progress_bar
from ..errors import AdlearnError
from ..ops import random_crops, resize, upsample
from ..prediction import Prediction, anomaly_prediction
from ..profiles import sigma_for
from ..training import Precision, split_validation, steps_per_epoch, train
from .base import AnomalyModel

__all__ = ["DDAD", "NUM_TRAIN_TIMESTEPS"]

NUM_TRAIN_TIMESTEPS = 1000
"""T, the length of the forward process (DDPM's)."""
FEATURE_REFERENCES = ("denoiser_view", "input")


class DDAD(AnomalyModel):
    """DDAD; constructor defaults are the paper's (MVTec AD config @4323a15, methods.md §4.1).

    Args:
        input_size: side of the square images the denoiser sees (paper: 256 = the image size).
        train_crop: side of the random square crops of the ``input_size`` view that the denoiser
            trains on (``None``, the paper: the whole view). The UNet is convolutional, so a
            denoiser trained on 64-px crops denoises the whole 256-px image at test time: full
            resolution for the cost of 64-px training steps (an adlearn addition).
        feature_reference: what φ compares x̂₀ with: ``"denoiser_view"``, y as the denoiser saw it
            (at ``input_size``, brought back to the image's size, so both carry the same detail),
            or ``"input"``, y itself. The two differ only when ``input_size`` < the image size.
        denoiser: the UNet's architecture, a :class:`~adlearn.diffusion.UNetConfig` or a dict of
            its fields (paper: 64 channels × (1,1,2,2,4,4), 2 blocks per level, attention at
            levels 3–5 = 32², 16², 8², 4 heads, no dropout: ``UNetConfig()``); stored as a dict.
        epochs, lr, weight_decay, batch_size: denoiser training (paper: checkpoint at 2000 epochs,
            Adam 3e-4 with L2 0.05, batch 32; the loss sums over pixels, as the official code).
        max_steps: at most this many optimiser steps of the denoiser (``None``, the paper: only
            ``epochs`` counts): the epochs are cut to ``max_steps`` // steps per epoch, so a larger
            training set gets fewer epochs instead of a longer fit (an adlearn addition).
        val_fraction: share of the training images held out to pick the best epoch and to fix
            the pixel scale s (never test images).
        mixed_precision: ``"auto"`` (fp16 on CUDA), ``"no"``, ``"fp16"`` or ``"bf16"``.
        test_steps: T', the step the test image is noised to (paper 250).
        skip: DDIM stride (paper 25, so 10 steps).
        eta: DDIM stochasticity η (paper 1).
        w: conditioning strength at test time (paper default 2; 0 = plain denoising).
        v: weight of the pixel distance in the fused map (paper 1 for MVTec AD).
        pixel_scale_statistic: how s is fixed on held-out nominal images: ``"max"`` (the official
            ratio of the maxima, which the official code takes over the test batch) or ``"mean"``
            (the ratio of the means: on nominal images both terms then weigh the same).
        standardize: standardise the fused map per pixel by its mean and std over the nominal
            training images (an adlearn addition; the paper: ``False``). The model then scores
            images of the size it was fitted on only.
        backbone, layers: the feature extractor and the layers of f_d (paper: WRN101-2, layer2–3).
        pretrained: ImageNet weights: ``True``, ``"auto"`` (loud fallback to random) or ``False``.
        sigma: std (pixels, at the input's resolution) of the Gaussian smoothing of the map.
        da_epochs: domain-adaptation epochs of the feature extractor (paper config: 4; 0 = off).
        w_da, da_lambda, da_lr, da_batch_size, da_layers: domain adaptation (paper: 3, 0.1,
            AdamW 1e-4, 16 — each batch split in halves x and y, layer1–3).
        seed: seeds the UNet's initialisation, the training and the sampling noise.
        device: ``None`` = CUDA when present, else CPU.
    """

    name = "DDAD"
    profiles = {
        # a 0.3 M-parameter UNet denoising at 32 px, trained for seconds; no domain adaptation
        "fast": {"input_size": 32, "epochs": 60, "lr": 2e-3, "batch_size": 8,
                 "denoiser": {"base_channels": 16, "channel_mults": (1, 2, 2), "layers_per_block": 1,
                              "attention_levels": ()},
                 "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": sigma_for(128),
                 "da_epochs": 0, "standardize": True},
        # a 1.2 M-parameter UNet denoising at 64 px (maps come back at 256 px), 1200 optimiser steps
        # (300 epochs of 80 images; 300 images get 75 epochs, not a 4× longer fit);
        # ≈ 15 min per category on a 2-core CPU.
        # No domain adaptation: at this budget 2 epochs of it cost 0.17 image AUROC on 300 ELPV cells
        # (benchmarks/results/ddad_ablation/elpv300.json), 0.07 on the capsule, and moved 80 ELPV
        # cells by 0.01. The map standardised per pixel: on the same denoisers it lifted the image AUROC
        # of the capsule (0.53 -> 0.85), fabric, washer and three ELPV denoisers (by 0.03-0.08) and the
        # AUPRO of all four synthetic categories (benchmarks/results/ddad_ablation/)
        "book": {"input_size": 64, "epochs": 300, "max_steps": 1200, "lr": 1e-3, "batch_size": 16,
                 "denoiser": {"base_channels": 16, "channel_mults": (1, 2, 4, 4), "layers_per_block": 1,
                              "attention_levels": (3,)},
                 "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "da_epochs": 0,
                 "standardize": True},
        # the paper profile is the constructor: 33 M UNet at 256 px, WRN101-2, w = 2, DA
    }
    _learned_attrs = ("pretrained_", "weights_", "train_loss_", "val_loss_", "da_loss_")

    def __init__(
        self,
        input_size: int = 256,
        train_crop: int | None = None,
        denoiser: UNetConfig | Mapping[str, Any] = UNetConfig(),
        epochs: int = 2000,
        max_steps: int | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.05,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        mixed_precision: Precision = "auto",
        test_steps: int = 250,
        skip: int = 25,
        eta: float = 1.0,
        w: float = 2.0,
        v: float = 1.0,
        pixel_scale_statistic: str = "max",
        standardize: bool = False,
        backbone: str = "wide_resnet101_2.tv_in1k",
        layers: tuple[int, ...] = (2, 3),
        feature_reference: str = "denoiser_view",
        pretrained: Pretrained = True,
        sigma: float = 4.0,
        da_epochs: int = 4,
        w_da: float = 3.0,
        da_lambda: float = 0.1,
        da_lr: float = 1e-4,
        da_batch_size: int = 16,
        da_layers: tuple[int, ...] = (1, 2, 3),
        seed: int = 42,
    ) -> None:
        self.denoiser = UNetConfig.from_params(denoiser).params()  # plain types: safe to save
        self.register_buffer("pixel_scale", None)
        self.register_buffer("map_statistics", None)  # [2,H,W]: μ_F and σ_F of the fused map; [0] when off

    def _check_params(self) -> None:
        UNetConfig(**self.denoiser).check_size(self.input_size)
        if self.train_crop is not None:
            if not 0 < self.train_crop <= self.input_size:
                raise AdlearnError(f"train_crop={self.train_crop} must lie in 1..input_size={self.input_size}")
            UNetConfig(**self.denoiser).check_size(self.train_crop)
        if self.max_steps is not None and self.max_steps < 1:
            raise AdlearnError(f"max_steps must be ≥ 1 (or None: train for `epochs`), got {self.max_steps}")
        if self.pixel_scale_statistic not in ("max", "mean"):
            raise AdlearnError(f"pixel_scale_statistic must be 'max' or 'mean', got {self.pixel_scale_statistic!r}")
        if self.feature_reference not in FEATURE_REFERENCES:
            raise AdlearnError(f"feature_reference must be one of {FEATURE_REFERENCES}, got {self.feature_reference!r}")
        if not 0 < self.test_steps < NUM_TRAIN_TIMESTEPS:
            raise AdlearnError(f"test_steps={self.test_steps} must lie in 1..{NUM_TRAIN_TIMESTEPS - 1} (T = 1000)")

    @classmethod
    def _upgrade_state(cls, state: dict[str, Any]) -> dict[str, Any]:
        """Files written before ``standardize`` existed did not standardise: no map statistics."""
        state.setdefault("map_statistics", torch.empty(0))
        return state

    @classmethod
    def _upgrade_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """adlearn 0.1 files stored the UNet's six fields as separate arguments."""
        fields = ("base_channels", "channel_mults", "layers_per_block", "attention_levels", "heads", "dropout")
        if "denoiser" not in params and any(f in params for f in fields):
            params["denoiser"] = {f: params.pop(f) for f in fields if f in params}
        return params

    # --- sub-modules ---------------------------------------------------------------------------
    def _extractor_layers(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.layers) | set(self.da_layers)))  # shallow layers cost nothing extra

    def _build(self, load_weights: bool) -> None:
        self.unet = UNetConfig(**self.denoiser).build(self.input_size, seed=self.seed)
        self._build_feature_extractor(self._extractor_layers(), load_weights)
        self.register_buffer("alpha_bar", alpha_bar_table(NUM_TRAIN_TIMESTEPS), persistent=False)  # β 1e-4 → 0.02

    @property
    def trajectory(self) -> list[tuple[int, int]]:
        """The test-time DDIM steps (t, s): T', T'−skip, … > 0 (read from ``test_steps`` and ``skip``)."""
        return ddim_timesteps(self.test_steps, self.skip)

    def features(self, images: Tensor, layers: tuple[int, ...] | None = None,
                 network: nn.Module | None = None) -> list[Tensor]:
        """Features of ``layers`` (timm indices; default: those of f_d) of images in [0,1]; ``network``: φ."""
        layers = self.layers if layers is None else layers
        every = (network or self.feature_extractor)(images)
        position = {layer: i for i, layer in enumerate(self._extractor_layers())}
        return [every[position[layer]] for layer in layers]

    # --- fit: the denoiser, then domain adaptation, then the pixel scale ------------------------
    def _fit(self, data: Dataset | DataLoader) -> None:
        history = train(  # a DataLoader is used as given; a Dataset gets a validation split
            self.unet, self.denoising_loss, data, epochs=self.epochs_for(data), lr=self.lr,
            batch_size=self.batch_size, optimizer="adam", weight_decay=self.weight_decay, grad_clip=None,
            mixed_precision=self.mixed_precision, val_fraction=self.val_fraction, seed=self.seed,
            device=self.device, desc="DDAD denoiser",
        )
        self.train_loss_, self.val_loss_, self.da_loss_ = history.train_loss, history.val_loss, []
        self.adapt_features(data, self.da_epochs)

    def epochs_for(self, data: Dataset | DataLoader) -> int:
        """The denoiser's epochs on ``data``: ``epochs``, cut to ``max_steps`` // steps per epoch."""
        if self.max_steps is None:
            return self.epochs
        per_epoch = steps_per_epoch(data, self.batch_size, self.val_fraction, self.seed)
        return max(1, min(self.epochs, self.max_steps // per_epoch))

    def adapt_features(self, data: Dataset | DataLoader | Tensor, epochs: int) -> DDAD:
        """Domain-adapt the feature extractor for ``epochs`` on nominal ``data``, then fix the pixel scale.

        ``fit`` calls it with ``da_epochs`` (0: only the pixel scale). Called again by hand, it
        adapts further, anchored (the λ terms) to the extractor as it is then; ``len(da_loss_)``
        counts the epochs the extractor has had. The pixel scale s is fixed on the validation
        split of ``data`` (the images the denoiser did not train on); with ``standardize``, the
        map statistics are then measured on all of ``data`` (a per-pixel std needs every image).
        """
        if not self._built:
            raise AdlearnError("DDAD is not fitted yet: call .fit(train_data) before adapt_features")
        data = as_dataset(data)
        data = data.dataset if isinstance(data, DataLoader) else data
        train_set, held_out = split_validation(data, self.val_fraction, self.seed)  # the split train() makes
        if epochs > 0:
            self._adapt(train_set, epochs)
        self.pixel_scale = self.estimate_pixel_scale(held_out if held_out is not None else train_set)
        off = self.pixel_scale.new_empty(0)
        self.map_statistics = self.estimate_map_statistics(data) if self.standardize else off
        return self

    def denoising_loss(self, unet: nn.Module, images: Tensor) -> Tensor:
        """The DDPM loss on images in [0,1], at ``input_size`` (random ``train_crop`` crops of it, if
        set) and in [-1, 1], summed over pixels."""
        view = self.denoiser_view(images)
        if self.train_crop is not None:
            view = random_crops(view, self.train_crop)
        return epsilon_loss(unet, view, self.alpha_bar, reduction="sum")

    def _adapt(self, train_set: Dataset, epochs: int) -> None:
        """Fine-tune φ̂ (this model's extractor) against a frozen copy φ with L_DA (methods.md §4.5)."""
        if len(train_set) < 2:
            raise AdlearnError("domain adaptation pairs training images: it needs ≥ 2; set da_epochs=0")
        frozen = copy.deepcopy(self.feature_extractor).eval()
        adapted = self._trainable_part(self.feature_extractor)
        history = train(
            adapted, lambda network, images: self.adaptation_loss(network, frozen, images), train_set,
            epochs=epochs, lr=self.da_lr, batch_size=self.da_batch_size, optimizer="adamw",
            weight_decay=0.01, grad_clip=None, mixed_precision=self.mixed_precision, val_fraction=0,
            seed=self.seed, device=self.device, desc="DDAD domain adaptation",
        )
        adapted.requires_grad_(False).eval()
        self.da_loss_ = [*self.da_loss_, *history.train_loss]

    def _trainable_part(self, extractor: nn.Module) -> nn.Module:
        """Make trainable the parameters that L_DA reaches (timm keeps blocks past the last used layer;
        DDP refuses parameters without a gradient, and there is nothing to learn in them)."""
        extractor.requires_grad_(True)
        probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
        sum(f.sum() for f in self.features(probe, self.da_layers, extractor)).backward()
        for parameter in extractor.parameters():
            parameter.requires_grad_(parameter.grad is not None)
            parameter.grad = None
        return extractor

    def adaptation_loss(self, adapted: nn.Module, frozen: nn.Module, images: Tensor) -> Tensor:
        """L_DA on a batch split in halves: targets y and inputs x, reconstructed towards y with w_DA."""
        half = len(images) // 2
        if half == 0:
            raise AdlearnError("a domain-adaptation batch needs ≥ 2 images; raise da_batch_size")
        size = images.shape[-2:]
        y = self.denoiser_view(images[:half])
        x = self.denoiser_view(images[half : 2 * half])
        with torch.no_grad():
            x0_hat = self.denoise(x, y, self.w_da, seeded=False)
        pair = torch.cat([self._backbone_view(x0_hat, size), self._backbone_view(y, size)])
        ours = self.features(pair, self.da_layers, adapted)
        with torch.no_grad():
            theirs = self.features(pair, self.da_layers, frozen)
        loss = pair.new_zeros(())
        for f_hat, f in zip(ours, theirs):
            r_hat, y_hat, r, y_ref = *f_hat.flatten(1).chunk(2), *f.flatten(1).chunk(2)
            loss = loss + (1 - F.cosine_similarity(r_hat, y_hat)).mean()
            loss = loss + self.da_lambda * (1 - F.cosine_similarity(y_hat, y_ref)).mean()
            loss = loss + self.da_lambda * (1 - F.cosine_similarity(r_hat, r)).mean()
        return loss

    @torch.no_grad()
    def estimate_pixel_scale(self, nominal: Dataset) -> Tensor:
        """s = max f_d / max i_d over ``nominal`` images (the official batch ratio, fixed once);
        with ``pixel_scale_statistic="mean"``, s = mean f_d / mean i_d (both terms equal on average).

        Returns s under the current settings and leaves ``pixel_scale`` as it is: ``fit`` (through
        :meth:`adapt_features`) stores it, measured on the held-out training images.
        """
        feature_stat, pixel_stat = 0.0, 0.0
        batches = iter_images(nominal, self.batch_size, self.device)
        for images in progress_bar(batches, desc="DDAD pixel scale", unit="batch", leave=False):
            feature, pixel, _ = self.distance_maps(images)
            if self.pixel_scale_statistic == "max":
                feature_stat, pixel_stat = max(feature_stat, feature.max().item()), max(pixel_stat, pixel.max().item())
            else:
                feature_stat, pixel_stat = feature_stat + feature.sum().item(), pixel_stat + pixel.sum().item()
        if pixel_stat <= 0:
            raise AdlearnError("the reconstructions equal the nominal images exactly: cannot scale i_d")
        return torch.tensor(feature_stat / pixel_stat, device=self.device)

    @torch.no_grad()
    def estimate_map_statistics(self, nominal: Dataset) -> Tensor:
        """μ_F and σ_F (``[2,H,W]``): the mean and std of the fused map f_d + v·s·i_d at each pixel,
        over ``nominal`` images."""
        if len(nominal) < 2:
            raise AdlearnError(f"standardize needs ≥ 2 nominal training images for a per-pixel std, got "
                               f"{len(nominal)}; add images or set standardize=False")
        total, squares, count = 0.0, 0.0, 0
        batches = iter_images(nominal, self.batch_size, self.device)
        for images in progress_bar(batches, desc="DDAD map statistics", unit="batch", leave=False):
            self._check_image_size(images, fitting=count == 0)
            fused = self.fused_map(images)[0].double()  # float64: the variance subtracts two large sums
            total, squares, count = total + fused.sum(0), squares + fused.square().sum(0), count + len(images)
        mean = total / count
        std = ((squares - count * mean.square()) / (count - 1)).clamp_min(0).sqrt()
        return torch.stack([mean, std]).float()

    def _learned_shapes(self) -> dict[str, tuple[int, ...]]:
        size = self.__dict__.get("image_size_") if self.standardize else None  # estimate_map_statistics sets it
        return {"pixel_scale": (), "map_statistics": (0,) if size is None else (2, *size)}

    # --- conditioned denoising (Section 3.2) ----------------------------------------------------
    def denoise(self, x: Tensor, y: Tensor, w: float, *, seeded: bool = True) -> Tensor:
        """x̂₀: ``x`` (in [-1, 1]) noised to T' and denoised with DDIM, each step conditioned on ``y``.

        ``seeded``: the noise comes from ``seed`` and is shared by the batch (``predict``);
        otherwise from torch's RNG (domain adaptation).
        """
        trajectory = self.trajectory
        noises = seeded_noise(self.seed, (1, *x.shape[1:]), 1 + len(trajectory), x.device) if seeded else None
        start = trajectory[0][0]
        x_t = q_sample(x, start, self.alpha_bar, noises[0] if seeded else torch.randn_like(x))
        return ddim_sample(lambda x_t, t: self.conditioned_epsilon(x_t, t, y, w), x_t, trajectory,
                           self.alpha_bar, self.eta, noises[1:] if seeded else None)

    def conditioned_epsilon(self, x_t: Tensor, t: int, y: Tensor, w: float) -> Tensor:
        """ε̂ = ε_θ(x_t,t) − w·√(1−ᾱ_t)·(y_t − x_t), with y_t = √ᾱ_t·y + √(1−ᾱ_t)·ε_θ(x_t,t) ("Eq. 7")."""
        eps = unet_epsilon(self.unet, x_t, t)
        alpha_bar_t = alpha_bar_at(self.alpha_bar, t)
        y_t = alpha_bar_t.sqrt() * y + (1 - alpha_bar_t).sqrt() * eps
        return eps - w * (1 - alpha_bar_t).sqrt() * (y_t - x_t)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, w: float | None = None) -> Tensor:
        """The conditioned reconstruction of images in [0,1] (``w=0``: unconditioned), at their H×W."""
        self._check_fitted()
        images = images.to(self.device)
        y = self.denoiser_view(images)
        return resize(to_unit(self.denoise(y, y, self.w if w is None else w)), images.shape[-2:]).clamp(0, 1)

    # --- the anomaly map (Section 3.3) ----------------------------------------------------------
    def denoiser_view(self, images: Tensor) -> Tensor:
        """Images in [0,1] as the denoiser sees them: at ``input_size``, in [-1, 1]."""
        return to_signed(resize(images, self.input_size))

    def _backbone_view(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """An image in [-1, 1] at ``input_size`` as the backbone sees it: in [0,1], at the input's H×W."""
        return resize(to_unit(x), size)

    @torch.no_grad()
    def distance_maps(self, images: Tensor, x0_hat: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Feature distance f_d, pixel distance i_d (``[B,H,W]``) and x̂₀ (``[B,3,H,W]``) of images in [0,1].

        All three at the input's H×W; x̂₀ in [0,1]. ``x0_hat``: a reconstruction already made by
        :meth:`denoise` (in [-1, 1], at ``input_size``), to compare it in several ways.
        """
        size = images.shape[-2:]
        y = self.denoiser_view(images)
        x0_hat = self.denoise(y, y, self.w) if x0_hat is None else x0_hat
        pixel = upsample((x0_hat - y).abs().mean(1), size)
        reconstruction = self._backbone_view(x0_hat, size)
        target = self._backbone_view(y, size) if self.feature_reference == "denoiser_view" else images
        feature = torch.zeros_like(pixel)
        for f_r, f_y in zip(self.features(reconstruction, self.layers), self.features(target, self.layers)):
            patch_r, patch_y = F.avg_pool2d(f_r, 3, 1, 1), F.avg_pool2d(f_y, 3, 1, 1)  # 3×3 neighbourhood
            feature += upsample(1 - F.cosine_similarity(patch_r, patch_y, dim=1), size)
        return feature, pixel, reconstruction

    def fused_map(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """f_d + v·s·i_d (``[B,H,W]``, before smoothing) and x̂₀ of images in [0,1]."""
        feature, pixel, reconstruction = self.distance_maps(images)
        return feature + self.v * self.pixel_scale * pixel, reconstruction

    def standardized(self, fused: Tensor) -> Tensor:
        """(fused − μ_F) / (σ_F + 10⁻³·σ̄_F) per pixel; the floor keeps a pixel every nominal map agrees on
        (a constant border) from dividing by zero."""
        mean, std = self.map_statistics
        return (fused - mean) / (std + 1e-3 * std.mean())

    def _check_standardizable(self, images: Tensor) -> None:
        if self.map_statistics is None or self.map_statistics.numel() == 0:
            raise AdlearnError("this DDAD has no map statistics (standardize was off when it was fitted): "
                               "call model.adapt_features(train_data, epochs=0) to measure them, or refit")
        self._check_image_size(images)

    def _predict(self, images: Tensor) -> Prediction:
        if self.standardize:
            self._check_standardizable(images)
        fused, reconstruction = self.fused_map(images)
        anomaly = self.standardized(fused) if self.standardize else fused
        return anomaly_prediction(anomaly, images.shape[-2:], self.sigma, reconstruction=reconstruction)
