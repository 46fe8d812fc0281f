"""adlearn: industrial image anomaly detection, built to be read, run and reused.

>>> import adlearn
>>> cfg = adlearn.setup()                         # profile, seed, device, threads
>>> from adlearn.datasets import make_synthetic, MVTecAD
>>> from adlearn.models import build
>>> root = make_synthetic()                      # doctest: +SKIP
>>> model = build("PaDiM").fit(MVTecAD(root, "fabric", "train"))   # doctest: +SKIP

``import adlearn`` is light: torch and the model libraries (timm, diffusers, accelerate) load
when a name that needs them is first used, so ``adlearn --help`` starts in well under a second.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import AdlearnError, WeightsUnavailableError

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from .env import Config, setup
    from .models.base import load
    from .profiles import PROFILES, Profile

__all__ = ["__version__", "setup", "Config", "load", "Profile", "PROFILES", "AdlearnError", "WeightsUnavailableError"]

_LAZY = {"setup": "env", "Config": "env", "load": "models.base", "Profile": "profiles", "PROFILES": "profiles"}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'adlearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
