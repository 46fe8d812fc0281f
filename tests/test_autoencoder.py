"""AutoEncoder (L2 / SSIM), VAE and the augmentation they train with."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adlearn
from adlearn.augment import Augment
from adlearn.errors import AdlearnError
from adlearn.conv import build_decoder, build_encoder, stage_widths
from adlearn.models import VAE, AutoEncoder, build
from adlearn.models.autoencoder import kl_divergence
from adlearn.ops import ssim_map
from adlearn.training import History
from tests.conftest import nominal_images

SMALL = {
    "input_size": 32,
    "epochs": 4,
    "lr": 1e-3,
    "batch_size": 4,
    "augment": None,
    "sigma": 1.0,
    "device": "cpu",
}
IMAGES = nominal_images(12, size=48)


# --- architecture ---------------------------------------------------------------------------
def test_encoder_is_bergmann_et_al_at_128_px() -> None:
    """Filters [32, 32, 32, 64, 64, 128, 64, 32, d] and kernels [4, 4, 3, 4, 3, 4, 3, 3, 8] (methods.md §1.2)."""
    convs = [m for m in build_encoder(128, 32, 100, 1) if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 32, 64, 64, 128, 64, 32, 100]
    assert [c.kernel_size[0] for c in convs] == [4, 4, 3, 4, 3, 4, 3, 3, 8]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 2, 1, 2, 1, 1, 1]
    assert stage_widths(256, 32) == [32, 32, 32, 64, 128] and stage_widths(64, 32) == [32, 64, 128]


@pytest.mark.parametrize("input_size, latent_size", [(32, 1), (64, 1), (64, 8), (128, 4)])
def test_encoder_and_decoder_shapes(input_size: int, latent_size: int) -> None:
    x = torch.rand(2, 3, input_size, input_size)
    z = build_encoder(input_size, 8, 10, latent_size)(x)
    assert z.shape == (2, 10, latent_size, latent_size)
    x_hat = build_decoder(input_size, 8, 10, latent_size)(z)
    assert x_hat.shape == x.shape and x_hat.min() >= 0 and x_hat.max() <= 1


# --- training and prediction ---------------------------------------------------------------
@pytest.mark.parametrize("loss", ["l2", "ssim"])
def test_loss_decreases_and_history_is_kept(loss: str) -> None:
    model = AutoEncoder(loss=loss, **{**SMALL, "epochs": 8, "lr": 1e-3, "val_fraction": 0.25}).fit(IMAGES)
    history = History(**model.history_)
    assert history.epochs == 8 and len(history.val_loss) == 8
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]


def test_objective_is_the_mean_of_the_residual_map() -> None:
    model = AutoEncoder(loss="l2", **SMALL).fit(IMAGES)
    x = model.prepare(IMAGES[:3])
    x_hat = model.reconstruct(x)
    torch.testing.assert_close(model.residual_map(x, x_hat), (x - x_hat).pow(2).mean(1))
    torch.testing.assert_close(model.objective(model.network, IMAGES[:3]), (x - x_hat).pow(2).mean())
    ssim_model = AutoEncoder(loss="ssim", **SMALL)
    torch.testing.assert_close(ssim_model.residual_map(x, x_hat), 1 - ssim_map(x, x_hat).mean(1))


@pytest.mark.parametrize("cls, loss", [(AutoEncoder, "ssim"), (VAE, "l2")])
def test_mixed_precision_training_stays_finite(cls, loss: str) -> None:
    """bf16 autocast runs on CPU too: the SSIM and KL terms are computed in float32 inside it."""
    model = cls(loss=loss, **{**SMALL, "mixed_precision": "bf16"}).fit(IMAGES)
    assert all(torch.isfinite(torch.tensor(model.history_["train_loss"])))
    assert torch.isfinite(model.predict(IMAGES[:2]).anomaly_map).all()


def test_maps_come_back_at_the_input_resolution() -> None:
    model = AutoEncoder(**SMALL).fit(IMAGES)
    images = torch.rand(2, 3, 40, 72)
    pred = model.predict(images)
    assert pred.anomaly_map.shape == (2, 40, 72) and pred.reconstruction.shape == (2, 3, 40, 72)
    assert pred.reconstruction.min() >= 0 and pred.reconstruction.max() <= 1


def test_fit_accepts_a_dataloader() -> None:
    loader = DataLoader(TensorDataset(IMAGES), batch_size=5)
    model = AutoEncoder(**SMALL).fit(loader)
    twin = AutoEncoder(**SMALL).fit(IMAGES)
    torch.testing.assert_close(model.predict(IMAGES[:2]).score, twin.predict(IMAGES[:2]).score)


def test_save_load_keeps_history_and_hyper_parameters(tmp_path) -> None:
    model = VAE(**{**SMALL, "augment": {"rotate_deg": 3.0, "hflip": True}}).fit(IMAGES)
    assert model.get_params()["augment"] == {"rotate_deg": 3.0, "shift": 0.0, "hflip": True, "vflip": False}
    restored = adlearn.load(model.save(tmp_path / "vae.pt"), device="cpu")  # torch.load(weights_only=True)
    assert restored.history_ == model.history_ and len(restored.history_["train_loss"]) == SMALL["epochs"]
    assert restored.get_params() == model.get_params()
    torch.testing.assert_close(
        restored.predict(IMAGES[:2]).anomaly_map, model.predict(IMAGES[:2]).anomaly_map
    )


# --- VAE -----------------------------------------------------------------------------------
def test_kl_divergence_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(3, 5, 2, 2, generator=g), torch.randn(3, 5, 2, 2, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_divergence(mu, log_var), expected)
    assert kl_divergence(torch.zeros(2, 4, 1, 1), torch.zeros(2, 4, 1, 1)).abs().max() == 0, (
        "posterior = prior"
    )


def test_vae_objective_is_reconstruction_plus_beta_kl() -> None:
    model = VAE(beta=2.5, **SMALL)
    model._ensure_built(load_weights=True)
    x = model.prepare(IMAGES[:4])
    torch.manual_seed(7)
    loss = model.objective(model.network, IMAGES[:4])
    torch.manual_seed(7)
    mu, log_var = model.network.encoder(x).chunk(2, dim=1)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
    x_hat = model.network.decoder(z)
    sse = (x - x_hat).pow(2).flatten(1).sum(1)
    kl = -0.5 * (1 + log_var - mu**2 - log_var.exp()).flatten(1).sum(1)
    torch.testing.assert_close(loss, ((sse + 2.5 * kl) / x[0].numel()).mean())


def test_vae_predict_is_deterministic_and_uses_the_posterior_mean() -> None:
    model = VAE(**SMALL).fit(IMAGES)
    a, b = model.predict(IMAGES[:3]), model.predict(IMAGES[:3])
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)
    x = model.prepare(IMAGES[:3])
    mu = model.network.encoder(x).chunk(2, dim=1)[0]
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), model.network.decoder(mu))
    assert model.history_["train_loss"][-1] < model.history_["train_loss"][0]


# --- augmentation ----------------------------------------------------------------------------
def test_augment_is_seeded_and_keeps_shapes() -> None:
    augment = Augment(rotate_deg=10, shift=0.1, hflip=True, vflip=True)
    batch = IMAGES[:6]
    a = augment(batch, generator=torch.Generator().manual_seed(0))
    b = augment(batch, generator=torch.Generator().manual_seed(0))
    c = augment(batch, generator=torch.Generator().manual_seed(1))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    assert a.min() >= 0 and a.max() <= 1, "bilinear warps stay in the input's range"
    torch.manual_seed(3)
    d = augment(batch)
    torch.manual_seed(3)
    torch.testing.assert_close(augment(batch), d, rtol=0, atol=0)


def test_flips_are_exact_and_identity_is_free() -> None:
    batch = IMAGES[:8]
    assert Augment()(batch) is batch
    flipped = Augment(hflip=True)(batch, generator=torch.Generator().manual_seed(0))
    for original, out in zip(batch, flipped):
        assert torch.allclose(out, original, atol=1e-5) or torch.allclose(out, original.flip(-1), atol=1e-5)
    assert not torch.allclose(flipped, batch), "some images of 8 are flipped"


def test_augment_parameters_are_plain_and_validated() -> None:
    assert Augment.from_params({"rotate_deg": 2}) == Augment(rotate_deg=2)
    assert Augment.from_params(None) is None
    assert Augment(shift=0.1).params() == {"rotate_deg": 0.0, "shift": 0.1, "hflip": False, "vflip": False}
    with pytest.raises(AdlearnError, match="unknown augment setting"):
        Augment.from_params({"rotation": 2})
    with pytest.raises(AdlearnError, match="shift"):
        Augment(shift=0.7)
    with pytest.raises(AdlearnError, match="rotate_deg"):
        Augment(rotate_deg=-1)
    with pytest.raises(AdlearnError, match="hflip"):
        Augment(hflip=1)
    with pytest.raises(AdlearnError, match="augment must be"):
        AutoEncoder(augment="flip")


# --- profiles and bad arguments ------------------------------------------------------------
@pytest.mark.parametrize("profile", sorted(adlearn.PROFILES))
def test_every_profile_builds_valid_models(profile: str) -> None:
    for name in ("AutoEncoder", "VAE"):
        model = build(name, profile)
        assert model.get_params() == type(model)(**model.get_params()).get_params()
    assert build("AutoEncoder", "paper").get_params() == AutoEncoder().get_params(), (
        "paper = constructor defaults"
    )


# --- bad arguments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"loss": "l1"}, "loss must be one of"),
        ({"input_size": 100}, "8·2ⁿ"),
        ({"latent_size": 9}, "latent_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(AdlearnError, match=fragment):
        AutoEncoder(**kwargs)


def test_vae_rejects_a_negative_beta() -> None:
    with pytest.raises(AdlearnError, match="beta"):
        VAE(beta=-1)
