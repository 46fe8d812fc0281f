"""Reconstruction baselines (AE-L2, AE-SSIM, VAE) next to PaDiM, on the same data.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/reconstruction.py \
        --profile book [--categories fabric washer] [--models AE-L2 AE-SSIM VAE PaDiM] [--no-elpv]

Every model is built with the profile's settings (``adlearn.models.build(name, profile)``), fitted
on the nominal training images of each synthetic category of the profile and of ELPV, and
evaluated on the test split with :func:`adlearn.metrics.evaluate` (image AUROC; pixel AUROC and
AUPRO at the data set's resolution where there are masks). Nothing is tuned on the test set.

* Augmentation for AE/VAE: the profile's rotations and shifts, plus flips for the textures and
  ELPV (a mirrored texture or solar cell is still nominal; a mirrored washer or capsule is not).
* ELPV has more training images than a synthetic category; AE/VAE train there for the same
  number of *images seen* (epochs × n_train / elpv_n_train), so the runs cost the same.

It prints a markdown table (with the per-model means over the synthetic categories) and writes
it with the JSON of every run to ``--out`` (default ``benchmarks/results/reconstruction_<profile>.json``
and ``.md``). ``fit_s`` and ``predict_ms_per_image`` are wall times on whatever else the machine
is doing: compare them within one run only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import adlearn
from adlearn.datasets import ELPV, SYNTHETIC_CATEGORIES, MVTecAD, make_synthetic
from adlearn.metrics import evaluate
from adlearn.models import build

HERE = Path(__file__).resolve().parent
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "AE-L2": ("AutoEncoder", {"loss": "l2"}),
    "AE-SSIM": ("AutoEncoder", {"loss": "ssim"}),
    "VAE": ("VAE", {}),
    "PaDiM": ("PaDiM", {}),
}
TRAINED = ("AutoEncoder", "VAE")
COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "fit_s", "predict_ms_per_image")


def overrides_for(variant: str, dataset: str, profile: adlearn.Profile) -> dict[str, Any]:
    """The variant's own settings plus, for trained models, the data set's flips and epochs."""
    model_name, extra = VARIANTS[variant]
    kwargs = dict(extra)
    if model_name in TRAINED:
        defaults = build(model_name, profile)
        flips = dataset == "elpv" or SYNTHETIC_CATEGORIES.get(dataset) == "texture"
        kwargs["augment"] = {**(defaults.augment or {}), "hflip": flips, "vflip": flips}
        if dataset == "elpv" and profile.elpv_n_train:
            kwargs["epochs"] = max(1, math.ceil(defaults.epochs * profile.n_train / profile.elpv_n_train))
    return kwargs


def datasets(profile: adlearn.Profile, categories: list[str], elpv: bool) -> dict[str, tuple[Any, Any]]:
    """(train, test) per data set name, at the profile's image size."""
    size = profile.image_size
    root = make_synthetic(
        categories=categories,
        image_size=size,
        n_train=profile.n_train,
        n_test_good=profile.n_test_good,
        n_test_defect=profile.n_test_defect,
    )
    out = {c: (MVTecAD(root, c, "train", size), MVTecAD(root, c, "test", size)) for c in categories}
    if elpv:
        split = {"image_size": size, "n_train": profile.elpv_n_train, "n_test": profile.elpv_n_test}
        out["elpv"] = (ELPV("train", **split), ELPV("test", **split))
    return out


def run(variant: str, dataset: str, train: Any, test: Any, profile: adlearn.Profile) -> dict[str, Any]:
    model_name, _ = VARIANTS[variant]
    kwargs = overrides_for(variant, dataset, profile)
    model = build(model_name, profile, **kwargs)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    metrics = evaluate(model, test, progress=False)
    row = {"model": variant, "dataset": dataset, "fit_s": fit_s, **metrics, "overrides": kwargs}
    if getattr(model, "history_", None):
        row["epochs_run"] = len(model.history_["train_loss"])
        row["best_epoch"] = model.history_["best_epoch"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    header = ["model", "dataset", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    synthetic = [r for r in rows if r["dataset"] != "elpv"]
    means = []
    for model in dict.fromkeys(r["model"] for r in synthetic):
        mine = [r for r in synthetic if r["model"] == model]
        means.append(
            {
                "model": model,
                "dataset": "**synthetic mean**",
                **{c: sum(r[c] for r in mine) / len(mine) for c in COLUMNS if all(c in r for r in mine)},
            }
        )
    for row in rows + means:
        cells = [row["model"], row["dataset"]]
        cells += [f"{row[c]:.3f}" if c in row else "–" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="book", choices=sorted(adlearn.PROFILES))
    parser.add_argument("--categories", nargs="+", default=None, help="default: the profile's categories")
    parser.add_argument("--models", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-elpv", dest="elpv", action="store_false", help="skip the ELPV solar cells")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)

    cfg = adlearn.setup(args.profile, seed=args.seed, threads=args.threads)
    profile = cfg.profile
    categories = args.categories or list(profile.categories)
    rows = []
    for dataset, (train, test) in datasets(profile, categories, args.elpv).items():
        for variant in args.models:
            adlearn.setup(args.profile, seed=args.seed, threads=args.threads, verbose=False)
            row = run(variant, dataset, train, test, profile)
            rows.append(row)
            metrics = ", ".join(f"{c}={row[c]:.3f}" for c in COLUMNS if c in row)
            print(f"{variant:8s} {dataset:8s} {metrics}", file=sys.stderr, flush=True)
    markdown = table(rows)
    print(markdown)
    out = args.out or HERE / "results" / f"reconstruction_{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["benchmarks/reconstruction.py", *(argv if argv is not None else sys.argv[1:])]),
        "profile": args.profile,
        "threads": args.threads,
        "seed": args.seed,
        "adlearn": adlearn.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    out.with_suffix(".md").write_text(
        f"`{meta['command']}` (threads={args.threads}, torch {meta['torch']})\n\n{markdown}\n"
    )
    print(f"\nwritten: {out} and {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
