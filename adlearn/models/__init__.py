"""adlearn's anomaly detection models, one file per method, all obeying :mod:`.base`.

>>> from adlearn.models import build, REGISTRY
>>> sorted(REGISTRY)  # doctest: +SKIP
['AutoEncoder', 'DDAD', 'MeanImage', 'PaDiM', 'SPADE', 'VAE']
>>> model = build("PaDiM", profile="fast")  # the fast profile's settings, no weights loaded yet

A method registers itself by subclassing :class:`AnomalyModel` with a ``name``; importing its
file (listed below) is all the package needs (see CONTRIBUTING.md, "Adding a method").
"""

from __future__ import annotations

from typing import Any

from ..env import current_profile
from ..errors import AdlearnError
from ..profiles import Profile, get_profile
from .autoencoder import VAE, AutoEncoder
from .base import REGISTRY, AnomalyModel, Prediction, load
from .baseline import MeanImage
from .ddad import DDAD
from .padim import PaDiM
from .spade import SPADE

__all__ = [
    "REGISTRY", "AnomalyModel", "Prediction", "build", "load",
    "MeanImage", "AutoEncoder", "VAE", "PaDiM", "SPADE", "DDAD",
]


def build(name: str, profile: str | Profile | None = None, **overrides: Any) -> AnomalyModel:
    """Create model ``name`` with ``profile``'s settings (default: the current profile) and overrides."""
    if name not in REGISTRY:
        raise AdlearnError(f"unknown model {name!r}; available: {sorted(REGISTRY)}")
    chosen = current_profile() if profile is None else get_profile(profile)
    cls = REGISTRY[name]
    return cls(**{**cls.params_for(chosen), **overrides})
