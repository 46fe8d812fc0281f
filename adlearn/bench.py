"""``adlearn bench``: every method on the same data, one-class and multi-class, with its cost.

Each registered model (``REGISTRY``: a new method appears by itself) is built with one profile's
settings, fitted and evaluated on identical data, image sizes, seeds and metrics:

* **one-class**: one model per category, fitted on that category's nominal training images —
  the setting of PaDiM, SPADE and DDAD;
* **multi-class**: one model fitted on the union of every category's training images and
  evaluated per category — the setting of DiAD (and of ADer's benchmark).

A row records the setting, image / pixel AUROC, AUPRO (the official protocol), F1-max, fit
seconds, predict ms/image, the peak memory of the fit, the parameter count, ``get_params()``,
the backbone and whether ImageNet weights were really loaded, the device, the versions and the
seed. ``results.json``, ``results.csv`` and ``results.md`` are rewritten atomically after every
row, so Ctrl-C leaves every finished row intact and ``resume=True`` skips them.

>>> rows = run_bench(models=["MeanImage", "PaDiM"], data="synthetic", profile="fast",
...                  out="outputs/bench")                       # doctest: +SKIP
"""

from __future__ import annotations

import ast
import csv
import ctypes
import functools
import gc
import io
import json
import os
import platform
import re
import resource
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from ._version import __version__
from .datasets import ELPV, MVTecAD, make_synthetic
from .env import progress_bar, setup
from .errors import AdlearnError
from .files import atomic_write
from .metrics import evaluate
from .models import REGISTRY, AnomalyModel, build
from .profiles import Profile
from .tables import METRICS, format_table, mean_rows

__all__ = ["SETTINGS", "parse_model", "run_bench", "summary_tables", "load_results", "write_results", "PeakMemory",
           "format_table", "mean_rows"]

SETTINGS = ("one-class", "multi-class")
COST = ("fit_s", "predict_ms_per_image", "fit_peak_mb", "n_params")


# --- data ----------------------------------------------------------------------------------------
@dataclass
class Split:
    """One category's train and test sets."""

    category: str
    train: Dataset
    test: Dataset


def load_splits(data: str, categories: Sequence[str] | None, profile: Profile, seed: int) -> list[Split]:
    """``"synthetic"`` (generated, cached), ``"elpv"`` (real solar cells, image labels only) or the
    root folder of a data set in the MVTec AD layout."""
    size = profile.image_size
    if data == "elpv":
        kwargs = {"image_size": size, "n_train": profile.elpv_n_train, "n_test": profile.elpv_n_test}
        return [Split("elpv", ELPV("train", **kwargs), ELPV("test", **kwargs))]
    if data == "synthetic":
        categories = list(categories or profile.categories)
        root = make_synthetic(categories=categories, image_size=size, seed=seed, n_train=profile.n_train,
                              n_test_good=profile.n_test_good, n_test_defect=profile.n_test_defect)
    else:
        root = Path(data)
        if not root.is_dir():
            raise AdlearnError(f"--data {data!r} is not 'synthetic', 'elpv' or a folder in the MVTec AD layout")
        categories = list(categories or sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir()))
        if not categories:
            raise AdlearnError(f"{root} has no CATEGORY/train/good folders (the MVTec AD layout)")
    return [Split(c, MVTecAD(root, c, "train", image_size=size), MVTecAD(root, c, "test", image_size=size))
            for c in categories]


# --- cost ----------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block above its start: CUDA's allocator on a GPU, else the resident set
    size sampled every 5 ms from ``/proc`` (the lifetime ``ru_maxrss`` where ``/proc`` is missing).

    On a CPU the start is read after handing memory that earlier work freed back to the system
    (glibc's ``malloc_trim``): otherwise the block reuses it without growing the resident set, and
    a fit after a larger one reads close to zero.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _release_freed_memory()
        self._start = self._rss()
        self._peak = self._start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(0.0, (max(self._peak, self._rss()) - self._start) / 2**20)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _release_freed_memory() -> None:
    """Return freed heap memory to the system where the C library can (glibc); elsewhere a no-op."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, Windows, musl)
        pass


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """A model and changes to its profile settings: ``"SPADE"`` or ``"SPADE:image_score=max,k=20"``.

    Values are Python literals (``k=20``, ``layers=(1,2)``) or else plain strings (``max``).
    """
    name, _, changes = spec.partition(":")
    overrides: dict[str, Any] = {}
    for change in filter(None, re.split(r",(?=\s*\w+\s*=)", changes)):  # a comma before the next name=
        key, sep, value = change.partition("=")
        if not (key and sep and value):
            raise AdlearnError(f"model {spec!r}: write changes as NAME:param=value[,param=value]")
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return name, overrides


def _build(spec: str, profile: Profile) -> AnomalyModel:
    name, overrides = parse_model(spec)
    return build(name, profile, **overrides)


def _fit(model: AnomalyModel, train: Dataset) -> tuple[float, float]:
    """Fit ``model``; returns (seconds, peak memory in MiB)."""
    with PeakMemory(model.device) as memory:
        start = time.perf_counter()
        model.fit(train)
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mb


# --- rows ----------------------------------------------------------------------------------------
KEY = ("model", "category", "setting", "profile", "data")
"""The fields that identify a row: ``resume`` skips a (model, category, setting, profile, data) it has."""


def _row(spec: str, model: AnomalyModel, split: Split, setting: str, profile: Profile, data: str, seed: int,
         fit_s: float, fit_peak_mb: float) -> dict[str, Any]:
    metrics = evaluate(model, split.test, progress=False)
    return {
        "model": spec, "category": split.category, "setting": setting, "profile": profile.name,
        "data": data, **{m: metrics.get(m) for m in METRICS}, "fit_s": fit_s,
        "predict_ms_per_image": metrics["predict_ms_per_image"], "fit_peak_mb": fit_peak_mb,
        "n_params": sum(p.numel() for p in model.parameters()),
        "backbone": getattr(model, "backbone", None), "pretrained": getattr(model, "pretrained_", None),
        "device": str(model.device), "machine": _machine(model.device), "seed": seed, "params": model.get_params(),
        "versions": {"adlearn": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def _jobs(models: Sequence[str], splits: list[Split], settings: Sequence[str]) -> Iterator[tuple[str, str]]:
    for model_name in models:
        for setting in settings:
            if setting == "multi-class" and len(splits) < 2:
                continue  # one category: the multi-class model is the one-class model
            yield model_name, setting


def run_bench(
    models: Sequence[str] | None = None,
    data: str = "synthetic",
    categories: Sequence[str] | None = None,
    settings: Sequence[str] = SETTINGS,
    profile: str | Profile | None = None,
    out: str | Path = "outputs/bench",
    *,
    resume: bool = False,
    seed: int = 0,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Fit and evaluate ``models`` (default: every registered one) on ``data``; returns the rows.

    The results files in ``out`` are rewritten after every row; ``resume`` keeps the rows already
    there and skips what they cover.
    """
    models = list(models or sorted(REGISTRY))
    unknown = sorted({parse_model(spec)[0] for spec in models} - set(REGISTRY))
    if unknown:
        raise AdlearnError(f"unknown model(s) {unknown}; registered: {sorted(REGISTRY)}")
    bad = sorted(set(settings) - set(SETTINGS))
    if bad or not settings:
        raise AdlearnError(f"settings must be among {list(SETTINGS)}, got {list(settings)}")
    cfg = setup(profile, seed=seed, verbose=False)
    out = Path(out)
    previous = load_results(out) if resume and (out / "results.json").is_file() else {"rows": [], "meta": {}}
    rows = previous["rows"]
    done = {tuple(r[k] for k in KEY) for r in rows}
    splits = load_splits(data, categories, cfg.profile, seed)
    meta = {"commands": [*previous["meta"].get("commands", []), command], "profile": cfg.profile.name,
            "seed": seed, "machine": _machine(cfg.device), "threads": torch.get_num_threads()}
    jobs = list(_jobs(models, splits, settings))
    for model_name, setting in progress_bar(jobs, desc="bench", unit="fit"):
        todo = [s for s in splits if (model_name, s.category, setting, cfg.profile.name, data) not in done]
        if not todo:
            continue
        if setting == "one-class":
            for split in todo:
                model = _build(model_name, cfg.profile)
                fit_s, peak = _fit(model, split.train)
                rows.append(_row(model_name, model, split, setting, cfg.profile, data, seed, fit_s, peak))
                write_results(out, rows, meta)
        else:
            model = _build(model_name, cfg.profile)
            fit_s, peak = _fit(model, ConcatDataset([s.train for s in splits]))
            for split in todo:
                rows.append(_row(model_name, model, split, setting, cfg.profile, data, seed, fit_s, peak))
            write_results(out, rows, meta)
    return rows


@functools.lru_cache(maxsize=None)  # fixed for the process; every row asks for it
def _machine(device: torch.device) -> str:
    """The OS, the CPU with the instruction set torch's kernels dispatch to, and the GPU.

    A trained model's metrics repeat exactly only on the same kind of CPU (or GPU): float
    rounding in training follows the kernels' instruction set, and training amplifies it.
    """
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, "
            f"{torch.backends.cpu.get_cpu_capability()}, {gpu}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or "CPU"


# --- results files -------------------------------------------------------------------------------
def load_results(out: str | Path) -> dict[str, Any]:
    """``{"meta": ..., "rows": [...]}`` from ``out/results.json`` (or that file itself)."""
    path = Path(out)
    path = path / "results.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AdlearnError(f"cannot read benchmark results {path} ({err}); run `adlearn bench` first") from err


def write_results(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """results.json (everything), results.csv (flat columns) and results.md (tables), atomically."""
    with atomic_write(out / "results.json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=repr)  # tuples → lists, the rest by repr
    flat = ["model", "category", "setting", "profile", "data", *METRICS, *COST, "backbone", "pretrained",
            "device", "seed"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=flat, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(out / "results.csv", "w") as f:
        f.write(buffer.getvalue())
    with atomic_write(out / "results.md", "w") as f:
        f.write(render_markdown(rows, meta))


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """One table per (data, setting): every row, then the mean over categories per model."""
    parts = [f"# adlearn bench — profile `{meta.get('profile')}`\n",
             "Reproduce with:\n\n" + "".join(f"    {c}\n" for c in meta.get("commands", [])),
             f"\nMachine: {meta.get('machine')}, {meta.get('threads')} threads\n"]
    for data in dict.fromkeys(r["data"] for r in rows):
        for setting in SETTINGS:
            mine = [r for r in rows if r["data"] == data and r["setting"] == setting]
            if mine:
                parts.append(f"\n## {data}, {setting}\n\n{format_table(mine + mean_rows(mine))}\n")
    return "\n".join(parts)


def summary_tables(results: dict[str, Any], heading: str = "###") -> str:
    """The mean over categories of every model, one table per (data, setting): what the README
    and chapter 9 show (``results`` as :func:`load_results` returns it). Registered models that a
    table lacks are named under it, so a missing method is never mistaken for a losing one."""
    rows, parts = results["rows"], []
    for data in dict.fromkeys(r["data"] for r in rows):
        for setting in SETTINGS:
            mine = [r for r in rows if r["data"] == data and r["setting"] == setting]
            if mine:
                categories = ", ".join(dict.fromkeys(r["category"] for r in mine))
                table = format_table([{**m, "category": categories} for m in mean_rows(mine)])
                absent = sorted(set(REGISTRY) - {parse_model(r["model"])[0] for r in mine})
                missing = f"\nNot in this run: {', '.join(absent)}.\n" if absent else ""
                parts.append(f"{heading} {data}, {setting} (mean over: {categories})\n\n{table}\n{missing}")
    return "\n".join(parts)
