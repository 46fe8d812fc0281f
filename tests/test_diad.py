"""DiAD: the SG network's zero start, SFF, the wiring, what is trained, multi-class use, the GPU paths on CPU."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import ConcatDataset, TensorDataset

import adlearn
from adlearn.errors import AdlearnError, WeightsUnavailableError
from adlearn.models import DiAD, build
import adlearn.models.diad as diad_module
from adlearn.models.diad import COLAB_T4, SpatialFeatureFusion, residual_channels
from tests.conftest import nominal_images

TINY = {"input_size": 32, "vae_channels": (16, 32, 32), "hint_channels": (16, 32, 32), "unet_channels": (16, 32),
        "attention_levels": (1,), "cross_attention_dim": 16, "vae_epochs": 10, "pretrain_epochs": 10, "epochs": 10,
        "sigma": 1.0}


def tiny(**changes) -> DiAD:
    return build("DiAD", "fast", device="cpu", **{**TINY, **changes})


def other_category(n: int, seed: int) -> torch.Tensor:
    """A second nominal category: the test pattern with its colours rotated and mirrored."""
    return nominal_images(n, seed=seed)[:, [2, 0, 1]].flip(-1)


@pytest.fixture(scope="module")
def model(train_images) -> DiAD:
    """One model fitted on two categories at once."""
    both = ConcatDataset([TensorDataset(train_images), TensorDataset(other_category(16, seed=5))])
    return tiny().fit(both)


def _inputs(model: DiAD, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    side = model.input_size // 2 ** (len(model.vae_channels) - 1)
    z = torch.randn(batch, model.latent_channels, side, side, generator=gen)
    hint = torch.rand(batch, 3, model.input_size, model.input_size, generator=gen) * 2 - 1
    return z, torch.tensor([999, 500][:batch]), hint


def _randomise(module: torch.nn.Module) -> None:
    """Give every parameter random values (as if trained), so zero initialisation no longer hides the wiring."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def test_constructor_defaults_are_the_papers() -> None:
    p = DiAD().get_params()
    assert (p["input_size"], p["vae_channels"], p["latent_channels"]) == (256, (128, 256, 512, 512), 4)
    assert (p["unet_channels"], p["layers_per_block"], p["heads"], p["cross_attention_dim"]) == \
        ((320, 640, 1280, 1280), 2, 8, 768)
    assert (p["guidance"], p["only_mid_control"], p["ddim_steps"]) == ("sg+sff", True, 10)
    assert (p["lr"], p["batch_size"], p["seed"], p["backbone"], p["layers"], p["sigma"]) == \
        (1e-5, 12, 1, "resnet50", (1, 2, 3), 5.0)
    assert build("DiAD", "paper").get_params() == p


def test_sff_index_map_is_the_official_one() -> None:
    """SD-1.5: outs[6] 640 ch and outs[7, 8] 1280 ch (8² level) fuse into outs[9..11] (4² level), 9 D_ij."""
    channels = residual_channels((320, 640, 1280, 1280), 2)
    assert len(channels) == 12 and channels[6:9] == [640, 1280, 1280] and channels[9:] == [1280] * 3
    sff = SpatialFeatureFusion(channels[6:9], channels[9:])
    convs = [m for m in sff.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9 and all(c.stride == (2, 2) and c.kernel_size == (3, 3) for c in convs)
    assert all(p.abs().sum() == 0 for p in sff.parameters())


def test_sff_matches_its_equation() -> None:
    sff = SpatialFeatureFusion([4, 6], [8, 8])
    _randomise(sff)
    gen = torch.Generator().manual_seed(2)
    fine = [torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 6, 8, 8, generator=gen)]
    coarse = [torch.randn(2, 8, 4, 4, generator=gen) for _ in range(2)]
    expected = []
    for j, g in enumerate(coarse):
        total = g.clone()
        for i, f in enumerate(fine):
            conv = sff.down[j][i][0]
            total += torch.nn.functional.silu(torch.nn.functional.instance_norm(conv(f)))
        expected.append(torch.nn.functional.silu(total))
    for got, want in zip(sff(fine, coarse), expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("guidance", ["sg+sff", "sg"])
def test_zero_init_control_is_exactly_zero_and_leaves_the_unet_unchanged(guidance) -> None:
    m = tiny(guidance=guidance)
    m._ensure_built(load_weights=False)
    z, t, hint = _inputs(m)
    d = m.denoiser
    with torch.no_grad():
        down, mid = d.controls(z, t, d.context.expand(len(z), -1, -1), hint)
        assert all(torch.equal(g, torch.zeros_like(g)) for g in [*down, mid])
        plain = d.unet(z, t, d.context.expand(len(z), -1, -1)).sample
        torch.testing.assert_close(d(z, t, hint=hint).sample, plain, rtol=0, atol=0)


def test_only_mid_control_passes_zeros_to_all_but_the_coarsest_skips() -> None:
    for only_mid, expect_zero in ((True, True), (False, False)):
        m = tiny(only_mid_control=only_mid)
        m._ensure_built(load_weights=False)
        _randomise(m.denoiser.sg)
        _randomise(m.denoiser.sff)
        z, t, hint = _inputs(m)
        with torch.no_grad():
            down, mid = m.denoiser.controls(z, t, m.denoiser.context.expand(2, -1, -1), hint)
        k = m.layers_per_block + 1
        assert len(down) == len(residual_channels(m.unet_channels, m.layers_per_block))
        assert all(bool(g.eq(0).all()) == expect_zero for g in down[:-k])
        assert all(g.abs().sum() > 0 for g in [*down[-k:], mid])


def test_the_trained_and_frozen_parts_are_the_officials(train_images) -> None:
    m = tiny(epochs=2)
    m.prepare(train_images)
    unet_before = {k: v.clone() for k, v in m.denoiser.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in m.vae.state_dict().items()}
    m._trainable(m._make_denoiser(m.denoiser.unet))
    trained = {n for n, p in m.denoiser.unet.named_parameters() if p.requires_grad}
    assert trained and all(n.split(".")[0] in ("up_blocks", "conv_norm_out", "conv_out") for n in trained)
    m.fit_guidance(train_images)
    changed = {k for k, v in m.denoiser.unet.state_dict().items() if not torch.equal(v, unet_before[k])}
    encoder = ("conv_in", "time_embedding", "down_blocks", "mid_block")
    assert not [k for k in changed if k.startswith(encoder)], "the denoiser's encoder is frozen"
    assert any(k.startswith("up_blocks") for k in changed), "the denoiser's decoder is trained"
    assert all(torch.equal(v, vae_before[k]) for k, v in m.vae.state_dict().items()), "the autoencoder is frozen"
    sg = m.denoiser.sg
    assert all(p.abs().sum() > 0 for p in sg.controlnet_cond_embedding.conv_out.parameters()), "hint encoder trained"
    k = m.layers_per_block + 1
    unused = list(sg.controlnet_down_blocks)[: -2 * k]
    assert all(p.abs().sum() == 0 for conv in unused for p in conv.parameters()), "unused zero convs stay 0"
    assert not any(p.requires_grad for p in m.parameters()), "everything is frozen after fit"


@pytest.mark.parametrize("zero_init", [True, False])
def test_official_sff_never_trains_a_learnable_one_does(train_images, zero_init) -> None:
    """Zero conv → zero-init D_ij: both gradients vanish (with only_mid_control); default-init D_ij learn."""
    m = tiny(epochs=3, sff_zero_init=zero_init)
    m.prepare(train_images)
    m._ensure_built(load_weights=False)
    z, t, hint = _inputs(m)
    with torch.no_grad():  # either way the control starts at exactly 0
        down, mid = m._make_denoiser(m.denoiser.unet).controls(z, t, m.denoiser.context.expand(2, -1, -1), hint)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in [*down, mid])
    m.fit_guidance(train_images)
    k = m.layers_per_block + 1
    fine_convs = list(m.denoiser.sg.controlnet_down_blocks)[-2 * k : -k]
    sff_moved = any(p.abs().sum() > 0 for p in m.denoiser.sff.parameters() if p.ndim == 4)  # biases: see docstring
    fine_moved = any(p.abs().sum() > 0 for conv in fine_convs for p in conv.parameters())
    assert sff_moved is not zero_init and fine_moved is not zero_init


def test_sg_network_starts_as_a_copy_of_the_pretrained_encoder(train_images) -> None:
    m = tiny().prepare(train_images)
    assert m.pretrain_loss_[-1] < m.pretrain_loss_[0], "the plain LDM learned before guidance"
    unet, sg = m.denoiser.unet, m._make_denoiser(m.denoiser.unet).sg
    for name, value in sg.state_dict().items():
        if name.split(".")[0] in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
            assert torch.equal(value, unet.state_dict()[name]), name


def test_one_model_predicts_several_categories(model, test_images) -> None:
    """No category argument: the one model scores the defects of both categories above their nominal images."""
    for images in (test_images.clone(), other_category(4, seed=1)):
        images[2:, :, 20:30, 20:30] = 1.0
        pred = model.predict(images)
        assert pred.reconstruction.shape == images.shape
        assert pred.score[2:].min() > pred.score[:2].max(), pred.score.tolist()


def test_prediction_does_not_depend_on_the_batch(model, test_images) -> None:
    together = model.predict(test_images)
    alone = model.predict(test_images[1:2])
    torch.testing.assert_close(alone.reconstruction, together.reconstruction[1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.score, together.score[1:2], rtol=1e-4, atol=1e-5)


def test_ablations_share_the_first_stages(train_images) -> None:
    prepared = tiny(epochs=1).prepare(train_images)
    for guidance in ("sg", "none"):
        twin = prepared.variant(guidance=guidance).fit_guidance(train_images)
        assert twin.guidance == guidance and twin.fitted_
        torch.testing.assert_close(twin.latent_scale, prepared.latent_scale)
    assert prepared.variant(guidance="none").denoiser.sg is None
    with pytest.raises(AdlearnError, match="cannot change"):
        prepared.variant(input_size=64)
    prepared.fit_guidance(train_images)
    with pytest.raises(AdlearnError, match="before .fit_guidance"):
        prepared.variant(guidance="sg")


def test_warm_start_continues_the_guided_stage_only(train_images, monkeypatch) -> None:
    m = tiny(epochs=2).fit(train_images)
    sg_before = {k: v.clone() for k, v in m.denoiser.sg.state_dict().items()}
    fail = lambda *a, **k: pytest.fail("a warm start keeps the autoencoder, the pretrained UNet and G")  # noqa: E731
    monkeypatch.setattr(m, "_prepare", fail)
    monkeypatch.setattr(m, "_make_denoiser", fail)
    m.fit(train_images, warm_start=True)
    assert len(m.train_loss_) == 2 * m.epochs
    assert any(not torch.equal(v, sg_before[k]) for k, v in m.denoiser.sg.state_dict().items())


def test_bf16_autocast_and_gradient_checkpointing_run_on_cpu(train_images) -> None:
    m = tiny(mixed_precision="bf16", gradient_checkpointing=True, vae_epochs=1, pretrain_epochs=1, epochs=1)
    m.fit(train_images[:8])
    assert m.denoiser.unet.is_gradient_checkpointing and m.denoiser.sg.is_gradient_checkpointing
    assert all(torch.isfinite(torch.tensor(h)).all() for h in (m.vae_loss_, m.pretrain_loss_, m.train_loss_))
    assert torch.isfinite(m.predict(train_images[:2]).score).all()


def test_gradient_checkpointing_gives_the_same_gradients(train_images) -> None:
    grads = []
    for checkpointing in (False, True):
        m = tiny(gradient_checkpointing=checkpointing)
        m._ensure_built(load_weights=False)
        m.latent_scale = torch.tensor(1.0)
        m._trainable(m.denoiser)
        m._checkpointing(m.denoiser.unet, m.denoiser.sg)
        _randomise(m.denoiser.sg)
        m.denoiser.train()
        torch.manual_seed(0)
        m.denoising_loss(m.denoiser, train_images[:4]).backward()
        grads.append([p.grad.clone() for p in m.denoiser.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f} M".replace(",", " ")


@pytest.mark.parametrize("profile", ["fast", "book", "paper", "colab-t4"])
def test_parameter_counts_in_the_docstring(profile) -> None:
    m = build("DiAD", "paper", **COLAB_T4) if profile == "colab-t4" else build("DiAD", profile)
    c = m.parameter_counts()
    row = [profile] + [_millions(c[k]) for k in ("autoencoder", "denoiser", "sg", "sff", "trained")]
    table = {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in diad_module.__doc__.splitlines()
             if line.strip()}
    assert table[profile] == row, f"update the docstring's parameter table: {row}"


def test_paper_profile_is_sd15_sized() -> None:
    c = build("DiAD", "paper").parameter_counts()
    assert 859e6 < c["denoiser"] < 860e6 and 83e6 < c["autoencoder"] < 84e6  # SD-1.5's UNet and kl-f8 VAE
    assert 361e6 < c["sg"] < 362e6  # ControlNet-1.5's size


def test_missing_sd_weights_are_a_clear_error(monkeypatch, train_images) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    strict = tiny(sd_weights=True, sd_repo="adlearn-test/no-such-model")
    with pytest.raises(WeightsUnavailableError, match="huggingface-cli download"):
        strict.fit(train_images)
    loose = tiny(sd_weights="auto", sd_repo="adlearn-test/no-such-model", vae_epochs=1, pretrain_epochs=1, epochs=1)
    with pytest.warns(UserWarning, match="NO STABLE DIFFUSION WEIGHTS"):
        loose.fit(train_images[:8])
    assert loose.sd_weights_ is False


def test_bad_settings_are_clear(train_images) -> None:
    with pytest.raises(AdlearnError, match="guidance"):
        tiny(guidance="controlnet").fit(train_images)
    with pytest.raises(AdlearnError, match="divisible"):
        tiny(input_size=36).fit(train_images)
    with pytest.raises(AdlearnError, match="hint_channels"):
        tiny(hint_channels=(16, 32)).fit(train_images)
    with pytest.raises(AdlearnError, match="prepare"):
        tiny().fit_guidance(train_images)


def test_fast_profile_builds_offline() -> None:
    m = build("DiAD", "fast")
    assert m.sd_weights is False and m.pretrained == "auto"
    assert isinstance(adlearn.models.REGISTRY["DiAD"](**m.get_params()), DiAD)
