"""DiAD — A Diffusion-based Framework for Multi-class Anomaly Detection
(He, Zhang, Chen, Tai, Wang, Luo, Hong, Wu, Jiang, Wang; AAAI 2024, arXiv:2312.06607;
code: lewandofskee/DiAD).

**One model for all categories.** A latent diffusion model (LDM, Rombach et al., CVPR 2022)
reconstructs any nominal image of any trained category; a *Semantic-Guided* (SG) network, fed the
input image, keeps the reconstruction on the input's category and layout even though the latent
is noised almost to pure noise. The parts, in the order ``fit`` trains them:

1. **Autoencoder** (KL-regularised, LDM's "KL-f8": 4 latent channels): E(x) = z₀, D(z₀) ≈ x,
   trained on the nominal images with  L_AE = ‖x − D(z)‖₁ + λ_KL·KL(q(z|x) ‖ N(0, I)),  then frozen;
   latents are multiplied by a scale factor s_z (SD's 0.18215, or 1/std of the training latents).
2. **Latent denoiser** ε_θ(z_t, t, c): diffusers' ``UNet2DConditionModel`` with SD-style blocks
   (cross-attention down/up blocks). DiAD's text prompt is always empty, so the context c is a
   constant: adlearn uses **zeros** ``[B, 1, cross_attention_dim]`` and no text encoder (a cross-
   attention over one all-zero key/value contributes a constant, its output bias).
   β is LDM's "scaled linear" schedule (√β from √0.00085 to √0.012, T = 1000).
3. **SG network** G: a trainable copy of the denoiser's encoder (conv_in, time embedding, down
   blocks, mid block) — diffusers' ``ControlNetModel.from_unet`` — fed the image through a hint
   encoder whose last conv is zero-initialised, with a zero-initialised 1×1 conv after each of
   its blocks. It returns one control tensor per encoder skip, g₀ … g_{N−1}, and one for the
   middle block, g_mid; all are exactly 0 at initialisation, so the guided UNet starts as the
   plain one.
4. **SFF block** (spatial-aware feature fusion; official ``sgn.py`` "#SFF Block") fuses the k = 3
   controls at the coarsest level (4² latent cells in SD) with the k controls of the next-finer
   level (8²):

       g_{c_j} ← SiLU(g_{c_j} + Σ_i D_ij(g_{f_i})),   D_ij = SiLU ∘ InstanceNorm ∘ Conv3×3/stride 2,

   with every D_ij's conv zero-initialised (9 in SD: i, j ∈ {0, 1, 2}; fine indices 6–8, coarse
   9–11 in the official numbering).
5. **Guided denoising**: the frozen encoder's skips h_n get the controls added,
   ε_θ(z_t, t, c | g) — with ``only_mid_control=True`` (official) only g_mid and the coarsest
   level's k controls (the skips of the first decoder block); ``False``: every skip, as ControlNet.

**A pitfall of the official SFF.** Its inputs g_{f_i} come out of zero convs and its D_ij convs are
zero too: two zero-initialised layers in a row. ∂L/∂W_D ∝ g_f = 0 and ∂L/∂g_f ∝ W_D = 0 (the
InstanceNorm removes the conv's bias), so with ``only_mid_control=True`` — where g_f reaches the
loss only through SFF — neither ever moves, and SFF stays the SiLU it starts as. ``sff_zero_init=
False`` gives D_ij PyTorch's default initialisation (bias 0): the control still starts at exactly 0
(its input is 0), and SFF learns. Both are tested; chapter 8 measures them.

Training of the denoiser (official ``configure_optimizers``): the ε loss of LDM,

    L = E_{z₀=s_z·E(x), ε, t~U{0..T−1}} ‖ε − ε_θ(√ᾱ_t z₀ + √(1−ᾱ_t) ε, t, c | G(x))‖²,

updating G (hint encoder, zero convs, SFF) and the denoiser's **decoder** (up blocks and output
layers); its encoder stays frozen. At test time z₀ = s_z·E(x) is noised to t = T−1 (ᾱ ≈ 0.0047:
almost pure noise), denoised with 10 DDIM steps (η = 0) under the guidance of x, and decoded,
x̂ = D(ẑ₀/s_z). The anomaly map compares pretrained features φ_l (official: ResNet-50 layer1–3):

    A = blur_σ( Σ_{l=1}^{3} up(1 − cos(φ_l(x), φ_l(x̂))) ),   image score = max A     (σ = 5 at 256 px)

Notation
--------
======================  ==========================================================================
symbol                  meaning (code name)
======================  ==========================================================================
x, x̂                    input image and its reconstruction, in [0,1] (``images``, ``reconstruction``)
E, D                    the autoencoder's encoder and decoder (``vae.encode``, ``vae.decode``)
z₀, z_t, s_z            latent, noised latent, latent scale factor (``latent_scale``)
ε, ε_θ                  noise and the denoiser's estimate (``denoiser``)
c                       constant cross-attention context: zeros ``[B, 1, cross_attention_dim]``
G, g_n, g_mid           SG network and its controls (``denoiser.sg``; ControlNet residuals)
D_ij                    SFF's down-fusions (``denoiser.sff.down[j][i]``)
β_t, ᾱ_t, T             scaled-linear schedule, ∏(1 − β), 1000 steps (``alpha_bar``)
φ_l                     backbone features of layer l (``feature_extractor``)
======================  ==========================================================================

What adlearn does differently from the official code (reference: methods.md §5, §7.4), and why
-------------------------------------------------------------------------------------------------
* **Model selection on held-out training images.** The official ``val_acc`` (image + pixel AUROC)
  is computed on the *test* set and picks the checkpoint. adlearn keeps the epoch with the lowest
  denoising loss on a validation split of the training images (:func:`adlearn.training.train`).
* **No classifier-free guidance.** The official sampler uses scale 9 with identical conditional
  and unconditional inputs (empty prompt, same hint): a no-op that doubles the UNet cost.
* **Autoencoder input in [−1, 1]**, the range SD's VAE was trained on; the official loader
  feeds ImageNet-normalised images to the VAE and the hint. The hint gets the same [−1, 1] image.
* **Autoencoder loss**: L1 + KL (λ_KL = 1e-6, LDM's weight) without LPIPS and the patch
  discriminator (no VGG weights offline; the discriminator starts at step 50 001 anyway).
* **Deterministic encoding at test time** (the posterior mean) and **one seeded noise tensor
  shared by the batch**, so a score does not depend on the batch; the first DDIM step is taken
  at t = T−1, where the latent was noised (official: noise to 999, first step at 901).
* **Image score = max of the smoothed map** (official: max after an extra 8×8 average pooling).
* **Constant zero context** instead of CLIP's embedding of the empty prompt (no text encoder).
* **Denoiser pretraining** (``pretrain_epochs``): without SD-1.5 weights (fast and book profiles)
  the whole UNet is first trained as a plain LDM on the nominal latents — the stand-in for SD's
  pretraining — before its encoder is frozen and copied into G (as the official code copies SD).
* **SFF's convs can be trained** (``sff_zero_init=False``, see above); the default is the official one.
* **An internal resolution** ``input_size`` (paper: 256, the image size); maps come back at the
  input's H×W. No gradient accumulation (official: batch 12 × 4 accumulation steps).

Parameter counts (on the meta device; checked by ``tests/test_diad.py``)
--------------------------------------------------------------------------
=========  ============  ============  ============  ============  ================
profile    autoencoder   denoiser      SG network    SFF           trained in stage 3
=========  ============  ============  ============  ============  ================
fast       0.24 M        1.43 M        0.70 M        0.14 M        1.62 M
book       0.68 M        2.53 M        1.13 M        0.28 M        2.89 M
paper      83.65 M       859.52 M      361.28 M      110.60 M      982.69 M
colab-t4   83.65 M       219.79 M      93.03 M       27.65 M       251.03 M
=========  ============  ============  ============  ============  ================

The paper profile is SD-1.5's architecture (VAE kl-f8, UNet 320·(1,2,4,4), 8 heads, context 768)
and starts from its weights (``sd_weights=True``, from the Hugging Face cache or hub). With AdamW
it needs a ≥ 32 GB GPU, like the official run (V100 32 GB; 24 GB is not enough, DiAD issue #45).
:data:`COLAB_T4` is a documented smaller variant for a 16 GB Colab T4: half the UNet width (a
quarter of its parameters), fp16, gradient checkpointing, batch 4, trained from scratch (SD's
weights do not fit its shape): ``build("DiAD", "paper", **COLAB_T4)``. It has not been run on a
GPU yet; its memory is estimated from the parameter counts.

Usage: ``DiAD(...).fit([train_a, train_b])`` (or one Dataset spanning categories) gives one model;
``predict`` needs no category. ``prepare`` + :meth:`DiAD.variant` + ``fit_guidance`` share the first
two stages between ablations.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..backbones import Pretrained, downloads_allowed
from ..batches import as_dataset, iter_images
from ..diffusion import ddim_sample, ddim_timesteps, q_sample, seeded_noise, to_signed, to_unit, unet_epsilon
from ..env import seeded
from ..errors import AdlearnError, WeightsUnavailableError
from ..ops import resize, upsample
from ..prediction import Prediction, anomaly_prediction
from ..profiles import sigma_for
from ..training import Precision, train
from .base import AnomalyModel

__all__ = ["DiAD", "SpatialFeatureFusion", "GuidedDenoiser", "COLAB_T4", "SD15"]

Guidance = Literal["sg+sff", "sg", "none"]

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""The Hugging Face repository of Stable Diffusion 1.5 (subfolders ``vae`` and ``unet``)."""

COLAB_T4: MappingProxyType = MappingProxyType({
    "unet_channels": (160, 320, 640, 640), "sd_weights": False, "pretrain_epochs": 200,
    "mixed_precision": "fp16", "gradient_checkpointing": True, "batch_size": 4,
})
"""Overrides of the paper profile that fit a 16 GB T4: the trained 251 M parameters with fp32 AdamW
state take ≈ 4 GB, the frozen rest ≈ 0.6 GB; fp16 autocast and checkpointing keep the activations small."""


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise every parameter of ``module`` (ControlNet's "zero convolution")."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _zero_bias(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(conv.bias)
    return conv


def residual_channels(unet_channels: Sequence[int], layers_per_block: int) -> list[int]:
    """Channels of the encoder skips g₀ … g_{N−1}: conv_in, then per level its resnets and its downsample."""
    out = [unet_channels[0]]
    for level, width in enumerate(unet_channels):
        out += [width] * layers_per_block + ([width] if level < len(unet_channels) - 1 else [])
    return out


class SpatialFeatureFusion(nn.Module):
    """SFF: g_{c_j} ← SiLU(g_{c_j} + Σ_i D_ij(g_{f_i})), D_ij = SiLU∘InstanceNorm∘zero-Conv3×3/2.

    ``fine_channels`` (the k controls of the next-finer level) and ``coarse_channels`` (the k of
    the coarsest level): SD's [640, 1280, 1280] and [1280, 1280, 1280], i.e. 9 D_ij.
    """

    def __init__(self, fine_channels: Sequence[int], coarse_channels: Sequence[int], zero_init: bool = True) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(self._conv(c_in, c_out, zero_init), nn.InstanceNorm2d(c_out),
                              nn.SiLU())
                for c_in in fine_channels
            )
            for c_out in coarse_channels
        )

    @staticmethod
    def _conv(c_in: int, c_out: int, zero_init: bool) -> nn.Conv2d:
        conv = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        # InstanceNorm removes a bias anyway; zeroing it makes D_ij(0) = 0 exactly with either init
        return _zero(conv) if zero_init else _zero_bias(conv)

    def forward(self, fine: Sequence[Tensor], coarse: Sequence[Tensor]) -> list[Tensor]:
        return [F.silu(g + sum(d(f) for d, f in zip(downs, fine))) for g, downs in zip(coarse, self.down)]


class GuidedDenoiser(nn.Module):
    """ε_θ(z_t, t, c | G(x)): the latent UNet, its SG network (``None``: plain LDM) and SFF (``None``: off)."""

    def __init__(self, unet: UNet2DConditionModel, sg: ControlNetModel | None, sff: SpatialFeatureFusion | None,
                 only_mid_control: bool, layers_per_block: int) -> None:
        super().__init__()
        self.unet, self.sg, self.sff = unet, sg, sff
        self.only_mid_control = only_mid_control
        self.k = layers_per_block + 1  # controls per level: the incoming downsample and the resnets
        self.register_buffer("context", torch.zeros(1, 1, unet.config.cross_attention_dim), persistent=False)

    def controls(self, z_t: Tensor, t: Tensor, context: Tensor, hint: Tensor) -> tuple[list[Tensor], Tensor]:
        """The SG network's controls g₀ … g_{N−1} (SFF-fused, masked by the wiring) and g_mid."""
        down, mid = self.sg(z_t, t, context, controlnet_cond=hint, return_dict=False)
        down, k = list(down), self.k
        if self.sff is not None:
            down[-k:] = self.sff(down[-2 * k : -k], down[-k:])
        if self.only_mid_control:  # official: only the middle block and the coarsest skips
            down[:-k] = [torch.zeros_like(g) for g in down[:-k]]
        return down, mid

    def forward(self, sample: Tensor, timestep: Tensor, hint: Tensor | None = None) -> UNet2DConditionOutput:
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(len(sample)) if t.ndim == 0 else t
        context = self.context.expand(len(sample), -1, -1).to(sample.dtype)
        if self.sg is None:
            return self.unet(sample, t, context)
        if hint is None:
            raise AdlearnError("the guided denoiser needs the input image as hint (hint=images in [-1, 1])")
        down, mid = self.controls(sample, t, context, hint)
        return self.unet(sample, t, context, down_block_additional_residuals=down, mid_block_additional_residual=mid)


class DiAD(AnomalyModel):
    """DiAD; constructor defaults are the paper's (``models/diad.yaml`` and ``train.py`` @d281300).

    Args:
        input_size: side of the square images the autoencoder sees (paper: 256).
        vae_channels, vae_layers_per_block, latent_channels: the autoencoder (paper: kl-f8,
            (128, 256, 512, 512), 2, 4 — the latent side is ``input_size / 2^(len(vae_channels)−1)``).
        unet_channels, layers_per_block, attention_levels, heads, cross_attention_dim: the latent
            UNet (paper: SD-1.5, (320, 640, 1280, 1280), 2, cross-attention at levels 0–2, 8 heads, 768).
        hint_channels: the SG hint encoder's widths; it downsamples ``len − 1`` times, which must
            match the autoencoder (paper: ControlNet's (16, 32, 96, 256)).
        guidance: ``"sg+sff"`` (DiAD), ``"sg"`` (no SFF) or ``"none"`` (a plain LDM) — the ablations.
        sff_zero_init: zero-initialise SFF's convs (official; they then never train, see above).
        only_mid_control: official wiring (controls on the middle block and coarsest skips only);
            ``False`` adds every control, as ControlNet.
        sd_weights: start from SD-1.5's VAE and UNet (``sd_repo``): ``True``, ``"auto"`` (loud fallback
            to random initialisation) or ``False``; needs the SD-1.5 architecture.
        vae_epochs, vae_lr, vae_batch_size, kl_weight: autoencoder training (official fine-tuning:
            lr 4 × 4.5e-5, batch 4, λ_KL 1e-6; its epoch count is not set — adlearn: 10).
        pretrain_epochs, pretrain_lr: training of the whole UNet as a plain LDM before guidance;
            the stand-in for SD's pretraining (paper: 0, SD's weights are loaded).
        epochs, lr, batch_size: the guided stage (official: no max_epochs, i.e. PyTorch Lightning's
            1000; AdamW 1e-5; batch 12).
        val_fraction: share of the training images held out to pick the best epoch (never test images).
        mixed_precision: ``"auto"`` (fp16 on CUDA), ``"no"``, ``"fp16"`` or ``"bf16"``.
        gradient_checkpointing: recompute activations in the backward pass (diffusers'
            ``enable_gradient_checkpointing``), trading time for memory.
        ddim_steps: DDIM steps from t = T−1 (paper 10, η = 0).
        backbone, layers, pretrained: the feature extractor of the map (paper: ResNet-50, layer1–3).
        sigma: std (pixels, at the input's resolution) of the map's Gaussian smoothing (paper 5 at 256).
        seed: seeds the initialisation, the training and the sampling noise (official: 1).
        device: ``None`` = CUDA when present, else CPU.
    """

    name = "DiAD"
    profiles = {
        # one model for both categories, for CI: images of 128 px seen at 32 px by a 0.24 M f4 autoencoder
        # (8×8×4 latents) and a 1.4 M latent UNet, each stage trained for seconds (mechanics, not accuracy)
        "fast": {"input_size": 32, "vae_channels": (16, 32, 32), "vae_layers_per_block": 1,
                 "unet_channels": (32, 64), "attention_levels": (1,), "heads": 4, "cross_attention_dim": 32,
                 "hint_channels": (16, 32, 32), "sd_weights": False, "vae_epochs": 12, "vae_lr": 2e-3,
                 "vae_batch_size": 8, "pretrain_epochs": 15, "pretrain_lr": 2e-3, "epochs": 8, "lr": 1e-3,
                 "batch_size": 8, "backbone": "tf_efficientnet_lite0", "pretrained": "auto",
                 "sigma": 1.25 * sigma_for(128)},  # σ = 5 at 256 px
        # one model for all four categories: images of 256 px seen at 64 px by a 0.7 M f4 autoencoder
        # (16×16×4 latents) and a 2.5 M latent UNet pretrained as a plain LDM, then guided; measured on
        # a shared 2-core CPU, 320 images: 1 autoencoder + 1 LDM epoch 50 s, 1 guided epoch 25 s
        "book": {"input_size": 64, "vae_channels": (16, 32, 64), "vae_layers_per_block": 1,
                 "unet_channels": (32, 64, 64), "attention_levels": (1, 2), "heads": 4, "cross_attention_dim": 64,
                 "hint_channels": (16, 32, 64), "sd_weights": False, "vae_epochs": 10, "vae_lr": 1e-3,
                 "vae_batch_size": 8, "pretrain_epochs": 15, "pretrain_lr": 1e-3, "epochs": 10, "lr": 5e-4,
                 "batch_size": 8, "backbone": "tf_efficientnet_lite0", "pretrained": "auto"},
        # the paper profile is the constructor: SD-1.5's VAE and UNet (from its weights), ResNet-50, σ = 5
    }
    _learned_attrs = ("sd_weights_", "pretrained_", "weights_", "guided_",
                      "vae_loss_", "pretrain_loss_", "train_loss_", "val_loss_")

    def __init__(
        self,
        input_size: int = 256,
        vae_channels: tuple[int, ...] = (128, 256, 512, 512),
        vae_layers_per_block: int = 2,
        latent_channels: int = 4,
        unet_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        attention_levels: tuple[int, ...] = (0, 1, 2),
        heads: int = 8,
        cross_attention_dim: int = 768,
        hint_channels: tuple[int, ...] = (16, 32, 96, 256),
        guidance: Guidance = "sg+sff",
        sff_zero_init: bool = True,
        only_mid_control: bool = True,
        sd_weights: Pretrained = True,
        sd_repo: str = SD15,
        vae_epochs: int = 10,
        vae_lr: float = 1.8e-4,
        vae_batch_size: int = 4,
        kl_weight: float = 1e-6,
        pretrain_epochs: int = 0,
        pretrain_lr: float = 1e-4,
        epochs: int = 1000,
        lr: float = 1e-5,
        batch_size: int = 12,
        val_fraction: float = 0.1,
        mixed_precision: Precision = "auto",
        gradient_checkpointing: bool = False,
        ddim_steps: int = 10,
        backbone: str = "resnet50",
        layers: tuple[int, ...] = (1, 2, 3),
        pretrained: Pretrained = True,
        sigma: float = 5.0,
        seed: int = 1,
    ) -> None:
        self.register_buffer("latent_scale", None)

    # --- sub-modules ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.guidance not in ("sg+sff", "sg", "none"):
            raise AdlearnError(f"guidance must be 'sg+sff', 'sg' or 'none', got {self.guidance!r}")
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.input_size % (factor * 2 ** (len(self.unet_channels) - 1)):
            raise AdlearnError(
                f"input_size={self.input_size} must be divisible by the autoencoder's factor {factor} times "
                f"2^{len(self.unet_channels) - 1} (the UNet's levels); change input_size or the channels"
            )
        if 2 ** (len(self.hint_channels) - 1) != factor:
            raise AdlearnError(
                f"hint_channels={self.hint_channels} downsample {2 ** (len(self.hint_channels) - 1)}×, the "
                f"autoencoder {factor}×: give hint_channels {len(self.vae_channels)} entries"
            )
        if len(self.unet_channels) < 2:
            raise AdlearnError("SFF fuses two levels: unet_channels needs ≥ 2 entries")
        if self.sd_weights not in (True, False, "auto"):
            raise AdlearnError(f"sd_weights must be True, False or 'auto', got {self.sd_weights!r}")

    def make_autoencoder(self) -> AutoencoderKL:
        """The KL autoencoder (diffusers' ``AutoencoderKL``), randomly initialised from ``seed``."""
        n = len(self.vae_channels)
        with seeded(self.seed):
            return AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=self.vae_channels,
                layers_per_block=self.vae_layers_per_block, latent_channels=self.latent_channels,
                norm_num_groups=math.gcd(32, *self.vae_channels), sample_size=self.input_size,
            )

    def make_unet(self) -> UNet2DConditionModel:
        """The SD-style latent UNet: cross-attention blocks at ``attention_levels``."""
        n = len(self.unet_channels)
        down = tuple("CrossAttnDownBlock2D" if i in self.attention_levels else "DownBlock2D" for i in range(n))
        up = tuple(b.replace("Down", "Up") for b in reversed(down))
        latent = self.input_size // 2 ** (len(self.vae_channels) - 1)
        with seeded(self.seed + 1):
            return UNet2DConditionModel(
                sample_size=latent, in_channels=self.latent_channels, out_channels=self.latent_channels,
                block_out_channels=self.unet_channels, down_block_types=down, up_block_types=up,
                layers_per_block=self.layers_per_block, cross_attention_dim=self.cross_attention_dim,
                attention_head_dim=self.heads,  # diffusers' legacy name: the number of heads (SD: 8)
                norm_num_groups=math.gcd(32, *self.unet_channels),
            )

    def make_sg(self, unet: UNet2DConditionModel) -> tuple[ControlNetModel | None, SpatialFeatureFusion | None]:
        """G as a copy of ``unet``'s encoder with a zero-output hint encoder and zero convs, and SFF."""
        if self.guidance == "none":
            return None, None
        with seeded(self.seed + 2):
            sg = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=self.hint_channels)
            sff = None
            if self.guidance == "sg+sff":
                k = self.layers_per_block + 1
                channels = residual_channels(self.unet_channels, self.layers_per_block)
                sff = SpatialFeatureFusion(channels[-2 * k : -k], channels[-k:], self.sff_zero_init)
        return sg, sff

    def _make_denoiser(self, unet: UNet2DConditionModel) -> GuidedDenoiser:
        sg, sff = self.make_sg(unet)
        return GuidedDenoiser(unet, sg, sff, self.only_mid_control, self.layers_per_block)

    def _build(self, load_weights: bool) -> None:
        self.vae = self.make_autoencoder()
        unet = self.make_unet()
        self.sd_weights_ = False
        if load_weights and self.sd_weights:
            self.sd_weights_ = self._load_sd(unet)
        self.denoiser = self._make_denoiser(unet)
        self._build_feature_extractor(self.layers, load_weights)
        schedule = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear", prediction_type="epsilon")
        self.register_buffer("alpha_bar", schedule.alphas_cumprod.clone(), persistent=False)
        self.skip = math.ceil(len(self.alpha_bar) / self.ddim_steps)  # 100: t = 999, 899, …, 99
        self.trajectory = ddim_timesteps(len(self.alpha_bar) - 1, self.skip)
        self.vae_loss_, self.pretrain_loss_, self.train_loss_, self.val_loss_ = [], [], [], []
        self.guided_ = False  # whether G exists and has trained (stage 3)

    def _load_sd(self, unet: UNet2DConditionModel) -> bool:
        """Copy SD-1.5's VAE and UNet weights (cache first, hub when allowed) into ours."""
        try:
            offline = not downloads_allowed()
            sd_vae = AutoencoderKL.from_pretrained(self.sd_repo, subfolder="vae", local_files_only=offline)
            sd_unet = UNet2DConditionModel.from_pretrained(self.sd_repo, subfolder="unet", local_files_only=offline)
        except (OSError, ValueError) as err:
            how = (f"download them once with internet access: `huggingface-cli download {self.sd_repo} "
                   "--include 'vae/*' 'unet/*'` (≈ 3.8 GB), or pass sd_weights='auto' / False to train "
                   "from random initialisation (then set pretrain_epochs > 0)")
            if self.sd_weights is True:
                raise WeightsUnavailableError(f"Stable Diffusion weights {self.sd_repo!r} unavailable ({err}); "
                                              f"{how}") from err
            warnings.warn(f"\n*** adlearn: NO STABLE DIFFUSION WEIGHTS ({self.sd_repo}) — DiAD starts from RANDOM "
                          f"initialisation. ***\nTo get them, {how}.", UserWarning, stacklevel=4)
            return False
        try:
            self.vae.load_state_dict(sd_vae.state_dict())
            unet.load_state_dict(sd_unet.state_dict())
        except RuntimeError as err:
            raise AdlearnError(
                f"sd_weights need SD-1.5's architecture (the paper profile's vae_channels, unet_channels, "
                f"attention_levels, heads, cross_attention_dim): {str(err)[:200]}; use sd_weights=False"
            ) from err
        return True

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part, counted on the meta device (no memory, no weights, a fraction of a second)."""
        with torch.device("meta"):
            vae, unet = self.make_autoencoder(), self.make_unet()
            sg, sff = self.make_sg(unet)
        count = lambda m: 0 if m is None else sum(p.numel() for p in m.parameters())  # noqa: E731
        decoder = sum(count(m) for m in (unet.up_blocks, unet.conv_norm_out, unet.conv_out))
        return {"autoencoder": count(vae), "denoiser": count(unet), "sg": count(sg), "sff": count(sff),
                "trained": decoder + count(sg) + count(sff)}

    # --- views -----------------------------------------------------------------------------------
    def _view(self, images: Tensor) -> Tensor:
        """Images in [0,1] as the autoencoder and the hint encoder see them: at ``input_size``, in [−1, 1]."""
        return to_signed(resize(images, self.input_size))

    def encode(self, x: Tensor, *, sample: bool = False) -> Tensor:
        """z₀ = s_z · E(x) for ``x`` in [−1, 1] (``sample``: a draw from q(z|x), else its mean)."""
        posterior = self.vae.encode(x).latent_dist
        return (posterior.sample() if sample else posterior.mode()) * self.latent_scale

    def decode(self, z: Tensor) -> Tensor:
        """x̂ = D(z / s_z), in [−1, 1]."""
        return self.vae.decode(z / self.latent_scale).sample

    # --- fit: autoencoder, denoiser pretraining, guided denoiser ---------------------------------
    def _fit(self, data: Dataset | DataLoader) -> None:
        if not self.guided_:  # from scratch; ``fit(warm_start=True)`` of a fitted model continues stage 3 only
            self._prepare(data)
        self.fit_guidance(data)

    def _train(self, network: nn.Module, loss, data: Dataset | DataLoader, epochs: int, lr: float,
               batch_size: int, desc: str):
        dataset = data.dataset if isinstance(data, DataLoader) else data  # train() makes its own loader
        return train(network, loss, dataset, epochs=epochs, lr=lr, batch_size=batch_size, optimizer="adamw",
                     weight_decay=0.0, grad_clip=None, mixed_precision=self.mixed_precision,
                     val_fraction=self.val_fraction, seed=self.seed, device=self.device, desc=desc)

    def _checkpointing(self, *modules: nn.Module | None) -> None:
        for module in modules:
            if module is not None and self.gradient_checkpointing:  # diffusers' switch
                module.enable_gradient_checkpointing()

    def prepare(self, data: Dataset | DataLoader | Tensor | list[Dataset]) -> DiAD:
        """Stages 1–2, from scratch: train the autoencoder and fix s_z, then pretrain the UNet as a plain LDM.

        ``fit`` = ``prepare`` + :meth:`fit_guidance`; calling them apart lets ablations share stages 1–2
        (:meth:`variant`).
        """
        data = as_dataset(data)
        self._built, self.fitted_ = False, False
        self._ensure_built(load_weights=True)
        self._prepare(data)
        return self

    def _prepare(self, data: Dataset | DataLoader) -> None:
        self._checkpointing(self.vae, self.denoiser.unet)
        if self.vae_epochs > 0:
            history = self._train(self.vae, self.autoencoder_loss, data, self.vae_epochs, self.vae_lr,
                                  self.vae_batch_size, "DiAD autoencoder")
            self.vae_loss_ = history.train_loss
        self.vae.requires_grad_(False).eval()
        self.latent_scale = self._latent_scale(data)
        if self.pretrain_epochs > 0:
            unet = self.denoiser.unet.requires_grad_(True)
            plain = GuidedDenoiser(unet, None, None, False, self.layers_per_block).to(self.device)
            history = self._train(plain, self.denoising_loss, data, self.pretrain_epochs, self.pretrain_lr,
                                  self.batch_size, "DiAD denoiser pretraining")
            self.pretrain_loss_ = history.train_loss

    def fit_guidance(self, data: Dataset | DataLoader | Tensor | list[Dataset]) -> DiAD:
        """Stage 3: copy the (frozen) encoder into G and train G, SFF and the UNet's decoder.

        Called again (or by ``fit(warm_start=True)``), it continues training G and the decoder.
        """
        data = as_dataset(data)
        if self.latent_scale is None:
            raise AdlearnError("DiAD.fit_guidance needs the autoencoder: call .prepare(train_data) first")
        unet = self.denoiser.unet
        if not self.guided_:
            self.denoiser = self._make_denoiser(unet).to(self.device)  # G copies the encoder as it is now
        self._trainable(self.denoiser)
        self._checkpointing(unet, self.denoiser.sg)
        history = self._train(self.denoiser, self.denoising_loss, data, self.epochs, self.lr, self.batch_size,
                              "DiAD guided denoiser")
        self.train_loss_ = [*self.train_loss_, *history.train_loss]
        self.val_loss_ = [*self.val_loss_, *history.val_loss]
        self.denoiser.requires_grad_(False)
        self.guided_ = self.fitted_ = True
        return self

    def variant(self, **changes: Any) -> DiAD:
        """A copy of this model with other stage-3 settings (e.g. ``guidance``), sharing stages 1–2.

        For ablations: call it after :meth:`prepare` and before :meth:`fit_guidance` (which
        changes the UNet's decoder), then call ``fit_guidance`` on the copy.
        """
        early = {"input_size", "vae_channels", "vae_layers_per_block", "latent_channels", "unet_channels",
                 "layers_per_block", "attention_levels", "heads", "cross_attention_dim", "sd_weights", "sd_repo",
                 "vae_epochs", "vae_lr", "vae_batch_size", "kl_weight", "pretrain_epochs", "pretrain_lr",
                 "backbone", "layers", "pretrained", "seed"}
        if early & set(changes):
            raise AdlearnError(f"variant() shares the autoencoder and the pretrained UNet: it cannot change "
                               f"{sorted(early & set(changes))}; build a new model instead")
        if self.latent_scale is None or self.fitted_:
            raise AdlearnError("variant() copies a prepared model: call it after .prepare(data), before .fit_guidance")
        twin = type(self)(**{**self.get_params(), **changes}, device=self.device)
        twin._ensure_built(load_weights=False)
        twin.vae.load_state_dict(self.vae.state_dict())
        twin.denoiser.unet.load_state_dict(self.denoiser.unet.state_dict())
        twin.denoiser = twin._make_denoiser(twin.denoiser.unet).to(self.device)  # G: a copy of *this* encoder
        twin.feature_extractor.load_state_dict(self.feature_extractor.state_dict())
        twin.vae.requires_grad_(False)
        twin.latent_scale = self.latent_scale.clone()
        for attr in ("sd_weights_", "pretrained_", "vae_loss_", "pretrain_loss_"):
            setattr(twin, attr, getattr(self, attr))
        return twin

    def _trainable(self, denoiser: GuidedDenoiser) -> None:
        """Train G (hint encoder, the zero convs in use, SFF) and the UNet's decoder; freeze the rest."""
        denoiser.requires_grad_(False)
        unet = denoiser.unet
        for part in (unet.up_blocks, unet.conv_norm_out, unet.conv_out, denoiser.sg, denoiser.sff):
            if part is not None:
                part.requires_grad_(True)
        if denoiser.sg is not None and self.only_mid_control:  # zero convs whose control is never used
            k = self.layers_per_block + 1
            used = len(denoiser.sg.controlnet_down_blocks) - (2 * k if denoiser.sff is not None else k)
            for conv in list(denoiser.sg.controlnet_down_blocks)[:used]:
                conv.requires_grad_(False)

    def autoencoder_loss(self, vae: nn.Module, images: Tensor) -> Tensor:
        """L_AE = ‖x − D(z)‖₁ + λ_KL·KL, both summed per image and averaged over the batch (LDM)."""
        x = self._view(images)
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample()).sample
        return (x - x_hat).abs().flatten(1).sum(1).mean() + self.kl_weight * posterior.kl().mean()

    def denoising_loss(self, denoiser: nn.Module, images: Tensor) -> Tensor:
        """LDM's ε loss on z₀ = s_z·E(x) with t ~ U{0..T−1}, guided by the image (mean over elements)."""
        x = self._view(images)
        with torch.no_grad():
            z0 = self.encode(x, sample=True)
        t = torch.randint(0, len(self.alpha_bar), (len(z0),), device=z0.device)
        noise = torch.randn_like(z0)
        eps_hat = denoiser(q_sample(z0, t, self.alpha_bar, noise), t, hint=x).sample
        return F.mse_loss(eps_hat.float(), noise)

    @torch.no_grad()
    def _latent_scale(self, data: Dataset | DataLoader) -> Tensor:
        """s_z: SD's 0.18215 with its VAE, else 1/std of the training latents (LDM's ``scale_by_std``)."""
        if self.sd_weights_:
            return torch.tensor(self.vae.config.scaling_factor, device=self.device)
        latents = [self.vae.encode(self._view(x)).latent_dist.mode()
                   for x in iter_images(data, self.vae_batch_size, self.device)]
        return 1 / torch.cat(latents).float().std()

    # --- reconstruction and the anomaly map --------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: Tensor, t_start: int | None = None) -> Tensor:
        """x̂: images in [0,1] encoded, noised to ``t_start`` (default T−1), DDIM-denoised (η = 0), decoded.

        One seeded noise tensor ``[1, C, h, w]`` serves every image, so x̂ does not depend on the
        batch. Returned in [0,1] at the input's H×W.
        """
        self._check_fitted()
        images = images.to(self.device)
        x = self._view(images)
        z0 = self.encode(x)
        start = len(self.alpha_bar) - 1 if t_start is None else t_start
        trajectory = self.trajectory if t_start is None else ddim_timesteps(start, self.skip)
        noise = seeded_noise(self.seed, (1, *z0.shape[1:]), 1, z0.device)[0]
        z_t = q_sample(z0, start, self.alpha_bar, noise)
        epsilon = functools.partial(unet_epsilon, functools.partial(self.denoiser, hint=x))
        z0_hat = ddim_sample(epsilon, z_t, trajectory, self.alpha_bar, eta=0.0)
        return resize(to_unit(self.decode(z0_hat)), images.shape[-2:]).clamp(0, 1)

    def feature_distance(self, images: Tensor, reconstruction: Tensor) -> Tensor:
        """Σ_l up(1 − cos(φ_l(x), φ_l(x̂))) at the input's H×W, ``[B,H,W]`` (before smoothing)."""
        size = images.shape[-2:]
        seen = resize(resize(images, self.input_size), size)  # the input as the model sees it
        distance = images.new_zeros(len(images), *size)
        for f_x, f_r in zip(self.feature_extractor(seen), self.feature_extractor(reconstruction)):
            distance += upsample(1 - F.cosine_similarity(f_x, f_r, dim=1), size)
        return distance

    def _predict(self, images: Tensor) -> Prediction:
        reconstruction = self.reconstruct(images)
        return anomaly_prediction(self.feature_distance(images, reconstruction), images.shape[-2:], self.sigma,
                                  reconstruction=reconstruction)
