"""adlearn: industrial image anomaly detection, built to be read, run and reused.

>>> import adlearn
>>> cfg = adlearn.setup()                         # profile, seed, device, threads
>>> from adlearn.datasets import make_synthetic, MVTecAD
>>> from adlearn.models import build
>>> root = make_synthetic()                      # doctest: +SKIP
>>> model = build("PaDiM").fit(MVTecAD(root, "fabric", "train"))   # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .env import Config, setup
from .errors import AdlearnError, WeightsUnavailableError
from .models.base import load
from .profiles import PROFILES, Profile

__all__ = ["__version__", "setup", "Config", "load", "Profile", "PROFILES", "AdlearnError", "WeightsUnavailableError"]
