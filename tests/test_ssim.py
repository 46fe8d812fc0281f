"""adlearn.ops.ssim_map against scikit-image and closed-form cases (Wang et al. 2004)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from adlearn.errors import AdlearnError
from adlearn.ops import resize, ssim_map

C1, C2 = 0.01**2, 0.03**2


def _skimage(x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """scikit-image's SSIM with Wang et al.'s settings: Gaussian σ=1.5 (11×11), population covariance."""
    return structural_similarity(
        x.numpy(),
        y.numpy(),
        channel_axis=0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        full=True,
    )


def _pair(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = (0.7 * x + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 40, 57), (1, 1, 11, 16)])
def test_map_and_mean_equal_skimage(shape) -> None:
    x, y = _pair(shape, seed=sum(shape))
    ours = ssim_map(x, y)
    assert ours.shape == x.shape and ours.dtype == torch.float64
    for i in range(shape[0]):
        mean, full = _skimage(x[i], y[i])
        np.testing.assert_allclose(ours[i].numpy(), full, rtol=0, atol=1e-10)
        # skimage's mean leaves out a border of the window's radius (5 px) to avoid edge effects
        assert ours[i, :, 5:-5, 5:-5].mean().item() == pytest.approx(mean, abs=1e-12)


def test_float32_matches_skimage_closely() -> None:
    x, y = _pair((1, 3, 48, 48), seed=1)
    _, full = _skimage(x[0], y[0])
    np.testing.assert_allclose(ssim_map(x.float(), y.float())[0].numpy(), full, atol=1e-5)


def test_identical_images_give_one() -> None:
    x, _ = _pair((2, 3, 24, 24), seed=2)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(x))


def test_constant_images_closed_form() -> None:
    """Flat images have σ = 0, so SSIM reduces to the luminance term (2ab + C1) / (a² + b² + C1)."""
    a, b = 0.3, 0.5
    x, y = (
        torch.full((1, 1, 16, 16), a, dtype=torch.float64),
        torch.full((1, 1, 16, 16), b, dtype=torch.float64),
    )
    expected = (2 * a * b + C1) / (a**2 + b**2 + C1)
    torch.testing.assert_close(ssim_map(x, y), torch.full_like(x, expected))


def test_constant_shift_keeps_structure_and_contrast() -> None:
    """y = x + c: σ_y = σ_x = σ_xy, so only the luminance term of local means μ and μ + c remains."""
    x, _ = _pair((1, 1, 30, 30), seed=3)
    x = 0.5 * x
    c = 0.2
    mu = torch.from_numpy(ndimage.gaussian_filter(x[0, 0].numpy(), 1.5, mode="reflect", truncate=3.5))
    expected = (2 * mu * (mu + c) + C1) / (mu**2 + (mu + c) ** 2 + C1)
    torch.testing.assert_close(ssim_map(x, x + c)[0, 0], expected)


def test_symmetric_bounded_and_negative_for_inverted_images() -> None:
    x, y = _pair((1, 3, 32, 32), seed=4)
    torch.testing.assert_close(ssim_map(x, y), ssim_map(y, x))
    inverted = ssim_map(x, 1 - x)
    assert inverted.max() <= 1 and inverted.min() >= -1
    assert inverted[..., 5:-5, 5:-5].mean() < -0.5


def test_half_precision_input_is_computed_in_float32() -> None:
    x, y = _pair((1, 3, 32, 32), seed=5)
    reference = ssim_map(x.float(), y.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ssim_map(x.float(), y.float())
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference)
    from_bf16 = ssim_map(x.bfloat16(), y.bfloat16())
    assert from_bf16.dtype == torch.float32 and (from_bf16 - reference).abs().max() < 0.05


def test_gradient_flows() -> None:
    x, y = _pair((1, 3, 16, 16), seed=6)
    y = y.clone().requires_grad_(True)
    (1 - ssim_map(x, y).mean()).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(AdlearnError, match="one shape"):
        ssim_map(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 15))
    with pytest.raises(AdlearnError, match=r"\[B,C,H,W\]"):
        ssim_map(torch.rand(3, 16, 16), torch.rand(3, 16, 16))


def test_resize_shrinks_with_antialias_and_keeps_identity() -> None:
    images = torch.rand(2, 3, 32, 48)
    assert resize(images, (32, 48)) is images
    small = resize(images, 16)
    assert small.shape == (2, 3, 16, 16)
    checker = (torch.arange(64).view(1, 1, 1, 64) + torch.arange(64).view(1, 1, 64, 1)) % 2
    flat = resize(checker.float().expand(1, 3, 64, 64), 16)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.5), atol=0.01, rtol=0)  # no aliasing
