"""DDAD: conditioning, the fixed pixel scale, domain adaptation, and denoiser training on 2 processes."""

from __future__ import annotations

import pytest
import torch

import adlearn
from adlearn.diffusion import alpha_bar_at, to_signed, unet_epsilon
from adlearn.errors import AdlearnError
from adlearn.models import DDAD, build
from adlearn.training import split_validation
from tests.conftest import nominal_images

TINY = {"input_size": 32,
        "denoiser": {"base_channels": 16, "channel_mults": (1, 2), "layers_per_block": 1, "attention_levels": ()},
        "epochs": 40, "lr": 2e-3, "batch_size": 8,
        "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": 1.0, "da_epochs": 0,
        "device": "cpu"}


@pytest.fixture(scope="module")
def model(train_images) -> DDAD:
    return DDAD(**TINY).fit(train_images)


def test_constructor_defaults_are_the_papers() -> None:
    p = DDAD().get_params()
    unet = p["denoiser"]
    assert (p["input_size"], unet["base_channels"], unet["channel_mults"], unet["layers_per_block"]) == (
        256, 64, (1, 1, 2, 2, 4, 4), 2)
    assert (unet["attention_levels"], unet["heads"], unet["dropout"]) == ((3, 4, 5), 4, 0.0)
    assert (p["test_steps"], p["skip"], p["eta"], p["w"], p["v"]) == (250, 25, 1.0, 2.0, 1.0)
    assert (p["lr"], p["weight_decay"], p["batch_size"], p["seed"]) == (3e-4, 0.05, 32, 42)
    assert (p["backbone"], p["layers"], p["sigma"]) == ("wide_resnet101_2.tv_in1k", (2, 3), 4.0)
    da = (p["da_epochs"], p["w_da"], p["da_lambda"], p["da_lr"], p["da_batch_size"], p["da_layers"])
    assert da == (4, 3.0, 0.1, 1e-4, 16, (1, 2, 3))


def test_the_denoiser_learned(model) -> None:
    assert model.train_loss_[-1] < 0.7 * model.train_loss_[0]
    assert len(model.val_loss_) == model.epochs


def test_conditioned_epsilon_is_the_papers_equation(model, test_images) -> None:
    y = to_signed(torch.nn.functional.interpolate(test_images, size=32, mode="bilinear"))
    x_t, t, w = torch.randn_like(y), 150, 2.5
    with torch.no_grad():
        eps = unet_epsilon(model.unet, x_t, t)
        a = alpha_bar_at(model.alpha_bar, t)
        y_t = a.sqrt() * y + (1 - a).sqrt() * eps
        expected = eps - w * (1 - a).sqrt() * (y_t - x_t)
        torch.testing.assert_close(model.conditioned_epsilon(x_t, t, y, w), expected)
        torch.testing.assert_close(model.conditioned_epsilon(x_t, t, y, 0.0), eps)


def test_conditioning_pulls_the_reconstruction_towards_the_input(model, test_images) -> None:
    errors = [(model.reconstruct(test_images, w=w) - test_images).abs().mean().item()
              for w in (0.0, 2.0, 8.0)]
    assert errors[0] > errors[1] > errors[2], errors


def test_reconstruction_is_seeded(model, test_images) -> None:
    torch.testing.assert_close(model.reconstruct(test_images), model.reconstruct(test_images), rtol=0, atol=0)
    pred = model.predict(test_images)
    assert pred.reconstruction.shape == test_images.shape
    assert 0 <= pred.reconstruction.min() <= pred.reconstruction.max() <= 1


def test_pixel_scale_is_fixed_from_held_out_nominal_images(model, train_images) -> None:
    """s = max f_d / max i_d over the validation split — never over the test batch."""
    dataset = torch.utils.data.TensorDataset(train_images)
    _, held_out = split_validation(dataset, model.val_fraction, model.seed)
    feature, pixel, _ = model.distance_maps(train_images[held_out.indices])
    assert model.pixel_scale.item() == pytest.approx((feature.max() / pixel.max()).item(), rel=1e-5)
    model.pixel_scale_statistic = "mean"
    try:
        model.adapt_features(train_images, epochs=0)  # re-fixes s only
        assert model.pixel_scale.item() == pytest.approx((feature.mean() / pixel.mean()).item(), rel=1e-5)
    finally:
        model.pixel_scale_statistic = "max"
        model.adapt_features(train_images, epochs=0)


def test_the_fused_map_follows_the_paper(model, test_images) -> None:
    feature, pixel, _ = model.distance_maps(test_images)
    expected = adlearn.ops.gaussian_blur(feature + model.v * model.pixel_scale * pixel, model.sigma)
    torch.testing.assert_close(model.predict(test_images).anomaly_map, expected)


def test_the_standardised_map_is_a_per_pixel_z_score_over_the_training_images(model, train_images,
                                                                               test_images) -> None:
    """standardize: A = blur((f_d + v·s·i_d − μ) / σ̃), μ and σ per pixel over every training image."""
    fused = model.fused_map(train_images)[0]
    mean, std = fused.mean(0), fused.std(0)
    model.standardize = True
    try:
        model.adapt_features(train_images, epochs=0)
        torch.testing.assert_close(model.map_statistics, torch.stack([mean, std]), rtol=1e-4, atol=1e-6)
        z = (model.fused_map(test_images)[0] - mean) / (std + 1e-3 * std.mean())
        expected = adlearn.ops.gaussian_blur(z, model.sigma)
        torch.testing.assert_close(model.predict(test_images).anomaly_map, expected, rtol=1e-4, atol=1e-4)
        with pytest.raises(AdlearnError, match="size it was fitted on"):
            model.predict(nominal_images(2, size=48))
        with pytest.raises(AdlearnError, match="≥ 2 nominal"):
            model.estimate_map_statistics(train_images[:1])
    finally:
        model.standardize = False
        model.adapt_features(train_images, epochs=0)


def test_standardising_without_map_statistics_is_a_clear_error(model, test_images) -> None:
    model.standardize = True
    try:
        with pytest.raises(AdlearnError, match="adapt_features"):
            model.predict(test_images)
    finally:
        model.standardize = False


def test_a_file_from_before_standardize_loads_unstandardised(model, test_images, tmp_path) -> None:
    path = model.save(tmp_path / "ddad.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["map_statistics"], ckpt["params"]["standardize"]
    torch.save(ckpt, path)
    restored = adlearn.load(path)
    assert not restored.standardize and restored.map_statistics.numel() == 0
    scores = restored.predict(test_images).score
    torch.testing.assert_close(scores, model.predict(test_images).score, rtol=0, atol=0)


def test_maps_come_back_at_the_input_size(model) -> None:
    images = nominal_images(2, size=48)
    assert model.predict(images).anomaly_map.shape == (2, 48, 48)


def test_domain_adaptation_changes_and_saves_the_extractor(train_images, test_images, tmp_path) -> None:
    adapted = DDAD(**{**TINY, "epochs": 2, "da_epochs": 1}).fit(train_images)
    assert len(adapted.da_loss_) == 1
    fresh = DDAD(**{**TINY, "epochs": 2, "da_epochs": 1})
    fresh._ensure_built(load_weights=True)
    before, after = fresh.feature_extractor.state_dict(), adapted.feature_extractor.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "DA must move the trainable copy φ̂"
    assert not any(p.requires_grad for p in adapted.feature_extractor.parameters())
    restored = adlearn.load(adapted.save(tmp_path / "ddad.pt"))
    for key, value in restored.feature_extractor.state_dict().items():
        assert torch.equal(value, after[key]), key
    torch.testing.assert_close(restored.predict(test_images).score, adapted.predict(test_images).score,
                               rtol=0, atol=0)
    restored.adapt_features(train_images, epochs=1)  # by hand: adapts further and re-fixes the pixel scale
    assert len(restored.da_loss_) == 2 and restored.pixel_scale.item() > 0
    with pytest.raises(AdlearnError, match="fit"):
        DDAD(**TINY).adapt_features(train_images, epochs=1)


def test_a_denoiser_trained_on_crops_denoises_the_whole_image(train_images, test_images, monkeypatch) -> None:
    import adlearn.models.ddad as ddad_module

    shapes, real = [], ddad_module.epsilon_loss

    def recording(unet, x0, *args, **kwargs):
        shapes.append(tuple(x0.shape[-2:]))
        return real(unet, x0, *args, **kwargs)

    monkeypatch.setattr(ddad_module, "epsilon_loss", recording)
    cropped = DDAD(**{**TINY, "epochs": 2, "train_crop": 16}).fit(train_images)
    assert set(shapes) == {(16, 16)}, "the denoiser trains on 16-px crops of the 32-px view"
    assert cropped.reconstruct(test_images).shape == test_images.shape, "and denoises the whole image"


def test_max_steps_cuts_the_epochs_not_the_steps_per_epoch() -> None:
    from adlearn.training import steps_per_epoch

    images = nominal_images(32, size=32, seed=5)  # 29 after the validation split: 3 batches of 8
    assert steps_per_epoch(images, 8, 0.1, 42) == 3
    capped = DDAD(**{**TINY, "epochs": 40, "max_steps": 10})
    assert capped.epochs_for(images) == 3, "whole epochs, at most max_steps steps"
    assert DDAD(**{**TINY, "epochs": 2, "max_steps": 10_000}).epochs_for(images) == 2, "epochs still caps"
    assert DDAD(**{**TINY, "max_steps": 1}).epochs_for(images) == 1, "at least one epoch"
    assert capped.epochs_for(torch.cat([images, images])) == 1, "twice the images, fewer epochs, same budget"
    assert len(capped.fit(images).train_loss_) == 3


def test_random_crops_are_crops() -> None:
    from adlearn.ops import random_crops

    images = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    torch.manual_seed(0)
    crops = random_crops(images, 3)
    assert crops.shape == (2, 1, 3, 3)
    for image, crop in zip(images, crops):
        top, left = divmod(int(crop[0, 0, 0] - image[0, 0, 0]), 8)
        assert torch.equal(crop, image[:, top : top + 3, left : left + 3])
    with pytest.raises(AdlearnError, match="crop"):
        random_crops(images, 9)


def test_the_feature_reference_decides_what_phi_compares(model, test_images) -> None:
    y = model.denoiser_view(test_images.to(model.device))
    x0 = model.denoise(y, y, model.w)
    view_f, view_i, _ = model.distance_maps(test_images, x0)
    model.feature_reference = "input"
    try:
        input_f, input_i, _ = model.distance_maps(test_images, x0)
    finally:
        model.feature_reference = "denoiser_view"
    torch.testing.assert_close(view_i, input_i)  # the pixel distance is always at the denoiser's size
    assert not torch.allclose(view_f, input_f), "64-px images: the denoiser's 32-px view loses detail"
    torch.testing.assert_close(model.distance_maps(test_images)[0], view_f)


def test_bad_settings_are_clear(train_images) -> None:
    with pytest.raises(AdlearnError, match="test_steps"):
        DDAD(**{**TINY, "test_steps": 1000}).fit(train_images)
    with pytest.raises(AdlearnError, match="divisible"):
        DDAD(**{**TINY, "input_size": 31}).fit(train_images)
    with pytest.raises(AdlearnError, match="not fitted"):
        DDAD(**TINY).reconstruct(train_images[:1])
    with pytest.raises(AdlearnError, match="train_crop"):
        DDAD(**{**TINY, "train_crop": 64})
    with pytest.raises(AdlearnError, match="pixel_scale_statistic"):
        DDAD(**{**TINY, "pixel_scale_statistic": "median"})
    with pytest.raises(AdlearnError, match="feature_reference"):
        DDAD(**{**TINY, "feature_reference": "both"})
    with pytest.raises(AdlearnError, match="max_steps"):
        DDAD(**{**TINY, "max_steps": 0})


def test_profiles_build_ddad() -> None:
    for name in adlearn.PROFILES:
        assert isinstance(build("DDAD", name), DDAD)
    assert build("DDAD", "paper").get_params() == DDAD().get_params()
    assert build("DDAD", "fast").da_epochs == 0, "the fast profile skips domain adaptation"


# --- scale-out: the same code on 2 processes (DDP over gloo) -----------------------------------
IMAGES = nominal_images(32, size=32, seed=3)
DDP_SETTINGS = {**TINY, "epochs": 12, "val_fraction": 0.0}


def _fit_and_record(path: str) -> None:
    from accelerate import PartialState

    torch.set_num_threads(1)
    model = DDAD(**{**DDP_SETTINGS, "batch_size": 4, "da_epochs": 1, "da_batch_size": 8}).fit(IMAGES)
    state = PartialState()
    record = {"loss": model.train_loss_, "processes": state.num_processes, "scale": model.pixel_scale.item(),
              "weights": model.state_dict()}
    torch.save(record, f"{path}.{state.process_index}")


def test_denoiser_trains_on_two_cpu_processes_like_on_one(tmp_path) -> None:
    """``accelerate`` DDP, 2 processes × batch 4, against 1 process × batch 8: the same loss trend.

    Domain adaptation runs under DDP too; both processes end with the same denoiser, extractor
    (BatchNorm statistics included) and pixel scale.

    On GPUs the same code scales out with ``accelerate launch --multi_gpu --num_processes N script.py``.
    """
    from accelerate import debug_launcher

    debug_launcher(_fit_and_record, args=(str(tmp_path / "ddp"),), num_processes=2)
    ranks = [torch.load(tmp_path / f"ddp.{r}", weights_only=True) for r in (0, 1)]
    assert all(r["processes"] == 2 for r in ranks)
    assert ranks[0]["loss"] == ranks[1]["loss"], "losses are all-reduced: both processes log the same"
    for key, value in ranks[0]["weights"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, ranks[1]["weights"][key], msg=f"DDP keeps replicas equal ({key})")
        else:  # the learned non-tensor state (extra state): losses, the weight tag
            assert value == ranks[1]["weights"][key], key
    assert ranks[0]["scale"] == ranks[1]["scale"]
    single = DDAD(**{**DDP_SETTINGS, "batch_size": 8}).fit(IMAGES).train_loss_
    ddp = ranks[0]["loss"]
    first, last = slice(0, 3), slice(-3, None)
    for run in (ddp, single):
        assert sum(run[last]) < 0.75 * sum(run[first]), run
    assert ddp[0] == pytest.approx(single[0], rel=0.1), (ddp, single)
    assert sum(ddp[-4:]) == pytest.approx(sum(single[-4:]), rel=0.3), (ddp, single)
