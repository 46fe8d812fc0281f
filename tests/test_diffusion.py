"""The shared diffusion pieces agree with diffusers' schedulers and with DDPM/DDIM's equations."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from adlearn.diffusion import (
    alpha_bar_at,
    alpha_bar_table,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_scheduler,
    epsilon_loss,
    generate,
    UNetConfig,
    q_sample,
    seeded_noise,
    to_signed,
    to_unit,
    unet_epsilon,
)
from adlearn.errors import AdlearnError

ALPHA_BAR = alpha_bar_table()


def ddim_scheduler(skip: int) -> DDIMScheduler:
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                              prediction_type="epsilon")
    scheduler.set_timesteps(1000 // skip)  # "leading" spacing: each step goes from t to t − skip
    return scheduler


def test_alpha_bar_is_the_linear_beta_schedule() -> None:
    betas = 1 - ALPHA_BAR / torch.cat([torch.ones(1), ALPHA_BAR[:-1]])
    assert len(ALPHA_BAR) == 1000
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([1e-4, 0.02]), rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(ALPHA_BAR, ddpm_scheduler().alphas_cumprod)
    assert ALPHA_BAR[250].item() == pytest.approx(0.52, abs=0.01), "DDAD's T'=250 keeps about half the signal"
    assert alpha_bar_at(ALPHA_BAR, -1).item() == 1.0


def test_q_sample_equals_diffusers_add_noise() -> None:
    x0, noise = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    t = torch.tensor([0, 250, 999])
    torch.testing.assert_close(q_sample(x0, t, ALPHA_BAR, noise), ddpm_scheduler().add_noise(x0, noise, t))
    torch.testing.assert_close(q_sample(x0, 250, ALPHA_BAR, noise)[1], q_sample(x0, t, ALPHA_BAR, noise)[1])


@pytest.mark.parametrize("t", [999, 250, 50, 0])
def test_deterministic_ddim_step_equals_diffusers(t: int) -> None:
    x_t, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ours = ddim_step(x_t, eps, alpha_bar_at(ALPHA_BAR, t), alpha_bar_at(ALPHA_BAR, t - 25), eta=0.0)
    theirs = ddim_scheduler(25).step(eps, t, x_t, eta=0.0)
    torch.testing.assert_close(ours.x_prev, theirs.prev_sample)
    torch.testing.assert_close(ours.x0_hat, theirs.pred_original_sample)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_stochastic_ddim_step_equals_diffusers_with_the_same_noise(eta: float) -> None:
    x_t, eps, z = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    ours = ddim_step(x_t, eps, ALPHA_BAR[250], ALPHA_BAR[225], eta=eta, noise=z)
    theirs = ddim_scheduler(25).step(eps, 250, x_t, eta=eta, variance_noise=z)
    torch.testing.assert_close(ours.x_prev, theirs.prev_sample)
    with pytest.raises(AdlearnError, match="noise"):
        ddim_step(x_t, eps, ALPHA_BAR[250], ALPHA_BAR[225], eta=eta)


def test_ddim_with_eta_one_on_consecutive_steps_is_ddpm() -> None:
    scheduler = ddpm_scheduler()
    x_t, eps = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    ours = ddim_step(x_t, eps, ALPHA_BAR[500], ALPHA_BAR[499], eta=1.0, noise=z)
    theirs = scheduler.step(eps, 500, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    torch.testing.assert_close(ours.x_prev, theirs, rtol=1e-4, atol=1e-5)


def test_trajectories() -> None:
    ddad = ddim_timesteps(250, 25)
    assert len(ddad) == 10 and ddad[0] == (250, 225) and ddad[-1] == (25, -1)
    assert len(ddim_timesteps(999, 1)) == 999 and ddim_timesteps(999, 1)[-1] == (1, -1)
    with pytest.raises(AdlearnError, match="skip"):
        ddim_timesteps(250, 0)


def test_a_perfect_denoiser_recovers_the_image() -> None:
    """With the true ε every DDIM trajectory lands on x₀ exactly, whatever η."""
    x0, noise = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    x_t = q_sample(x0, 250, ALPHA_BAR, noise)

    def oracle(x: torch.Tensor, t: int) -> torch.Tensor:
        a = ALPHA_BAR[t]
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    torch.testing.assert_close(ddim_sample(oracle, x_t, ddim_timesteps(250, 25), ALPHA_BAR, eta=0.0), x0)
    noises = seeded_noise(0, (1, 3, 8, 8), 10, "cpu")
    torch.testing.assert_close(ddim_sample(oracle, x_t, ddim_timesteps(250, 25), ALPHA_BAR, 1.0, noises), x0,
                               rtol=1e-4, atol=1e-4)


def test_epsilon_loss_sums_over_pixels() -> None:
    unet = UNetConfig(base_channels=8, channel_mults=(1, 2), layers_per_block=1, attention_levels=()).build(16)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    summed = epsilon_loss(unet, x0, ALPHA_BAR, reduction="sum")
    torch.manual_seed(0)
    mean = epsilon_loss(unet, x0, ALPHA_BAR, reduction="mean")
    torch.testing.assert_close(summed, mean * 3 * 16 * 16)
    with pytest.raises(AdlearnError, match="reduction"):
        epsilon_loss(unet, x0, ALPHA_BAR, reduction="max")


def test_unet_shapes_seeding_and_errors() -> None:
    small = {"base_channels": 8, "channel_mults": (1, 2), "layers_per_block": 1, "attention_levels": (1,)}
    a, b = UNetConfig(**small).build(16, seed=3), UNetConfig(**small).build(16, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    x = torch.randn(2, 3, 16, 16)
    assert unet_epsilon(a, x, 10).shape == x.shape
    with pytest.raises(AdlearnError, match="divisible"):
        UNetConfig(channel_mults=(1, 2, 2), attention_levels=()).build(18)
    with pytest.raises(AdlearnError, match="attention_levels"):
        UNetConfig(channel_mults=(1, 2), attention_levels=(3,))


def test_paper_unet_has_about_33m_parameters() -> None:
    """DDAD's official UNet prints "Num params: 32952707" at 256 px (methods.md §4.2)."""
    with torch.device("meta"):
        unet = UNetConfig().build(256)
    n = sum(p.numel() for p in unet.parameters())
    assert 32e6 < n < 35e6, n


def test_generate_is_seeded_and_in_range() -> None:
    unet = UNetConfig(base_channels=8, channel_mults=(1, 2), layers_per_block=1, attention_levels=()).build(16)
    unet.eval()
    a = generate(unet, ALPHA_BAR, 2, skip=100, seed=1)
    assert a.shape == (2, 3, 16, 16) and torch.isfinite(a).all()
    torch.testing.assert_close(a, generate(unet, ALPHA_BAR, 2, skip=100, seed=1))
    images = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(to_unit(to_signed(images)), images)
