"""Variational autoencoder baseline (Kingma & Welling, ICLR 2014, arXiv:1312.6114).

The encoder of a VAE outputs a distribution over codes instead of one code, and the loss asks
that distribution to stay close to a standard normal prior. The decoder must then redraw images
from *any* typical code, which smooths the code space — the hope is that a defect, having no
typical code, is redrawn as nominal. PaDiM (Defard et al. 2020) reports such a VAE as its
reconstruction baseline on MVTec AD, scored by the pixel-wise L2 error of the reconstruction:

    q(z|x) = N(μ(x), diag σ²(x)),   z = μ + σ ⊙ ε,  ε ~ N(0, I)   (reparameterisation)   (1)
    KL(q(z|x) ‖ N(0, I)) = −½ Σ_k (1 + log σ²_k − μ²_k − σ²_k)                           (2)
    L(x) = [Σ_{c,i,j} ρ(x, x̂)_{cij} + β · KL] / (C·H·W),   x̂ = D(z)                      (3)
    residual r(x) = ρ(x, D(μ(x))), map and score as the autoencoder's (max of the smoothed map)

with ρ the autoencoder's per-pixel error (squared error for ``loss="l2"``: Eq. (3) is then the
negative ELBO of a Gaussian decoder with variance ½, divided by the number of pixel values).

What adlearn does differently, and why:

* The encoder and decoder are the :class:`~adlearn.models.AutoEncoder`'s (the same builders), the
  encoder emitting 2·d channels (μ and log σ²), so AE and VAE differ only in the bottleneck and
  the KL term — a controlled comparison. PaDiM's VAE used a ResNet18 encoder and an 8×8 code
  (``latent_size=8`` here).
* ``predict`` decodes the posterior mean μ(x): no sampling, so a score is deterministic.
* Training, augmentation, resizing, map and score are shared with the autoencoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import AdlearnError
from .autoencoder import AutoEncoder, build_decoder, build_encoder

__all__ = ["VAE", "VariationalNetwork", "kl_divergence"]


def kl_divergence(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per image (Eq. 2), summed over the code ``[B, d, s, s]`` → ``[B]``."""
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
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if sample else mu  # Eq. (1)
        return self.decoder(z), mu, log_var


class VAE(AutoEncoder):
    """Convolutional VAE: ``beta``, the weight of the KL term (Eq. 3), plus every keyword argument
    of :class:`~adlearn.models.AutoEncoder` (same defaults).

    ``latent_dim`` is the dimension of z per grid cell; the encoder outputs twice as many channels.
    """

    name = "VAE"

    def __init__(self, beta: float = 1.0, **autoencoder_args: Any) -> None:
        self.beta = beta
        super().__init__(**autoencoder_args)

    @classmethod
    def _param_names(cls) -> list[str]:
        return [*AutoEncoder._param_names(), "beta"]

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
        """Eq. (3) for a batch: mean reconstruction error + β · KL / (C·H·W), with a sampled z."""
        x = self.prepare(images)
        x_hat, mu, log_var = network(x, sample=True)
        reconstruction = self.residual_map(x, x_hat).mean()
        return reconstruction + self.beta * kl_divergence(mu, log_var).mean() / x[0].numel()
