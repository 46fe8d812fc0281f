"""Convolutional encoder and decoder builders (Bergmann et al.'s autoencoder, generalised).

The AutoEncoder and the VAE are built from these, so the two differ only in their bottleneck
and loss. The encoder halves an image of side 8·2ⁿ in n stride-2 stages down to an 8×8 grid,
then maps that grid to an s×s code; the decoder mirrors it and ends in a sigmoid.
"""

from __future__ import annotations

import math

from torch import nn

from .errors import AdlearnError

__all__ = ["GRID", "build_decoder", "build_encoder", "he_init", "stage_widths"]

GRID = 8  # side of the last feature grid before the bottleneck, as in the paper


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def stage_widths(input_size: int, base_width: int) -> list[int]:
    """Channels of the n = log2(input_size / 8) stride-2 stages: base, …, base, 2·base, 4·base."""
    n = math.log2(input_size / GRID) if input_size > 0 else -1
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
        nn.Conv2d(base_width, out_channels, GRID + 1 - latent_size),
    ]  # 8×8 grid → s×s code
    return nn.Sequential(*layers).apply(he_init)


def build_decoder(input_size: int, base_width: int, in_channels: int, latent_size: int) -> nn.Sequential:
    """D: ``[B,in_channels,s,s]`` → ``[B,3,S,S]`` in [0,1]; the encoder's layers in reverse order."""
    widths = stage_widths(input_size, base_width)
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(in_channels, base_width, GRID + 1 - latent_size),
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
