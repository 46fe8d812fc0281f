"""Convolutional autoencoder with an L2 or SSIM loss (Bergmann et al., VISAPP 2019, arXiv:1807.02011).

Bergmann, Löwe, Fauser, Sattlegger and Steger, "Improving Unsupervised Defect Segmentation by
Applying Structural Similarity to Autoencoders" — the reconstruction baselines (AE-L2, AE-SSIM) of
the MVTec AD benchmark. An encoder E squeezes the image through a small bottleneck and a decoder
D redraws it; trained on nominal images only, D∘E is hoped to redraw a defect as nominal, so the
residual between an image and its reconstruction localises the defect:

    x̂ = D(E(x)),  z = E(x) ∈ R^{d × s × s}   (d = latent_dim, s = latent_size; the paper: d=100, s=1)
    L2 loss:    L(x) = 1/(C·H·W) Σ_{c,i,j} (x − x̂)²_{cij}                                   (1)
    SSIM loss:  L(x) = 1/(H·W) Σ_{ij} (1 − SSIM(x, x̂)_{ij})   (11×11 window, Wang et al. Eq. 13)   (2)
    residual:   r(x)_{ij} = mean_c (x − x̂)²_{cij}   or   1 − mean_c SSIM(x, x̂)_{cij}            (3)
    map, score: A(x) = G_σ * r(x) (upsampled to the input),   s(x) = max_{ij} A(x)_{ij}          (4)

The loss is the mean of the residual map, so the model is trained on exactly what it scores.
Architecture (Bergmann et al.'s 128-px encoder, generalised to any input of side 8·2ⁿ): n stages
of a 4×4 stride-2 convolution (a 3×3 one after it in the inner stages), widths b, …, b, 2b, 4b
(b = ``base_width``, 32 in the paper); then 3×3 convolutions to 2b and b channels and a
(9−s)×(9−s) convolution from the 8×8 grid to the s×s×d bottleneck; LeakyReLU(0.2); the decoder
mirrors it with transposed convolutions and ends in a sigmoid, so x̂ ∈ [0, 1]. A code grid
(s > 1) is computed from the 8×8×b grid, so at most 64·b of its s²·d numbers are independent.

What adlearn does differently, and why:

* Colour images (the paper trains on grey ones); SSIM is averaged over the channels.
* The network sees ``input_size`` × ``input_size`` images: inputs are resized to it and the
  residual map is upsampled back, so maps are at the input's resolution as the contract asks,
  while a CPU can train a small input (the fast profile uses 64 px, the book profile 128 px,
  both with b = 16).
* He initialisation for the LeakyReLU layers: with PyTorch's default the signal shrinks ~25-fold
  through the plain stack and training often stalls at the mean image.
* The residual map is smoothed (σ = 4 px at 256 px, like PaDiM) and the image score is its
  maximum, the protocol of every adlearn model (the official MVTec evaluation also scores an
  image by the max of its map). The paper instead thresholds the raw map.
* The training images are loaded once, at ``input_size``, and kept in memory; augmentation
  warps them at that size.
* Training uses the package's one loop (:func:`adlearn.training.train`): Adam, a validation split
  carved from the *training* images (the best epoch on it is kept), optional early stopping,
  seeded augmentation (:class:`adlearn.augment.Augment`), mixed precision on GPU.
* Defaults are the paper-profile settings: 256 px, batch 32, Adam with lr 1e-4, 100 epochs,
  ±2° rotations and ±2 % shifts (methods.md §1: PaDiM's baseline recipe; the MindSpore SSIM-AE
  config uses weight decay 1e-5 and random crops).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..augment import Augment
from ..env import seeded
from ..errors import AdlearnError
from ..ops import gaussian_blur, resize, ssim_map, upsample
from ..training import Precision, train
from .base import AnomalyModel, Prediction, iter_images

__all__ = ["LOSSES", "PAPER_AUGMENT", "AutoEncoder", "build_decoder", "build_encoder", "stage_widths"]

LOSSES = ("l2", "ssim")
PAPER_AUGMENT: Mapping[str, Any] = MappingProxyType(
    {"rotate_deg": 2.0, "shift": 0.02, "hflip": False, "vflip": False}
)
"""±2° rotations and ±2 % shifts (PaDiM's VAE recipe); no flips — switch them on per category."""

_GRID = 8  # side of the last feature grid before the bottleneck, as in the paper


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def stage_widths(input_size: int, base_width: int) -> list[int]:
    """Channels of the n = log2(input_size / 8) stride-2 stages: base, …, base, 2·base, 4·base."""
    n = math.log2(input_size / _GRID) if input_size > 0 else -1
    if n < 1 or not n.is_integer():
        raise AdlearnError(
            f"input_size must be 8·2ⁿ pixels (16, 32, 64, 128, 256, 512 …), got {input_size}: the encoder "
            "halves the image down to an 8×8 grid"
        )
    n = int(n)
    return [base_width * 2 ** max(0, i - (n - 3)) for i in range(n)]


def he_init(module: nn.Module) -> None:
    """He initialisation for LeakyReLU(0.2), zero biases: keeps the signal's variance through the
    ~20 plain convolutions (PyTorch's default shrinks it about 25-fold by the bottleneck, and training
    then often stalls at the mean image)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(module.bias)


def build_encoder(input_size: int, base_width: int, out_channels: int, latent_size: int) -> nn.Sequential:
    """E: ``[B,3,S,S]`` → ``[B,out_channels,s,s]`` (no activation on the output: the code is linear)."""
    widths = stage_widths(input_size, base_width)
    layers: list[nn.Module] = []
    in_ch = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(in_ch, width, 4, stride=2, padding=1), _act()]
        if 0 < i < len(widths) - 1:
            layers += [nn.Conv2d(width, width, 3, padding=1), _act()]
        in_ch = width
    layers += [
        nn.Conv2d(in_ch, 2 * base_width, 3, padding=1),
        _act(),
        nn.Conv2d(2 * base_width, base_width, 3, padding=1),
        _act(),
        nn.Conv2d(base_width, out_channels, _GRID + 1 - latent_size),
    ]  # 8×8 grid → s×s code
    return nn.Sequential(*layers).apply(he_init)


def build_decoder(input_size: int, base_width: int, in_channels: int, latent_size: int) -> nn.Sequential:
    """D: ``[B,in_channels,s,s]`` → ``[B,3,S,S]`` in [0,1]; the encoder's layers in reverse order."""
    widths = stage_widths(input_size, base_width)
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(in_channels, base_width, _GRID + 1 - latent_size),
        _act(),  # s×s code → 8×8 grid
        nn.Conv2d(base_width, 2 * base_width, 3, padding=1),
        _act(),
        nn.Conv2d(2 * base_width, widths[-1], 3, padding=1),
        _act(),
    ]
    for i in reversed(range(len(widths))):
        out_ch = widths[i - 1] if i > 0 else base_width
        if 0 < i < len(widths) - 1:
            layers += [nn.Conv2d(widths[i], widths[i], 3, padding=1), _act()]
        layers += [nn.ConvTranspose2d(widths[i], out_ch, 4, stride=2, padding=1), _act()]
    layers += [nn.Conv2d(base_width, 3, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers).apply(he_init)


class AutoEncoder(AnomalyModel):
    """Convolutional autoencoder (AE-L2 / AE-SSIM); defaults are the paper-profile settings.

    Args:
        loss: ``"l2"`` (Eq. 1) or ``"ssim"`` (Eq. 2); the residual map (Eq. 3) follows it.
        input_size: side (px) of the square images the network sees; 8·2ⁿ. Inputs are resized to
            it and maps resized back, so any image size works.
        latent_dim: channels d of the bottleneck (the paper: 100).
        latent_size: side s of the bottleneck grid, 1–8: 1 = a d-dimensional vector (the paper);
            8 = a d×8×8 convolutional code, far more capacity (and more anomalies reconstructed).
        base_width: channels of the first stage (32 in the paper); later stages double it.
        epochs, lr, batch_size, weight_decay: Adam training settings.
        augment: an :class:`~adlearn.augment.Augment` or a dict of its fields, or ``None``;
            stored as a plain dict.
        sigma: std (px of the input) of the Gaussian smoothing of the map (Eq. 4); 0 = none.
        val_fraction: share of the training images held out to pick the best epoch.
        patience: stop after that many epochs without a better validation loss (``None``: never).
        mixed_precision: ``"auto"`` (fp16 on CUDA), ``"no"``, ``"fp16"``, ``"bf16"``.
        seed: seeds the initial weights, the data order, the augmentation and the split.
        device: ``None`` = CUDA when present, else CPU.

    After ``fit``, ``history_`` holds the training curves as a plain dict (saved with the model);
    ``adlearn.training.History(**model.history_)`` turns it back into a :class:`History`.
    """

    name = "AutoEncoder"
    _learned_attrs = ("history_",)

    def __init__(
        self,
        loss: Literal["l2", "ssim"] = "l2",
        input_size: int = 256,
        latent_dim: int = 100,
        latent_size: int = 1,
        base_width: int = 32,
        epochs: int = 100,
        lr: float = 1e-4,
        batch_size: int = 32,
        weight_decay: float = 1e-5,
        augment: Augment | Mapping[str, Any] | None = PAPER_AUGMENT,
        sigma: float = 4.0,
        val_fraction: float = 0.1,
        patience: int | None = None,
        mixed_precision: Precision = "auto",
        seed: int = 0,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(device=device)
        self.loss = loss
        self.input_size = input_size
        self.latent_dim = latent_dim
        self.latent_size = latent_size
        self.base_width = base_width
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        augment = Augment.from_params(augment)
        self.augment = None if augment is None else augment.params()  # plain types: safe to save
        self.sigma = sigma
        self.val_fraction = val_fraction
        self.patience = patience
        self.mixed_precision = mixed_precision
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise AdlearnError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        stage_widths(self.input_size, self.base_width)
        if not 1 <= self.latent_size <= _GRID:
            raise AdlearnError(
                f"latent_size must lie in 1..{_GRID} (the side of the code grid), got {self.latent_size}"
            )
        for name in ("latent_dim", "base_width", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise AdlearnError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise AdlearnError(f"lr must be positive, got {self.lr}")

    # --- the network ------------------------------------------------------------------------
    def _build(self, load_weights: bool) -> None:
        with seeded(self.seed):  # seeded initial weights, the user's RNG untouched
            self.network = self._make_network()

    def _make_network(self) -> nn.Module:
        return nn.Sequential(
            OrderedDict(
                encoder=build_encoder(self.input_size, self.base_width, self.latent_dim, self.latent_size),
                decoder=build_decoder(self.input_size, self.base_width, self.latent_dim, self.latent_size),
            )
        )

    def prepare(self, images: Tensor) -> Tensor:
        """Resize ``float[B,3,H,W]`` images to the network's ``input_size``."""
        return resize(images, self.input_size)

    def reconstruct(self, x: Tensor) -> Tensor:
        """x̂ = D(E(x)) for images already at ``input_size``."""
        return self.network(x)

    def residual_map(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """r(x) of Eq. (3), ``float[B,h,w]``: squared error or 1 − SSIM, averaged over channels."""
        if self.loss == "l2":
            return (x - x_hat).pow(2).mean(1)
        return 1 - ssim_map(x, x_hat).mean(1)

    # --- fit: minimise Eq. (1) or (2) ---------------------------------------------------------
    def objective(self, network: nn.Module, images: Tensor) -> Tensor:
        """The training loss of a batch: the mean of the residual map (Eq. 1 for L2, Eq. 2 for SSIM)."""
        x = self.prepare(images)
        return self.residual_map(x, network(x)).mean()

    def _fit(self, data: Dataset | DataLoader) -> None:
        # Decoded and resized once, not every epoch: N·3·S² floats (200 images at 256 px: 160 MB).
        images = torch.cat(
            [self.prepare(batch).cpu() for batch in iter_images(data, self.batch_size, self.device)]
        )
        history = train(
            self.network,
            self.objective,
            images,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            mixed_precision=self.mixed_precision,
            val_fraction=self.val_fraction,
            patience=self.patience,
            augment=Augment.from_params(self.augment),
            seed=self.seed,
            device=self.device,
            desc=f"{self.name} fit",
        )
        self.history_ = asdict(history)

    # --- predict: Eq. (3) and (4) -------------------------------------------------------------
    def _predict(self, images: Tensor) -> Prediction:
        x = self.prepare(images)
        x_hat = self.reconstruct(x)
        size = tuple(images.shape[-2:])
        anomaly_map = gaussian_blur(upsample(self.residual_map(x, x_hat), size), self.sigma)
        return Prediction(
            score=anomaly_map.amax(dim=(1, 2)),
            anomaly_map=anomaly_map,
            reconstruction=resize(x_hat, size).clamp(0, 1),
        )
