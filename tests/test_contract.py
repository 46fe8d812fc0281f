"""The contract every registered model obeys (scikit-learn's ``check_estimator`` idea).

Parametrised over ``REGISTRY``: a model added to the package is checked automatically, and
``TINY`` must say how to make it small enough for a unit test.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

import adlearn
from adlearn.errors import AdlearnError
from adlearn.models import REGISTRY, Prediction, build

TINY: dict[str, dict] = {
    "MeanImage": {"sigma": 1.0},
    # a 32-px network trained for a few epochs (seeded augmentation included: the seed test covers it)
    "AutoEncoder": {"input_size": 32, "epochs": 8, "lr": 2e-3, "batch_size": 4, "augment": {"rotate_deg": 2.0},
                    "sigma": 1.0},
    "VAE": {"input_size": 32, "epochs": 8, "lr": 2e-3, "batch_size": 4, "augment": None, "sigma": 1.0},
    "PaDiM": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto", "d": 20, "sigma": 1.0},
    "SPADE": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto", "k": 5, "sigma": 1.0, "chunk_size": 100},
    # a 2-level UNet denoising at 32 px; one epoch of domain adaptation so that save/load covers φ̂
    "DDAD": {"input_size": 32, "base_channels": 16, "channel_mults": (1, 2), "layers_per_block": 1,
             "attention_levels": (), "epochs": 40, "lr": 2e-3, "batch_size": 8,
             "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": 1.0, "da_epochs": 1},
    # a 32-px, f4 autoencoder and a 2-level latent UNet on 8×8 latents, every stage for a few epochs
    "DiAD": {"input_size": 32, "vae_channels": (16, 32, 32), "hint_channels": (16, 32, 32), "unet_channels": (16, 32),
             "attention_levels": (1,), "cross_attention_dim": 16, "vae_epochs": 10, "pretrain_epochs": 10,
             "epochs": 10, "sigma": 1.0},
}


def test_every_model_has_tiny_settings() -> None:
    assert set(REGISTRY) == set(TINY), "add the new model's small test settings to TINY"


@pytest.fixture(scope="module", params=sorted(REGISTRY))
def fitted(request, train_images):
    name = request.param
    model = build(name, profile="fast", device="cpu", **TINY[name])
    assert list(model.parameters()) == [], "the constructor must store hyper-parameters only"
    assert model.fit(train_images) is model
    return model


class _EmptyDataset(Dataset):
    def __len__(self) -> int:
        return 0

    def __getitem__(self, i):  # pragma: no cover - never called
        raise IndexError(i)


class _LabelledDataset(Dataset):
    def __init__(self, images: torch.Tensor, label: int) -> None:
        self.images, self.label = images, label

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.label, "path": f"img{i}.png", "defect": "x"}


def test_prediction_shapes_dtypes_device(fitted, test_images) -> None:
    pred = fitted.predict(test_images)
    assert isinstance(pred, Prediction)
    assert pred.score.shape == (4,) and pred.anomaly_map.shape == (4, 64, 64)
    assert pred.score.dtype == torch.float32 and pred.anomaly_map.dtype == torch.float32
    assert pred.score.device.type == fitted.device.type
    assert torch.isfinite(pred.score).all() and torch.isfinite(pred.anomaly_map).all()
    assert pred.score.std() > 0, "scores of different images should differ"


def test_save_load_gives_identical_predictions(fitted, test_images, tmp_path) -> None:
    path = fitted.save(tmp_path / "model.pt")
    restored = adlearn.load(path, device="cpu")
    assert type(restored) is type(fitted)
    assert restored.get_params() == fitted.get_params()
    a, b = fitted.predict(test_images), restored.predict(test_images)
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)


def test_same_seed_same_scores(fitted, train_images, test_images) -> None:
    twin = build(fitted.name, profile="fast", device="cpu", **TINY[fitted.name]).fit(train_images)
    torch.testing.assert_close(twin.predict(test_images).score, fitted.predict(test_images).score)


def test_prediction_does_not_depend_on_the_batch(fitted, test_images) -> None:
    together = fitted.predict(test_images)
    for i in range(len(test_images)):
        alone = fitted.predict(test_images[i : i + 1])
        torch.testing.assert_close(alone.score, together.score[i : i + 1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.anomaly_map, together.anomaly_map[i : i + 1], rtol=1e-4, atol=1e-5)


def test_defects_score_higher(fitted, test_images) -> None:
    score = fitted.predict(test_images).score
    assert score[2:].min() > score[:2].max(), f"a bright square should stand out: {score.tolist()}"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (torch.rand(3, 64, 64), "unsqueeze(0)"),
        (torch.rand(2, 1, 64, 64), "[B,3,H,W]"),
        (torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "/ 255"),
        (torch.rand(2, 3, 64, 64) * 255, "[0,1]"),
        (torch.full((2, 3, 64, 64), float("nan")), "NaN"),
        ("not a tensor", "torch.Tensor"),
    ],
)
def test_bad_input_is_a_clear_error(fitted, bad, fragment) -> None:
    with pytest.raises(AdlearnError, match=None) as err:
        fitted.predict(bad)
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_on_empty_data_fails_clearly(name) -> None:
    model = build(name, profile="fast", device="cpu", **TINY[name])
    with pytest.raises(AdlearnError, match="empty"):
        model.fit(_EmptyDataset())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_fit_refuses_anomalous_training_images(name, train_images) -> None:
    model = build(name, profile="fast", device="cpu", **TINY[name])
    with pytest.raises(AdlearnError, match="anomalous"):
        model.fit(_LabelledDataset(train_images, label=1))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_predict_before_fit_fails_clearly(name, test_images) -> None:
    model = build(name, profile="fast", device="cpu", **TINY[name])
    with pytest.raises(AdlearnError, match="not fitted"):
        model.predict(test_images)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_constructor_round_trips_its_parameters(name) -> None:
    model = build(name, profile="fast", device="cpu", **TINY[name])
    clone = REGISTRY[name](**model.get_params())
    assert clone.get_params() == model.get_params()


def test_device_follows_to(train_images) -> None:
    model = build("MeanImage", profile="fast", device="cpu").fit(train_images)
    assert model.device.type == "cpu"
    assert model.to("meta").device.type == "meta", "predict must send images where .to() moved the model"
