"""The trivial baseline: distance to the mean training image.

Anomaly map A(x)_ij = mean over channels of |x_ij − x̄_ij|, with x̄ the pixel-wise mean of the
nominal training images, smoothed by a Gaussian; image score = max of the map.

It knows nothing about texture or context, so it fails as soon as nominal images vary (random
texture phase, shifts, lighting) — which is why every real method must beat it clearly on a data
set before that data set can teach anything.
"""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..batches import iter_images
from ..prediction import Prediction, anomaly_prediction
from ..profiles import sigma_for
from .base import AnomalyModel

__all__ = ["MeanImage"]


class MeanImage(AnomalyModel):
    """Per-pixel |x − mean training image|, smoothed; a baseline every method must beat."""

    name = "MeanImage"
    profiles = {"fast": {"sigma": sigma_for(128)}}

    def __init__(self, sigma: float = 4.0, batch_size: int = 32) -> None:
        self.register_buffer("mean_image", None)

    def _fit(self, data: Dataset | DataLoader) -> None:
        total, count = 0, 0
        for images in iter_images(data, self.batch_size, self.device):
            self._check_image_size(images, fitting=count == 0)
            total = total + images.sum(0)
            count += len(images)
        self.mean_image = total / count

    def _learned_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"mean_image": (3, *self.image_size_)}

    def _predict(self, images: Tensor) -> Prediction:
        self._check_image_size(images)
        return anomaly_prediction((images - self.mean_image).abs().mean(1), images.shape[-2:], self.sigma)
