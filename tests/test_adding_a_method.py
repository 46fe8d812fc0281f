"""A new method is one file: this test defines one here, and only here, and runs the contract suite.

It follows CONTRIBUTING.md's "Adding a method" step by step: subclass ``AnomalyModel`` with a
``name``, hyper-parameters as constructor arguments (recorded by the base class), its profile
settings next to the class, ``_fit`` and ``_predict`` on the shared pieces. Nothing in the package
is edited, yet ``build(name, "fast")``, ``save``/``load`` and the whole contract suite work for it.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from adlearn.batches import iter_images
from adlearn.errors import AdlearnError
from adlearn.models import REGISTRY, AnomalyModel, build
from adlearn.prediction import Prediction, anomaly_prediction
from tests.test_contract import ContractSuite


class PixelGaussian(AnomalyModel):
    """A toy method: one Gaussian per pixel and channel; the map is the mean |z-score| over channels."""

    name = "PixelGaussian"
    profiles = {"fast": {"sigma": 1.0}, "book": {"sigma": 2.0}}

    def __init__(self, sigma: float = 4.0, min_std: float = 0.01, batch_size: int = 8) -> None:
        self.register_buffer("mean", None)
        self.register_buffer("std", None)

    def _check_params(self) -> None:
        if self.min_std <= 0:
            raise AdlearnError(f"min_std must be positive, got {self.min_std}")

    def _fit(self, data: Dataset | DataLoader) -> None:
        images = torch.cat(list(iter_images(data, self.batch_size, self.device)))
        self._check_image_size(images, fitting=True)
        self.mean, self.std = images.mean(0), images.std(0).clamp_min(self.min_std)

    def _predict(self, images: Tensor) -> Prediction:
        self._check_image_size(images)
        return anomaly_prediction(((images - self.mean) / self.std).abs().mean(1), images.shape[-2:], self.sigma)


REGISTRY.pop(PixelGaussian.name)  # registered only while this file's tests run (see the fixture)


@pytest.fixture(scope="module", autouse=True)
def registered():
    REGISTRY[PixelGaussian.name] = PixelGaussian
    yield
    REGISTRY.pop(PixelGaussian.name)


class TestAToyMethod(ContractSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def name(cls) -> str:
        return PixelGaussian.name

    @pytest.fixture(scope="class")
    @classmethod
    def tiny(cls) -> dict:
        return {}


def test_build_uses_the_profile_declared_next_to_the_class() -> None:
    assert build("PixelGaussian", "fast").sigma == 1.0
    assert build("PixelGaussian", "book", min_std=0.1).get_params() == {"sigma": 2.0, "min_std": 0.1, "batch_size": 8}
    assert build("PixelGaussian", "paper").sigma == 4.0  # no entry: the constructor's (paper) defaults
    with pytest.raises(AdlearnError, match="min_std must be positive"):
        build("PixelGaussian", "fast", min_std=0)
