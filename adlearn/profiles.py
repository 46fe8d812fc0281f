"""The three run profiles: how big the data, the images and the models are.

A profile answers "how much compute do I have?", never "which method do I run?":

* ``fast``  — CI and the tests: every notebook in a few minutes on 2 CPU cores.
* ``book``  — a reader's laptop without a GPU; builds the published book (a chapter ≤ 20 min).
* ``paper`` — a Colab GPU or a workstation: the papers' hyper-parameters.

Notebooks read sizes from the profile (``cfg.profile.image_size``) instead of branching on a
flag, and :func:`adlearn.models.build` applies :meth:`Profile.model_kwargs` so a model built for a
profile gets that profile's settings. Model constructors carry the *paper's* defaults; the
``paper`` profile therefore only lists what differs from a constructor default (nothing, ideally).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .errors import AdlearnError


def _frozen(d: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in d.items()})


@dataclass(frozen=True)
class Profile:
    """Sizes for data and models. Immutable: derive a variant with ``dataclasses.replace``."""

    name: str
    description: str
    image_size: int
    """Side of the square images the embedding models and the benchmark see."""
    categories: tuple[str, ...]
    """Synthetic categories the chapters loop over."""
    n_train: int
    """Nominal training images per synthetic category."""
    n_test_good: int
    """Nominal test images per synthetic category."""
    n_test_defect: int
    """Defective test images per defect kind and category."""
    elpv_n_train: int | None
    """Nominal ELPV cells used for training (``None``: half of the nominal cells)."""
    elpv_n_test: int | None
    """ELPV test cells (``None``: all remaining ones)."""
    batch_size: int
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per-model keyword arguments that override the constructor (paper) defaults."""

    def model_kwargs(self, model_name: str) -> dict[str, Any]:
        """The keyword arguments this profile passes to ``model_name``'s constructor."""
        return dict(self.models.get(model_name, {}))


def _sigma(image_size: int) -> float:
    """Gaussian smoothing σ that keeps the papers' σ=4 at 256 px proportionate at other sizes."""
    return 4.0 * image_size / 256


FAST = Profile(
    name="fast",
    description="CI and tests: tiny images, few images, few steps (minutes on 2 CPU cores)",
    image_size=128,
    categories=("fabric", "washer"),
    n_train=24,
    n_test_good=8,
    n_test_defect=2,
    elpv_n_train=48,
    elpv_n_test=48,
    batch_size=8,
    models=_frozen(
        {
            "MeanImage": {"sigma": _sigma(128)},
            # a 0.36 M-parameter network at 64 px (maps come back at 128 px): seconds of training on 1 thread
            "AutoEncoder": {"input_size": 64, "base_width": 16, "epochs": 40, "lr": 1e-3, "batch_size": 8,
                            "sigma": _sigma(128)},
            "VAE": {"input_size": 64, "base_width": 16, "epochs": 40, "lr": 1e-3, "batch_size": 8,
                    "sigma": _sigma(128)},
            "PaDiM": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": _sigma(128)},
            # K=10 of the 24 training images (the paper's K=50 needs ≥ 50 images)
            "SPADE": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": _sigma(128), "k": 10},
            # a 0.3 M-parameter UNet denoising at 32 px, trained for seconds; no domain adaptation
            "DDAD": {"input_size": 32, "base_channels": 16, "channel_mults": (1, 2, 2),
                     "layers_per_block": 1, "attention_levels": (), "epochs": 60, "lr": 2e-3, "batch_size": 8,
                     "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": _sigma(128),
                     "da_epochs": 0},
            # one model for both categories, for CI: images of 128 px seen at 32 px by a 0.1 M f4 autoencoder
            # (8×8×4 latents) and a 1.2 M latent UNet, each stage trained for seconds (mechanics, not accuracy)
            "DiAD": {"input_size": 32, "vae_channels": (16, 32, 32), "vae_layers_per_block": 1,
                     "unet_channels": (32, 64), "attention_levels": (1,), "heads": 4,
                     "cross_attention_dim": 32, "hint_channels": (16, 32, 32), "sd_weights": False,
                     "vae_epochs": 12, "vae_lr": 2e-3, "vae_batch_size": 8, "pretrain_epochs": 15,
                     "pretrain_lr": 2e-3, "epochs": 8, "lr": 1e-3, "batch_size": 8,
                     "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "sigma": 5.0 * 128 / 256},
        }
    ),
)

BOOK = Profile(
    name="book",
    description="a laptop CPU: results that teach, a chapter in under 20 minutes",
    image_size=256,
    categories=("fabric", "stone", "washer", "capsule"),
    n_train=80,
    n_test_good=20,
    n_test_defect=5,
    elpv_n_train=300,
    elpv_n_test=300,
    batch_size=16,
    models=_frozen(
        {
            # a 0.37 M-parameter network at 128 px, so 2-px defects survive the resize (maps come back
            # at 256 px); 40 epochs of 72 images in well under a minute per model on 1 thread
            "AutoEncoder": {"input_size": 128, "base_width": 16, "epochs": 40, "lr": 1e-3, "batch_size": 8},
            "VAE": {"input_size": 128, "base_width": 16, "epochs": 40, "lr": 1e-3, "batch_size": 8},
            "PaDiM": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto"},
            "SPADE": {"backbone": "tf_efficientnet_lite0", "pretrained": "auto"},  # the paper's K=50 of 80 images
            # a 1.2 M-parameter UNet denoising at 64 px (maps come back at 256 px); ≈ 10 min per category
            "DDAD": {"input_size": 64, "base_channels": 16, "channel_mults": (1, 2, 4, 4),
                     "layers_per_block": 1, "attention_levels": (3,), "epochs": 300, "lr": 1e-3,
                     "batch_size": 16, "backbone": "tf_efficientnet_lite0", "pretrained": "auto", "da_epochs": 2},
            # one model for all four categories: images of 256 px seen at 128 px, a 0.6 M kl-f8-shaped
            # autoencoder (16×16×4 latents), a 3.9 M latent UNet pretrained as a plain LDM, then guided
            "DiAD": {"input_size": 128, "vae_channels": (16, 32, 64, 64), "vae_layers_per_block": 1,
                     "unet_channels": (32, 64, 128), "attention_levels": (1, 2), "heads": 4,
                     "cross_attention_dim": 64, "hint_channels": (16, 32, 64, 96), "sd_weights": False,
                     "vae_epochs": 30, "vae_lr": 1e-3, "vae_batch_size": 8, "pretrain_epochs": 40,
                     "pretrain_lr": 1e-3, "epochs": 40, "lr": 5e-4, "batch_size": 16,
                     "backbone": "tf_efficientnet_lite0", "pretrained": "auto"},
        }
    ),
)

PAPER = Profile(
    name="paper",
    description="a GPU: the papers' hyper-parameters (256 px, WideResNet backbones)",
    image_size=256,
    categories=("fabric", "stone", "washer", "capsule"),
    n_train=200,
    n_test_good=40,
    n_test_defect=10,
    elpv_n_train=None,
    elpv_n_test=None,
    batch_size=32,
    models=_frozen(
        {
            "AutoEncoder": {},  # the constructor defaults: 256 px, batch 32, Adam 1e-4, 100 epochs, ±2° / ±2 %
            "VAE": {},
            "PaDiM": {"backbone": "wide_resnet50_2"},
            "SPADE": {},  # the constructor defaults are the paper's: WRN50-2, K=50, κ=1, σ=4
            "DDAD": {},  # the constructor defaults are the paper's: 33 M UNet at 256 px, WRN101-2, w=2, DA
            "DiAD": {},  # the constructor defaults: SD-1.5 VAE + UNet (from its weights), ResNet-50, σ=5
        }
    ),
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (FAST, BOOK, PAPER)})


def get_profile(profile: str | Profile) -> Profile:
    """Return a :class:`Profile` given its name (or the profile itself)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise AdlearnError(
            f"unknown profile {profile!r}; choose one of {sorted(PROFILES)} "
            "(e.g. ADLEARN_PROFILE=fast or adlearn.setup(profile='fast'))"
        ) from None
