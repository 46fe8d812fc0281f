"""The three run profiles: how big the data, the images and the models are.

A profile answers "how much compute do I have?", never "which method do I run?":

* ``fast``  — CI and the tests: every notebook in a few minutes on 2 CPU cores.
* ``book``  — a reader's laptop without a GPU; builds the published book (a chapter ≤ 20 min).
* ``paper`` — a Colab GPU or a workstation: the papers' hyper-parameters.

Notebooks read sizes from the profile (``cfg.profile.image_size``) instead of branching on a
flag. What a profile means for one *model* is declared next to that model's class
(``AnomalyModel.profiles``, like timm's ``default_cfgs``), and :func:`adlearn.models.build` applies
it; model constructors carry the *paper's* defaults, so the ``paper`` entry of a model lists only
what differs from them (nothing, ideally). A new method therefore edits nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

from .errors import AdlearnError


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


def sigma_for(image_size: int) -> float:
    """Gaussian smoothing σ that keeps the papers' σ=4 at 256 px proportionate at other sizes."""
    return 4.0 * image_size / 256


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
)

FAST = replace(
    BOOK, name="fast", description="CI and tests: tiny images, few images, few steps (minutes on 2 CPU cores)",
    image_size=128, categories=("fabric", "washer"), n_train=24, n_test_good=8, n_test_defect=2,
    elpv_n_train=48, elpv_n_test=48, batch_size=8,
)

PAPER = replace(
    BOOK, name="paper", description="a GPU: the papers' hyper-parameters (256 px, WideResNet backbones)",
    n_train=200, n_test_good=40, n_test_defect=10, elpv_n_train=None, elpv_n_test=None, batch_size=32,
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
