"""What a model's ``predict`` returns, and the one way a raw map becomes it.

Every adlearn method ends the same way: a low-resolution map of per-patch distances is upsampled
to the input, smoothed by a Gaussian of std σ, and the image score is the map's maximum (the
protocol of the official MVTec AD evaluation). :func:`anomaly_prediction` does exactly that and
each method calls it visibly at the end of its ``_predict``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import Tensor

from .ops import gaussian_blur, upsample

__all__ = ["Prediction", "anomaly_prediction", "concat_predictions"]


@dataclass
class Prediction:
    """What ``predict`` returns. Higher = more anomalous."""

    score: Tensor
    """float[B]: image anomaly score."""
    anomaly_map: Tensor
    """float[B,H,W]: per-pixel anomaly score at the input's resolution."""
    reconstruction: Tensor | None = None
    """float[B,3,H,W] in [0,1] for reconstruction-based models (AE, VAE, DDAD, DiAD)."""

    def to(self, device: str | torch.device) -> "Prediction":
        return Prediction(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})

    def cpu(self) -> "Prediction":
        return self.to("cpu")

    def __len__(self) -> int:
        return len(self.score)


def _to(value: Tensor | None, device: str | torch.device) -> Tensor | None:
    return None if value is None else value.to(device)


def anomaly_prediction(raw_map: Tensor, size: Sequence[int], sigma: float, **extras: Tensor) -> Prediction:
    """A(x) = G_σ * up(raw_map) at the input's ``size``; image score s(x) = max_ij A(x)_ij.

    ``raw_map`` is ``float[B,h,w]``; ``extras`` are further :class:`Prediction` fields
    (``reconstruction=...``).
    """
    anomaly_map = gaussian_blur(upsample(raw_map, tuple(size)), sigma)
    return Prediction(score=anomaly_map.amax(dim=(1, 2)), anomaly_map=anomaly_map, **extras)


def concat_predictions(parts: list[Prediction]) -> Prediction:
    """One :class:`Prediction` from the predictions of consecutive batches."""
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for f in fields(Prediction):
        values = [getattr(p, f.name) for p in parts]
        merged[f.name] = None if values[0] is None else torch.cat(values)
    return Prediction(**merged)
