"""Denoising diffusion pieces shared by DDAD and DiAD, built on diffusers' UNet and schedulers.

DDPM (Ho, Jain & Abbeel, NeurIPS 2020, arXiv:2006.11239) corrupts an image x₀ in T steps with a
variance schedule β_1..β_T (linear from 1e-4 to 0.02, T = 1000); with α_t = 1 − β_t and
ᾱ_t = ∏_{s≤t} α_s any step is reached in one jump:

    x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε,   ε ~ N(0, I)                        (DDPM Eq. 4)

A network ε_θ(x_t, t) learns to predict the noise:  L = ‖ε − ε_θ(x_t, t)‖²   (DDPM Eq. 14).
DDIM (Song, Meng & Ermon, ICLR 2021, arXiv:2010.02502) walks back on any sub-sequence of steps:

    x̂₀ = (x_t − √(1 − ᾱ_t) · ε̂) / √ᾱ_t                                      (DDIM Eq. 9)
    x_s = √ᾱ_s · x̂₀ + √(1 − ᾱ_s − σ²) · ε̂ + σ · z,
    σ = η · √((1 − ᾱ_s)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_s)                         (DDIM Eq. 12, 16)

η = 0 is deterministic; η = 1 on consecutive steps is exactly DDPM's ancestral sampler.

What this module adds to diffusers, and why: the ᾱ table comes from diffusers' ``DDPMScheduler``
and the network is its ``UNet2DModel``, but the DDIM step is written out (and tested equal to
``DDIMScheduler.step``) because DDAD and DiAD must *change* ε between the network and the update
— conditioning needs ε̂ and x̂₀ exposed, which ``DDIMScheduler.step`` keeps inside. The noise of
a trajectory can be passed in, so a model can make its samples independent of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor, nn

from .env import progress_bar, seeded
from .errors import AdlearnError
from .settings import Settings

__all__ = [
    "DDIMStep",
    "UNetConfig",
    "alpha_bar_at",
    "alpha_bar_table",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_scheduler",
    "epsilon_loss",
    "generate",
    "q_sample",
    "seeded_noise",
    "to_signed",
    "to_unit",
    "unet_epsilon",
]

EpsilonFn = Callable[[Tensor, int], Tensor]
"""ε̂(x_t, t): the noise estimate a sampler uses (the network's, or a conditioned one)."""


# --- the forward process ----------------------------------------------------------------------
def ddpm_scheduler(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                   beta_schedule: str = "linear") -> DDPMScheduler:
    """diffusers' DDPM scheduler with ε-prediction and no clipping; β linear from ``beta_start`` to
    ``beta_end`` (DDPM), or ``"scaled_linear"``, linear in √β (latent diffusion: 0.00085 → 0.012)."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, prediction_type="epsilon", clip_sample=False)


def alpha_bar_table(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                    beta_schedule: str = "linear") -> Tensor:
    """ᾱ_t for t = 0 … T−1 (float32, diffusers' values): ``table[t]`` is the signal fraction at step t."""
    return ddpm_scheduler(num_train_timesteps, beta_start, beta_end, beta_schedule).alphas_cumprod.clone()


def alpha_bar_at(alpha_bar: Tensor, t: int) -> Tensor:
    """ᾱ_t, with ᾱ = 1 for t < 0 (the clean image that a trajectory's last step lands on)."""
    return alpha_bar[t] if t >= 0 else torch.ones((), dtype=alpha_bar.dtype, device=alpha_bar.device)


def q_sample(x0: Tensor, t: Tensor | int, alpha_bar: Tensor, noise: Tensor) -> Tensor:
    """x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε (DDPM Eq. 4); ``t`` is one step or one per image ``[B]``."""
    a = alpha_bar[torch.as_tensor(t, device=alpha_bar.device)].to(x0.dtype)
    a = a.view(-1, 1, 1, 1) if a.ndim else a
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def unet_epsilon(unet: nn.Module, x_t: Tensor, t: Tensor | int) -> Tensor:
    """ε_θ(x_t, t) from a diffusers ``UNet2DModel`` (also when wrapped for DDP)."""
    t = torch.as_tensor(t, device=x_t.device)
    if t.ndim == 0:
        t = t.expand(len(x_t))
    return unet(x_t, t).sample


def epsilon_loss(unet: nn.Module, x0: Tensor, alpha_bar: Tensor, reduction: str = "sum") -> Tensor:
    """DDPM's simple loss ‖ε − ε_θ(x_t, t)‖² with t ~ U{0..T−1} (Eq. 14) on ``x0`` in [-1, 1].

    ``reduction="sum"`` sums over pixels and averages over the batch (DDAD's code); ``"mean"``
    averages over pixels too (diffusers' examples). Noise and t come from torch's global RNG,
    which the training loop seeds per epoch.
    """
    if reduction not in ("sum", "mean"):
        raise AdlearnError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    t = torch.randint(0, len(alpha_bar), (len(x0),), device=x0.device)
    noise = torch.randn_like(x0)
    error = (noise - unet_epsilon(unet, q_sample(x0, t, alpha_bar, noise), t)).pow(2)
    return error.flatten(1).sum(1).mean() if reduction == "sum" else error.mean()


# --- the reverse process ----------------------------------------------------------------------
@dataclass
class DDIMStep:
    """One reverse step: the next sample and the two estimates it was built from."""

    x_prev: Tensor
    """x_s, the sample at the earlier step s < t."""
    x0_hat: Tensor
    """x̂₀, the clean image implied by x_t and ε̂ (DDIM Eq. 9)."""
    eps_hat: Tensor
    """ε̂, the noise estimate used."""


def ddim_step(x_t: Tensor, eps_hat: Tensor, alpha_bar_t: Tensor, alpha_bar_prev: Tensor, eta: float = 0.0,
              noise: Tensor | None = None) -> DDIMStep:
    """x_t → x_s with noise estimate ε̂ (DDIM Eq. 12); ``noise`` z is needed when ``eta > 0``."""
    x0_hat = (x_t - (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()  # Eq. 9
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    sigma = eta * variance.sqrt()  # Eq. 16
    x_prev = alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps_hat
    if eta > 0:
        if noise is None:
            raise AdlearnError("ddim_step with eta > 0 needs the noise z (e.g. torch.randn_like(x_t))")
        x_prev = x_prev + sigma * noise
    return DDIMStep(x_prev=x_prev, x0_hat=x0_hat, eps_hat=eps_hat)


def ddim_timesteps(start: int, skip: int) -> list[tuple[int, int]]:
    """The (t, s) pairs of a trajectory from step ``start`` down by ``skip``: start, start−skip, … > 0.

    The last step lands on the clean image (s = −1, ᾱ = 1). ``ddim_timesteps(250, 25)`` is
    DDAD's 10 steps; ``ddim_timesteps(999, 1)`` is DDPM's full chain.
    """
    if start < 1 or skip < 1:
        raise AdlearnError(f"a trajectory needs start ≥ 1 and skip ≥ 1, got start={start}, skip={skip}")
    steps = list(range(start, 0, -skip))
    return list(zip(steps, steps[1:] + [-1]))


def ddim_sample(
    epsilon: EpsilonFn,
    x_t: Tensor,
    timesteps: Sequence[tuple[int, int]],
    alpha_bar: Tensor,
    eta: float = 0.0,
    noises: Sequence[Tensor] | None = None,
    callback: Callable[[int, DDIMStep], None] | None = None,
    progress: bool = False,
) -> Tensor:
    """Run the reverse process from ``x_t`` (at ``timesteps[0][0]``) to x₀ with DDIM steps.

    ``epsilon(x_t, t)`` returns the ε̂ to use — the network's, or a conditioned one (DDAD).
    ``noises[i]`` is the z of step i (it may be ``[1,C,H,W]``: broadcast over the batch, which
    keeps each image's trajectory independent of its batch); ``None`` draws from torch's RNG.
    ``callback(i, step)`` sees every :class:`DDIMStep` (for figures).
    """
    if noises is not None and eta > 0 and len(noises) < len(timesteps):
        raise AdlearnError(f"{len(timesteps)} steps need as many noises, got {len(noises)}")
    for i, (t, s) in enumerate(progress_bar(timesteps, desc="DDIM", leave=False, enabled=progress)):
        noise = None
        if eta > 0:
            noise = noises[i] if noises is not None else torch.randn_like(x_t)
        a_t, a_s = alpha_bar_at(alpha_bar, t), alpha_bar_at(alpha_bar, s)
        step = ddim_step(x_t, epsilon(x_t, t), a_t, a_s, eta, noise)
        if callback is not None:
            callback(i, step)
        x_t = step.x_prev
    return x_t


@torch.no_grad()
def generate(unet: nn.Module, alpha_bar: Tensor, n: int, *, skip: int = 20, eta: float = 0.0, seed: int = 0,
             progress: bool = False) -> Tensor:
    """``n`` images in [-1, 1] sampled from pure noise with DDIM (``skip=1, eta=1``: DDPM)."""
    size = unet.config.sample_size
    shape = (n, unet.config.in_channels, size, size)
    steps = ddim_timesteps(len(alpha_bar) - 1, skip)
    device = alpha_bar.device
    x_T, *noises = seeded_noise(seed, shape, 1 + len(steps), device)
    def epsilon(x: Tensor, t: int) -> Tensor:
        return unet_epsilon(unet, x, t)

    return ddim_sample(epsilon, x_T, steps, alpha_bar, eta, noises, progress=progress)


def seeded_noise(seed: int, shape: Sequence[int], count: int, device: torch.device | str) -> list[Tensor]:
    """``count`` standard normal tensors of ``shape`` from a CPU generator seeded by ``seed``.

    Drawn on the CPU and moved, so the numbers are the same on every device.
    """
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(shape), generator=generator).to(device) for _ in range(count)]


# --- the network ------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetConfig(Settings):
    """The denoiser's architecture, one object that DDAD and DiAD share (defaults: DDAD's ≈ 33 M UNet).

    Level i has ``base_channels · channel_mults[i]`` channels and halves the resolution before
    the next; ``attention_levels`` get self-attention with ``heads`` heads (DDAD: 32², 16², 8² at
    256 px). Stored in a model as a plain dict (:meth:`params`), rebuilt with ``UNetConfig(**d)``.
    """

    argument: ClassVar[str] = "denoiser"
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (3, 4, 5)
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        if not self.channel_mults or any(m < 1 for m in self.channel_mults) or self.base_channels < 1:
            raise AdlearnError(f"channel_mults must be positive integers, got {self.channel_mults}")
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channel_mults)]
        if bad:
            raise AdlearnError(f"attention_levels {bad} do not exist in a {len(self.channel_mults)}-level UNet")

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level."""
        return tuple(self.base_channels * m for m in self.channel_mults)

    def check_size(self, sample_size: int) -> None:
        """Every level halves the image: the side must divide by 2^(levels − 1)."""
        if sample_size < 1 or sample_size % 2 ** (len(self.channel_mults) - 1):
            raise AdlearnError(
                f"input size {sample_size} must be divisible by 2^{len(self.channel_mults) - 1} for a "
                f"{len(self.channel_mults)}-level UNet; change the size or channel_mults"
            )

    def build(self, sample_size: int, in_channels: int = 3, seed: int = 0) -> UNet2DModel:
        """A guided-diffusion-style ``UNet2DModel`` for ``sample_size``² images, initialised from ``seed``.

        Like guided diffusion, time conditions the residual blocks by scale and shift of the
        normalised features, and resolution changes inside residual blocks (BigGAN style). The
        global RNG is left untouched.
        """
        self.check_size(sample_size)
        channels = self.channels
        down = tuple("AttnDownBlock2D" if i in self.attention_levels else "DownBlock2D" for i in range(len(channels)))
        up = tuple(b.replace("Down", "Up") for b in reversed(down))
        with seeded(seed):
            return UNet2DModel(
                sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                block_out_channels=channels, down_block_types=down, up_block_types=up,
                layers_per_block=self.layers_per_block, attention_head_dim=max(1, channels[-1] // self.heads),
                norm_num_groups=math.gcd(32, *channels), dropout=self.dropout,
                resnet_time_scale_shift="scale_shift", downsample_type="resnet", upsample_type="resnet",
            )


# --- image space ------------------------------------------------------------------------------
def to_signed(images: Tensor) -> Tensor:
    """[0, 1] → [-1, 1], the range diffusion models are trained in."""
    return images * 2 - 1


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] → [0, 1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)
