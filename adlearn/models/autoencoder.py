"""Reconstruction baselines: a convolutional autoencoder with an L2 or SSIM loss (Bergmann et al.,
VISAPP 2019, arXiv:1807.02011) and its variational twin (Kingma & Welling, ICLR 2014, arXiv:1312.6114).

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

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict
from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..augment import Augment
from ..batches import iter_images
from ..conv import GRID, build_decoder, build_encoder, stage_widths
from ..env import seeded
from ..errors import AdlearnError
from ..ops import resize, ssim_map
from ..prediction import Prediction, anomaly_prediction
from ..profiles import sigma_for
from ..training import Precision, train
from .base import AnomalyModel

__all__ = ["LOSSES", "PAPER_AUGMENT", "AutoEncoder", "VAE", "VariationalNetwork", "kl_divergence"]

LOSSES = ("l2", "ssim")
PAPER_AUGMENT: Mapping[str, Any] = MappingProxyType(
    {"rotate_deg": 2.0, "shift": 0.02, "hflip": False, "vflip": False}
)
"""±2° rotations and ±2 % shifts (PaDiM's VAE recipe); no flips — switch them on per category."""

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
    profiles = {
        # a 0.36 M-parameter network at 64 px (maps come back at 128 px): seconds of training on 1 thread
        "fast": {"input_size": 64, "base_width": 16, "epochs": 40, "lr": 1e-3, "batch_size": 8,
                 "sigma": sigma_for(128)},
        # a 0.37 M-parameter network at 128 px, so 2-px defects survive the resize (maps come back
        # at 256 px); 40 epochs of 72 images in well under a minute per model on 1 thread
        "book": {"input_size": 128, "base_width": 16, "epochs": 40, "lr": 1e-3, "batch_size": 8},
    }
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
    ) -> None:
        augment = Augment.from_params(augment)
        self.augment = None if augment is None else augment.params()  # plain types: safe to save

    def _check_params(self) -> None:
        if self.loss not in LOSSES:
            raise AdlearnError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        stage_widths(self.input_size, self.base_width)
        if not 1 <= self.latent_size <= GRID:
            raise AdlearnError(
                f"latent_size must lie in 1..{GRID} (the side of the code grid), got {self.latent_size}"
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
        return anomaly_prediction(self.residual_map(x, x_hat), size, self.sigma,  # Eq. (3), (4)
                                  reconstruction=resize(x_hat, size).clamp(0, 1))


# --- the variational autoencoder (Kingma & Welling, ICLR 2014, arXiv:1312.6114) ------------------
def kl_divergence(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per image (Eq. V2), summed over the code ``[B, d, s, s]`` → ``[B]``."""
    mu, log_var = mu.float(), log_var.float()  # exp() of a half-precision log-variance overflows
    return -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).flatten(1).sum(1)


class VariationalNetwork(nn.Module):
    """E → (μ, log σ²) → z → D. ``forward(x, sample)`` returns (x̂, μ, log σ²)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if sample else mu  # Eq. (V1)
        return self.decoder(z), mu, log_var


class VAE(AutoEncoder):
    """Convolutional VAE, PaDiM's reconstruction baseline: ``beta``, the weight of the KL term
    (Eq. V3), plus every keyword argument of :class:`AutoEncoder` (same defaults).

    The encoder outputs a distribution over codes instead of one code, and the loss keeps that
    distribution close to a standard normal prior, so the decoder must redraw images from *any*
    typical code — the hope is that a defect, having no typical code, is redrawn as nominal:

        q(z|x) = N(μ(x), diag σ²(x)),   z = μ + σ ⊙ ε,  ε ~ N(0, I)   (reparameterisation)   (V1)
        KL(q(z|x) ‖ N(0, I)) = −½ Σ_k (1 + log σ²_k − μ²_k − σ²_k)                           (V2)
        L(x) = [Σ_{c,i,j} ρ(x, x̂)_{cij} + β · KL] / (C·H·W),   x̂ = D(z)                      (V3)

    with ρ the autoencoder's per-pixel error (for ``loss="l2"`` Eq. V3 is the negative ELBO of a
    Gaussian decoder with variance ½, divided by the number of pixel values); residual, map and
    score are the autoencoder's (Eq. 3, 4) on r(x) = ρ(x, D(μ(x))).

    What adlearn does differently, and why: the encoder and decoder come from the same builders
    as the autoencoder's (the encoder emitting 2·d channels, μ and log σ²), so AE and VAE differ
    only in the bottleneck and the KL term — a controlled comparison (PaDiM's VAE used a ResNet18
    encoder and an 8×8 code: ``latent_size=8`` here); ``predict`` decodes the posterior mean μ(x),
    so a score is deterministic. ``latent_dim`` is the dimension of z per grid cell.
    """

    name = "VAE"
    profiles = AutoEncoder.profiles  # the same network sizes: a controlled comparison

    def __init__(self, beta: float = 1.0, **autoencoder_args: Any) -> None:
        super().__init__(**autoencoder_args)

    def _check_params(self) -> None:
        super()._check_params()
        if self.beta < 0:
            raise AdlearnError(f"beta (the weight of the KL term) must be ≥ 0, got {self.beta}")

    def _make_network(self) -> nn.Module:
        return VariationalNetwork(
            build_encoder(self.input_size, self.base_width, 2 * self.latent_dim, self.latent_size),
            build_decoder(self.input_size, self.base_width, self.latent_dim, self.latent_size),
        )

    def reconstruct(self, x: Tensor) -> Tensor:
        """D(μ(x)): the decoded posterior mean, deterministic."""
        return self.network(x, sample=False)[0]

    def objective(self, network: nn.Module, images: Tensor) -> Tensor:
        """Eq. (V3) for a batch: mean reconstruction error + β · KL / (C·H·W), with a sampled z."""
        x = self.prepare(images)
        x_hat, mu, log_var = network(x, sample=True)
        reconstruction = self.residual_map(x, x_hat).mean()
        return reconstruction + self.beta * kl_divergence(mu, log_var).mean() / x[0].numel()
