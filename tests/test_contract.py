"""The contract every registered model obeys (scikit-learn's ``check_estimator`` idea).

:class:`ContractSuite` holds the checks; :class:`TestPackageModels` runs them over ``REGISTRY``,
so a model added to the package is checked automatically (``TINY`` says how to make it small
enough for a unit test). ``tests/test_adding_a_method.py`` runs the same suite over a method
defined in that test file only.
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
    "DDAD": {"input_size": 32, "epochs": 40,
             "denoiser": {"base_channels": 16, "channel_mults": (1, 2), "layers_per_block": 1,
                          "attention_levels": ()},
             "lr": 2e-3, "batch_size": 8,
             "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": 1.0, "da_epochs": 1},
    # a 32-px, f4 autoencoder and a 2-level latent UNet on 8×8 latents, every stage for a few epochs
    "DiAD": {"input_size": 32, "vae_channels": (16, 32, 32), "hint_channels": (16, 32, 32), "unet_channels": (16, 32),
             "attention_levels": (1,), "cross_attention_dim": 16, "vae_epochs": 6, "pretrain_epochs": 6,
             "epochs": 6, "sigma": 1.0},
}


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


class _FailingDataset(_LabelledDataset):
    """Nominal images until item ``fail_at``, where reading fails (a vanished disk, a corrupt file)."""

    def __init__(self, images: torch.Tensor, fail_at: int) -> None:
        super().__init__(images, label=0)
        self.fail_at = fail_at

    def __getitem__(self, i: int) -> dict:
        if i >= self.fail_at:
            raise OSError(f"cannot read img{i}.png")
        return super().__getitem__(i)


class ContractSuite:
    """The checks. A subclass provides the fixtures ``name`` (a registered model) and ``tiny``
    (constructor overrides that make it small)."""

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, name, tiny, train_images):
        model = build(name, profile="fast", device="cpu", **tiny)
        assert list(model.parameters()) == [], "the constructor must store hyper-parameters only"
        assert model.fit(train_images) is model
        return model

    @pytest.fixture
    def fresh(self, name, tiny):
        return build(name, profile="fast", device="cpu", **tiny)

    def test_prediction_shapes_dtypes_device(self, fitted, test_images) -> None:
        pred = fitted.predict(test_images)
        assert isinstance(pred, Prediction)
        assert pred.score.shape == (4,) and pred.anomaly_map.shape == (4, 64, 64)
        assert pred.score.dtype == torch.float32 and pred.anomaly_map.dtype == torch.float32
        assert pred.score.device.type == fitted.device.type
        assert torch.isfinite(pred.score).all() and torch.isfinite(pred.anomaly_map).all()
        assert pred.score.std() > 0, "scores of different images should differ"

    def test_save_load_gives_identical_predictions(self, fitted, test_images, tmp_path) -> None:
        path = fitted.save(tmp_path / "model.pt")
        restored = adlearn.load(path, device="cpu")
        assert type(restored) is type(fitted)
        assert restored.get_params() == fitted.get_params()
        assert getattr(restored, "weights_", None) == getattr(fitted, "weights_", None), "the weight tag is kept"
        a, b = fitted.predict(test_images), restored.predict(test_images)
        torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)
        torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)

    def test_same_seed_same_scores(self, fitted, name, tiny, train_images, test_images) -> None:
        twin = build(name, profile="fast", device="cpu", **tiny).fit(train_images)
        torch.testing.assert_close(twin.predict(test_images).score, fitted.predict(test_images).score)

    def test_prediction_does_not_depend_on_the_batch(self, fitted, test_images) -> None:
        together = fitted.predict(test_images)
        scale = max(1.0, together.anomaly_map.abs().max().item())  # maps come in each model's units (z-scores…)
        for i in range(len(test_images)):
            alone = fitted.predict(test_images[i : i + 1])
            torch.testing.assert_close(alone.score, together.score[i : i + 1], rtol=1e-4, atol=1e-5 * scale)
            torch.testing.assert_close(alone.anomaly_map, together.anomaly_map[i : i + 1], rtol=1e-4,
                                       atol=1e-5 * scale)

    def test_defects_score_higher(self, fitted, test_images) -> None:
        score = fitted.predict(test_images).score
        assert score[2:].min() > score[:2].max(), f"a bright square should stand out: {score.tolist()}"

    def test_other_float_dtypes_are_converted(self, fitted, test_images) -> None:
        reference = fitted.predict(test_images).score
        torch.testing.assert_close(fitted.predict(test_images.double()).score, reference)
        for dtype in (torch.float16, torch.bfloat16):  # rounded inputs: close, not equal
            pred = fitted.predict(test_images.to(dtype))
            assert pred.score.dtype == torch.float32 and torch.isfinite(pred.score).all()

    def test_refit_starts_from_scratch_and_a_failed_fit_leaves_it_unfitted(
        self, fitted, train_images, test_images
    ) -> None:
        """scikit-learn's rule: ``fit`` forgets everything learned before; ``warm_start`` continues."""
        before = fitted.predict(test_images)
        with pytest.raises(OSError, match="cannot read img"):
            fitted.fit(_FailingDataset(train_images, fail_at=10))
        assert not fitted.fitted_
        with pytest.raises(AdlearnError, match="not fitted"):
            fitted.predict(test_images)
        fitted.fit(train_images, warm_start=True)
        assert fitted.fitted_
        fitted.fit(train_images)  # from scratch again: the same model as the first fit
        after = fitted.predict(test_images)
        torch.testing.assert_close(after.score, before.score)
        torch.testing.assert_close(after.anomaly_map, before.anomaly_map)

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
    def test_bad_input_is_a_clear_error(self, fitted, bad, fragment) -> None:
        with pytest.raises(AdlearnError) as err:
            fitted.predict(bad)
        assert fragment in str(err.value)

    def test_fit_on_empty_data_fails_clearly(self, fresh) -> None:
        with pytest.raises(AdlearnError, match="empty"):
            fresh.fit(_EmptyDataset())

    def test_fit_refuses_anomalous_training_images(self, fresh, train_images) -> None:
        with pytest.raises(AdlearnError, match="anomalous"):
            fresh.fit(_LabelledDataset(train_images, label=1))

    def test_predict_before_fit_fails_clearly(self, fresh, test_images) -> None:
        with pytest.raises(AdlearnError, match="not fitted"):
            fresh.predict(test_images)

    def test_constructor_round_trips_its_parameters(self, fresh, name) -> None:
        clone = REGISTRY[name](**fresh.get_params())
        assert clone.get_params() == fresh.get_params()

    def test_unknown_hyper_parameter_names_the_valid_ones(self, name, tiny) -> None:
        with pytest.raises(AdlearnError, match="hyper-parameters are") as err:
            build(name, profile="fast", bogus=1)
        assert all(p in str(err.value) for p in REGISTRY[name]._param_names())

    def test_every_profile_builds(self, name) -> None:
        for profile in ("fast", "book", "paper"):
            model = build(name, profile)
            assert set(REGISTRY[name].params_for(profile)) <= set(model.get_params())


class TestPackageModels(ContractSuite):
    @pytest.fixture(scope="class", params=sorted(REGISTRY))
    @classmethod
    def name(cls, request) -> str:
        return request.param

    @pytest.fixture(scope="class")
    @classmethod
    def tiny(cls, name) -> dict:
        return TINY[name]


def test_every_model_has_tiny_settings() -> None:
    assert set(REGISTRY) == set(TINY), "add the new model's small test settings to TINY"


def test_device_follows_to(train_images) -> None:
    model = build("MeanImage", profile="fast", device="cpu").fit(train_images)
    assert model.device.type == "cpu"
    assert model.to("meta").device.type == "meta", "predict must send images where .to() moved the model"
