"""Run-time set-up: profile, seeds, device and threads in one call.

``adlearn.setup()`` is the first line of every notebook and of the CLI. It

* picks the profile: the ``profile`` argument, else ``$ADLEARN_PROFILE``, else ``paper`` when a
  CUDA GPU is present and ``book`` otherwise;
* seeds Python, NumPy and torch;
* chooses the device (CUDA when present, CPU otherwise) unless one is given;
* sets torch's thread count: the ``threads`` argument, else ``$ADLEARN_THREADS``, else 1 inside a
  pytest-xdist worker (two notebook kernels sharing 2 cores thrash otherwise), else torch's default;
* prints one summary line.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ._version import __version__
from .errors import AdlearnError
from .profiles import Profile, get_profile

T = TypeVar("T")

__all__ = ["Config", "setup", "current_profile", "default_device", "resolve_device", "data_dir", "in_colab",
           "progress_bar", "seeded", "seed_everything"]


@dataclass(frozen=True)
class Config:
    """What :func:`setup` decided; notebooks read sizes from ``cfg.profile``."""

    profile: Profile
    device: torch.device
    seed: int
    threads: int
    data_dir: Path
    in_colab: bool

    def summary(self) -> str:
        gpu = ""
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            gpu = f" ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
        return (
            f"adlearn {__version__} | profile={self.profile.name} | device={self.device}{gpu} | "
            f"threads={self.threads} | seed={self.seed} | torch {torch.__version__} | "
            f"python {platform.python_version()}"
        )


_current: Config | None = None


def in_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def default_device() -> torch.device:
    """CUDA when present (the process's own GPU under a launcher), CPU otherwise, or :func:`setup`'s choice."""
    if _current is not None:
        return _current.device
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))  # one GPU per launched process


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a user's device argument (``None`` = the default device) into a ``torch.device``."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise AdlearnError(f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:1' or None") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AdlearnError(f"device {device!r} requested but CUDA is not available; use device=None or 'cpu'")
    return resolved


def data_dir() -> Path:
    """Where generated data sets and downloads live: ``$ADLEARN_DATA`` or ``~/.cache/adlearn``."""
    if "ADLEARN_DATA" in os.environ:
        return Path(os.environ["ADLEARN_DATA"]).expanduser()
    if in_colab():
        return Path("/content/adlearn_data")
    return Path.home() / ".cache" / "adlearn"


def _default_profile_name() -> str:
    return os.environ.get("ADLEARN_PROFILE") or ("paper" if torch.cuda.is_available() else "book")


def current_profile() -> Profile:
    """The profile chosen by the last :func:`setup` call, else the environment's default."""
    if _current is not None:
        return _current.profile
    return get_profile(_default_profile_name())


def _thread_count(threads: int | None) -> int:
    if threads is not None:
        return threads
    if os.environ.get("ADLEARN_THREADS"):
        return int(os.environ["ADLEARN_THREADS"])
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return 1
    return torch.get_num_threads()


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (a widget in notebooks), off when ``enabled`` is False or ``$TQDM_DISABLE`` is set.

    tqdm's notebook bars and an explicit ``disable=False`` both ignore ``$TQDM_DISABLE``; every
    long loop of the package goes through here so that CI logs and the built book stay clean.
    """
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(iterable, disable=quiet or not enabled, **kwargs)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with torch's RNG seeded, leaving the caller's RNG state as it was.

    For reproducible random initialisation and fixed validation noise; ``device``: also fork
    that CUDA device's generator.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup(
    profile: str | Profile | None = None,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    threads: int | None = None,
    verbose: bool = True,
) -> Config:
    """Choose profile, device and threads, seed everything, print one summary line.

    >>> cfg = setup("fast", verbose=False)
    >>> cfg.profile.name
    'fast'
    """
    global _current
    chosen = get_profile(profile if profile is not None else _default_profile_name())
    n_threads = _thread_count(threads)
    if n_threads < 1:
        raise AdlearnError(f"threads must be ≥ 1, got {n_threads}")
    torch.set_num_threads(n_threads)
    seed_everything(seed)
    torch.backends.cudnn.benchmark = False
    _current = None  # so that resolve_device() below consults CUDA, not a stale config
    cfg = Config(
        profile=chosen,
        device=resolve_device(device),
        seed=seed,
        threads=n_threads,
        data_dir=data_dir(),
        in_colab=in_colab(),
    )
    _current = cfg
    if verbose:
        print(cfg.summary())
        if cfg.device.type == "cpu" and cfg.in_colab:
            print("No GPU: Runtime ▸ Change runtime type ▸ T4 GPU for the paper profile.")
    return cfg
