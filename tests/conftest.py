"""Shared fixtures. Tests never touch the network and run on one thread per worker."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ADLEARN_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def benchmark_script(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` imported as a module (the scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nominal_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` images of one smooth pattern with per-image noise and brightness: a tiny nominal set."""
    pattern_rng = torch.Generator().manual_seed(1234)
    coarse = torch.rand(1, 3, 6, 6, generator=pattern_rng)
    pattern = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    rng = torch.Generator().manual_seed(seed)
    gain = 0.9 + 0.2 * torch.rand(n, 1, 1, 1, generator=rng)
    noise = 0.03 * torch.randn(n, 3, size, size, generator=rng)
    return (0.2 + 0.6 * pattern * gain + noise).clamp(0, 1)


@pytest.fixture(scope="session")
def train_images() -> torch.Tensor:
    return nominal_images(16, seed=0)


@pytest.fixture(scope="session")
def test_images() -> torch.Tensor:
    images = nominal_images(4, seed=1)
    images[2:, :, 20:30, 20:30] = 1.0  # two images with a bright square "defect"
    return images
