"""The trivial baseline: distance to the mean training image.

Anomaly map A(x)_ij = mean over channels of |x_ij − x̄_ij|, with x̄ the pixel-wise mean of the
nominal training images, smoothed by a Gaussian; image score = max of the map.

It knows nothing about texture or context, so it fails as soon as nominal images vary (random
texture phase, shifts, lighting) — which is why every real method must beat it clearly on a data
set before that data set can teach anything.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import AdlearnError
from ..ops import gaussian_blur
from .base import AnomalyModel, Prediction, iter_images

__all__ = ["MeanImage"]


class MeanImage(AnomalyModel):
    """Per-pixel |x − mean training image|, smoothed; a baseline every method must beat."""

    name = "MeanImage"

    def __init__(self, sigma: float = 4.0, batch_size: int = 32, *, device: str | torch.device | None = None) -> None:
        super().__init__(device=device)
        self.sigma = sigma
        self.batch_size = batch_size
        self.register_buffer("mean_image", None)

    def _fit(self, data: Dataset | DataLoader) -> None:
        total, count = None, 0
        for images in iter_images(data, self.batch_size, self.device):
            if total is not None and images.shape[1:] != total.shape:
                raise AdlearnError(f"training images differ in size: {tuple(total.shape)} vs {tuple(images.shape[1:])}")
            total = images.sum(0) if total is None else total + images.sum(0)
            count += len(images)
        self.mean_image = total / count

    def _predict(self, images: Tensor) -> Prediction:
        if images.shape[1:] != self.mean_image.shape:
            raise AdlearnError(
                f"MeanImage was fitted on images of shape {tuple(self.mean_image.shape)}, "
                f"got {tuple(images.shape[1:])}: resize the images to the training size"
            )
        anomaly_map = gaussian_blur((images - self.mean_image).abs().mean(1), self.sigma)
        return Prediction(score=anomaly_map.amax(dim=(1, 2)), anomaly_map=anomaly_map)
