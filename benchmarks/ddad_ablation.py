"""DDAD ablations: which settings make DDAD work on a CPU budget (train once, compare many).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/ddad_ablation.py \
        --data synthetic --categories capsule --train book crop64 --out benchmarks/results/ddad_ablation.json

Every *training* variant (``TRAIN``: changes to the book profile, domain adaptation off) is fitted
once per category; every *test-time* variant (``TEST``: w, T', the fusion, the feature layers, the
pixel scale, the feature reference, domain adaptation) is then measured on that one fitted
denoiser, each reconstruction computed once and compared in every way. ``--reference`` fits the
baselines (AutoEncoder, PaDiM; book profile) on the same split; ``--view-sizes 64 128`` fits them
again on images seen through the denoiser's view (shrunk to that size and brought back, as
``DDAD.denoiser_view`` and the backbone see them): what a method *could* find at that
resolution, whatever the denoiser does. Rows are appended to ``--out``
(rewritten atomically after every model), and a row already there is not measured again;
``--keep-scores`` stores each row's image scores too, for ``benchmarks/paired_auroc.py``.

The test-time rows are chosen on *test* images here, by design: they say which knob matters on
these data sets; the profile built from them must then hold on data it was not chosen on.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import adlearn
from adlearn.batches import iter_images
from adlearn.bench import Split, load_splits
from adlearn.files import atomic_write
from adlearn.metrics import evaluate, evaluate_maps
from adlearn.models import DDAD, build
from adlearn.ops import resize
from adlearn.prediction import anomaly_prediction
from adlearn.env import current_profile
from adlearn.training import split_validation

# changes to DDAD's book profile; every variant trains with da_epochs=0 and standardize=False (both are
# test-time rows: "as trained" is the paper's map)
TRAIN: dict[str, dict[str, Any]] = {
    "book": {},
    "epochs100": {"epochs": 100},
    "epochs75": {"epochs": 75},  # on 300 ELPV images the ≈ 1200 steps of `book` on 80 (what max_steps gives)
    "size128": {"input_size": 128, "epochs": 100},  # max_steps still caps: 300 images get 75 epochs
    "crop64": {"input_size": 256, "train_crop": 64},
    "crop64_at128": {"input_size": 128, "train_crop": 64},
    "crop64_noattn": {"input_size": 256, "train_crop": 64,
                      "denoiser": {"base_channels": 16, "channel_mults": (1, 2, 4, 4), "layers_per_block": 1,
                                   "attention_levels": ()}},
    "wide32": {"denoiser": {"base_channels": 32, "channel_mults": (1, 2, 4, 4), "layers_per_block": 1,
                            "attention_levels": (3,)}, "epochs": 100},  # 4x the UNet; max_steps caps as above
    "epochs75_seed1": {"epochs": 75, "seed": 1},  # epochs75 again from another seed: how far seeds alone move it
    "steps2400": {"max_steps": 2400},  # twice the book profile's optimiser steps
}
# test-time variants: model attributes to set (a new pixel_scale_statistic re-fixes s on the held-out
# images), plus "scale": "test_batch" (the official batch ratio) and "da" (epochs)
TEST: dict[str, dict[str, Any]] = {
    "as trained": {},
    "feature only (v=0)": {"v": 0.0},
    "pixel only": {"v": float("inf")},
    "v=4": {"v": 4.0},
    "s: mean ratio on val": {"pixel_scale_statistic": "mean"},
    "s: test set as one batch (official)": {"scale": "test_batch"},
    "reference: input": {"feature_reference": "input"},
    "layers 1-2": {"layers": (1, 2)},
    "layers 1-3": {"layers": (1, 2, 3)},
    "layer 3": {"layers": (3,)},
    "w=0": {"w": 0.0},
    "w=1": {"w": 1.0},
    "w=4": {"w": 4.0},
    "T'=150": {"test_steps": 150},
    "T'=400": {"test_steps": 400},
    "DA 2 epochs": {"da": 2},
    "eta=0 (deterministic DDIM)": {"eta": 0.0},
    "maps averaged over 4 noise draws": {"draws": 4},
    "score: mean of the top 1 % of the map": {"score": "top1pct"},
    "layer 3, maps averaged over 4 draws": {"layers": (3,), "draws": 4},
    "map standardised per pixel (on the training images)": {"standardize": True},
    "standardised, feature only (v=0)": {"standardize": True, "v": 0.0},
    "standardised, v=4": {"standardize": True, "v": 4.0},
    "standardised, reference: input": {"standardize": True, "feature_reference": "input"},
    "standardised, layers 1-3": {"standardize": True, "layers": (1, 2, 3)},
    "standardised, layer 3": {"standardize": True, "layers": (3,)},
    "standardised, layer 4": {"standardize": True, "layers": (4,)},  # stride 32: beyond the extractor's layers
    "standardised, layers 3-4": {"standardize": True, "layers": (3, 4)},
    # no denoiser at all: x̂₀ is the mean of the training images' views at input_size; how much the UNet adds
    "no denoiser (x̂₀ = the mean training view)": {"x0": "mean training view"},
    "standardised, no denoiser (x̂₀ = the mean training view)": {"standardize": True, "x0": "mean training view"},
    "standardised, layer 3, no denoiser": {"standardize": True, "layers": (3,), "x0": "mean training view"},
    "standardised, score: mean of the top 1 %": {"standardize": True, "score": "top1pct"},
    "standardised, T'=150": {"standardize": True, "test_steps": 150},
    "standardised, T'=400": {"standardize": True, "test_steps": 400},
    "standardised, w=1": {"standardize": True, "w": 1.0},
    "standardised, w=0": {"standardize": True, "w": 0.0},
}
NEW_RECONSTRUCTION = {"w", "test_steps", "da", "eta", "draws", "x0"}
CHEAP = [name for name, change in TEST.items() if not NEW_RECONSTRUCTION & change.keys()]
NOT_ATTRIBUTES = ("scale", "da", "draws", "score", "x0")
KEY = ("data", "category", "train", "test")


def _splits(data: str, categories: list[str] | None, n_train: int, n_test: int) -> list[Split]:
    profile = replace(current_profile(), elpv_n_train=n_train, elpv_n_test=n_test)  # ELPV at the held-out size
    return load_splits(data, categories, profile, seed=0)  # the seed `adlearn bench` uses by default


class DenoiserView(Dataset):
    """A dataset's images as DDAD's backbone sees them at ``input_size``: shrunk, then brought back."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        image = sample["image"][None]
        sample["image"] = resize(resize(image, self.size), image.shape[-2:])[0]
        return sample


def _test_images(test: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    samples = [test[i] for i in range(len(test))]
    images = torch.stack([s["image"] for s in samples])
    labels = torch.tensor([int(s["label"]) for s in samples])
    masks = torch.stack([s["mask"][0] > 0.5 for s in samples]) if "mask" in samples[0] else None
    return images, labels, masks


@torch.no_grad()
def _distances(model: DDAD, images: torch.Tensor, cache: dict, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """f_d and i_d of ``images`` under the model's current settings; x̂₀ is cached per (w, T', DA, η, seed)."""
    batches = [x.to(model.device) for x in images.split(model.batch_size)]
    if key not in cache:
        cache[key] = [model.denoise(y, y, model.w) for y in map(model.denoiser_view, batches)]
    pairs = [model.distance_maps(x, x0) for x, x0 in zip(batches, cache[key])]
    return torch.cat([f.cpu() for f, _, _ in pairs]), torch.cat([i.cpu() for _, i, _ in pairs])


def _averaged_distances(model: DDAD, images: torch.Tensor, cache: dict, key: tuple,
                        draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """f_d and i_d averaged over ``draws`` sampling-noise sequences (seeds seed, seed+1, ...)."""
    seed, totals = model.seed, None
    try:
        for draw in range(draws):
            model.seed = seed + draw
            maps = _distances(model, images, cache, (*key, model.seed))
            totals = maps if totals is None else tuple(t + m for t, m in zip(totals, maps))
    finally:
        model.seed = seed
    return totals[0] / draws, totals[1] / draws


def _mean_view(model: DDAD, train: Dataset) -> torch.Tensor:
    """The mean of the training images as the denoiser sees them (``[1,3,h,w]``, in [-1, 1])."""
    views = [model.denoiser_view(images) for images in iter_images(train, model.batch_size, model.device)]
    return torch.cat(views).mean(0, keepdim=True)


def _top_percent_score(anomaly_map: torch.Tensor) -> torch.Tensor:
    """An image score other than adlearn's maximum: the mean of the map's top 1 %."""
    flat = anomaly_map.flatten(1)
    return flat.topk(max(1, flat.shape[1] // 100), dim=1).values.mean(1)


def _measure(model: DDAD, change: dict[str, Any], test_set: tuple, train: Dataset, held_out: Dataset,
             cache: dict) -> dict[str, Any]:
    images, labels, masks = test_set
    saved = {k: getattr(model, k) for k in change if k not in NOT_ATTRIBUTES}
    extractor, layers = model.feature_extractor, model._extractor_layers()
    try:
        for k in saved:
            setattr(model, k, change[k])
        if model._extractor_layers() != layers:  # a layer the fitted extractor does not return
            model._build_feature_extractor(model._extractor_layers(), load_weights=True)
            model.feature_extractor.to(model.device)
        if change.get("x0") == "mean training view":  # every map below, the statistics' too, uses it
            mean_view = _mean_view(model, train)
            model.denoise = lambda x, y, w, **_: mean_view.expand_as(x)
        key = (model.w, model.test_steps, change.get("da", 0), model.eta, change.get("x0"))
        start = time.perf_counter()
        f_d, i_d = _averaged_distances(model, images, cache, key, change.get("draws", 1))
        seconds = time.perf_counter() - start
        if change.get("scale") == "test_batch":
            s = f_d.max() / i_d.max()
        elif "pixel_scale_statistic" in change:
            s = model.estimate_pixel_scale(held_out).cpu()
        else:
            s = model.pixel_scale.cpu()
        fused = i_d if model.v == float("inf") else f_d + model.v * s * i_d
        if model.standardize:
            model.map_statistics = model.estimate_map_statistics(train)
            fused = model.standardized(fused.to(model.device)).cpu()
        prediction = anomaly_prediction(fused, images.shape[-2:], model.sigma)
        if change.get("score") == "top1pct":
            prediction.score = _top_percent_score(prediction.anomaly_map)
    finally:
        for k, value in saved.items():
            setattr(model, k, value)
        model.feature_extractor = extractor
        model.__dict__.pop("denoise", None)
    metrics = evaluate_maps(prediction.score, labels, prediction.anomaly_map if masks is not None else None, masks)
    return {**metrics, "maps_s": seconds, "pixel_scale": float(s), "scores": prediction.score.tolist()}


def _chosen_tests(chosen: list[str]) -> list[str]:
    """The test rows ``--tests`` names, in TEST's order ("as trained" first)."""
    wanted = set(TEST if "all" in chosen else CHEAP if "cheap" in chosen else ()) | set(chosen)
    return [name for name in TEST if name in wanted]


def _fit_ddad(name: str, split: Split, cache_dir: Path) -> tuple[DDAD, float]:
    profile = current_profile().name
    path = cache_dir / f"DDAD_{profile}_{split.category}_{len(split.train)}_{name}.pt"  # ELPV comes in 2 sizes
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return adlearn.load(path), json.loads(meta.read_text())["fit_s"]
    model = build("DDAD", profile, da_epochs=0, standardize=False, **TRAIN[name])
    start = time.perf_counter()
    model.fit(split.train)
    fit_s = time.perf_counter() - start
    model.save(path)
    meta.write_text(json.dumps({"fit_s": fit_s}))
    return model, fit_s


@torch.no_grad()
def _scores(model: Any, images: torch.Tensor) -> list[float]:
    """A fitted reference model's image scores, in the test set's order (for paired comparisons)."""
    return model.predict(images).score.cpu().tolist()


def _write(out: Path, rows: list[dict[str, Any]], commands: list[str]) -> None:
    record = {"what": __doc__.split("\n\n")[0], "threads": torch.get_num_threads(), "commands": commands,
              "rows": rows}
    with atomic_write(out, "w") as f:
        json.dump(record, f, indent=1, default=repr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="synthetic", help="synthetic | elpv | an MVTec-layout root")
    parser.add_argument("--categories", nargs="*", default=None)
    parser.add_argument("--train", nargs="*", default=["book"], choices=sorted(TRAIN))
    parser.add_argument("--tests", nargs="+", default=["all"], choices=("all", "cheap", *TEST),
                        help="all, cheap (only the rows that reuse the trained settings' reconstruction) "
                             "or test names")
    parser.add_argument("--reference", nargs="*", default=[], help="baselines fitted on the same split")
    parser.add_argument("--view-sizes", nargs="*", type=int, default=[],
                        help="also fit the --reference models on the images seen at these sizes")
    parser.add_argument("--keep-scores", action="store_true",
                        help="store every row's image scores and labels (benchmarks/paired_auroc.py pairs them)")
    parser.add_argument("--elpv-train", type=int, default=80)
    parser.add_argument("--elpv-test", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddad_ablation.json"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/ddad_ablation"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", default="book", help="fast: a smoke test of this script")
    args = parser.parse_args(argv)

    adlearn.setup(args.profile, threads=args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {"rows": [], "commands": []}
    rows, commands = previous["rows"], previous["commands"]
    given = list(sys.argv[1:] if argv is None else argv)
    if "--cache" in given:  # where fitted denoisers are kept does not change a number
        del given[given.index("--cache") : given.index("--cache") + 2]
    command = "python benchmarks/ddad_ablation.py " + shlex.join(given)
    commands = [*commands, command] if command not in commands else commands
    done = {tuple(r[k] for k in KEY) for r in rows}

    def add(row: dict[str, Any]) -> None:
        if args.keep_scores:
            row["labels"] = test_set[1].tolist()
        else:
            row.pop("scores", None)
        rows.append(row)
        _write(args.out, rows, commands)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
               if k in (*KEY, "image_auroc", "pixel_auroc", "aupro", "fit_s")}, file=sys.stderr, flush=True)

    for split in _splits(args.data, args.categories, args.elpv_train, args.elpv_test):
        base = {"data": args.data, "category": split.category, "n_train": len(split.train)}
        test_set = _test_images(split.test)
        views = {"-": (split.train, split.test)} | {
            f"view {size} px": (DenoiserView(split.train, size), DenoiserView(split.test, size))
            for size in args.view_sizes}
        for name in args.reference:
            for view, (train_set, test_set_view) in views.items():
                if (args.data, split.category, name, view) in done:
                    continue
                model = build(name)
                start = time.perf_counter()
                model.fit(train_set)
                fit_s = time.perf_counter() - start
                row = {**base, "train": name, "test": view, "fit_s": fit_s,
                       **evaluate(model, test_set_view, progress=False)}
                if args.keep_scores:  # a second pass over the test images, only when asked for
                    row["scores"] = _scores(model, _test_images(test_set_view)[0])
                add(row)
        for name in args.train:
            tests = [t for t in _chosen_tests(args.tests) if (args.data, split.category, name, t) not in done]
            if not tests:
                continue
            model, fit_s = _fit_ddad(name, split, args.cache)
            _, held_out = split_validation(split.train, model.val_fraction, model.seed)  # where s is fixed
            cache: dict = {}
            adapted = None
            for test in tests:
                change = TEST[test]
                target = model
                if change.get("da"):
                    if adapted is None:
                        adapted, start = copy.deepcopy(model), time.perf_counter()
                        adapted.adapt_features(split.train, change["da"])
                        da_s = time.perf_counter() - start
                    target = adapted
                row = _measure(target, change, test_set, split.train, held_out, cache)
                add({**base, "train": name, "test": test, "train_change": TRAIN[name], "test_change": change,
                     "fit_s": fit_s + (da_s if change.get("da") else 0.0), **row})


if __name__ == "__main__":
    main()
