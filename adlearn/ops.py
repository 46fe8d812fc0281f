"""Small tensor operations shared by several models (one implementation each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AdlearnError

__all__ = ["gaussian_blur", "gaussian_kernel1d", "resize", "separable_filter", "ssim_map", "upsample"]


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0, dtype: torch.dtype = torch.float32,
                      device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian with radius ``int(truncate·σ + 0.5)`` (SciPy's and anomalib's size)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def separable_filter(x: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Filter every channel of ``float[N,C,H,W]`` with the 2-D kernel ``kernel ⊗ kernel``; same size out.

    ``mode`` pads the borders: ``"reflect"`` (d c b | a b c d, SciPy's ``"mirror"``),
    ``"symmetric"`` (c b a | a b c d, SciPy's and scikit-image's ``"reflect"``) or ``"replicate"``.
    ``"reflect"`` needs radius < side; along a shorter side the border is replicated instead.
    """
    c = x.shape[1]
    radius = (len(kernel) - 1) // 2
    for dim in (-1, -2):  # width, then height
        shape = (c, 1, 1, -1) if dim == -1 else (c, 1, -1, 1)
        # a grouped convolution (one filter per channel): on CPU ~10× faster than folding the
        # channels into the batch, forward and backward
        weight = kernel.view(1, 1, -1).expand(c, 1, -1).reshape(shape)
        x = F.conv2d(_pad(x, radius, dim, mode), weight, groups=c)
    return x


def _pad(x: Tensor, radius: int, dim: int, mode: str) -> Tensor:
    size = x.shape[dim]
    if mode == "reflect" and radius >= size:
        mode = "replicate"
    if mode == "symmetric":  # not in F.pad: mirror including the edge pixel
        if radius > size:
            raise AdlearnError(f"symmetric padding of {radius} px needs a side of ≥ {radius} px, got {size}")
        head, tail = x.narrow(dim, 0, radius).flip(dim), x.narrow(dim, size - radius, radius).flip(dim)
        return torch.cat([head, x, tail], dim=dim)
    pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    return F.pad(x, pad, mode=mode)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Smooth ``float[B,H,W]`` maps with a separable Gaussian of std ``sigma`` pixels.

    Borders are mirrored (``scipy.ndimage.gaussian_filter(mode="mirror")``); where the kernel is
    wider than the map the border is replicated instead, since mirroring needs radius < size.
    ``sigma <= 0`` returns the maps unchanged.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma, dtype=maps.dtype, device=maps.device)
    return separable_filter(maps.unsqueeze(1), kernel, mode="reflect").squeeze(1)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``float[B,h,w]`` maps to ``size`` (``align_corners=False``, as PaDiM/anomalib)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def resize(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of ``float[B,C,H,W]`` images, antialiased when shrinking (like PIL)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def random_crops(images: Tensor, size: int) -> Tensor:
    """One random ``size``² crop of each image of ``float[B,C,H,W]`` (offsets from torch's global RNG)."""
    height, width = images.shape[-2:]
    if size > min(height, width):
        raise AdlearnError(f"cannot crop {size}² out of {height}×{width} images; choose a crop ≤ {min(height, width)}")
    tops = torch.randint(0, height - size + 1, (len(images),)).tolist()
    lefts = torch.randint(0, width - size + 1, (len(images),)).tolist()
    return torch.stack([image[:, top : top + size, left : left + size]
                        for image, top, left in zip(images, tops, lefts)])


def ssim_map(x: Tensor, y: Tensor, *, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01,
             k2: float = 0.03) -> Tensor:
    """Local structural similarity of ``float[B,C,H,W]`` images, per pixel and channel (Wang et al. 2004).

    SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),   Eq. (13)

    with C1 = (k1·L)², C2 = (k2·L)², L = ``data_range``, and μ, σ², σxy local means, variances
    and covariance under a Gaussian window of std ``sigma`` truncated at 3.5σ (11×11 for σ=1.5,
    the paper's window); population (not sample) covariances. Borders are padded symmetrically,
    so the map equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, full=True)`` everywhere. Identical
    images give 1; the map lies in [-1, 1]. Computed in (at least) float32 even under autocast,
    since σ² = E[x²] − μ² cancels catastrophically in half precision.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise AdlearnError(
            f"ssim_map needs two [B,C,H,W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    with torch.autocast(x.device.type, enabled=False):
        dtype = torch.promote_types(x.dtype, torch.float32)  # float64 stays float64
        x, y = x.to(dtype), y.to(dtype)
        kernel = gaussian_kernel1d(sigma, truncate=3.5, dtype=dtype, device=x.device)
        c = x.shape[1]
        moments = separable_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel, mode="symmetric")
        mu_x, mu_y, xx, yy, xy = moments.split(c, dim=1)
        var_x, var_y, cov_xy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
        c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
        numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
        denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        return numerator / denominator
