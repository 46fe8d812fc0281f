"""DDAD next to PaDiM (and the autoencoder) on the synthetic categories, one profile's settings.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 .venv/bin/python benchmarks/ddad.py \
        --profile book --categories fabric stone washer capsule --json ddad_book.json

prints a markdown table (image AUROC, pixel AUROC, AUPRO at the profile's image size, fit
seconds, predict ms/image, and per model the mean over the categories) and the same rows as
JSON. ``--set DDAD.epochs=100`` overrides a model's profile setting (values are Python literals).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import adlearn
from adlearn.bench import parse_model
from adlearn.cli import fit_and_evaluate
from adlearn.tables import format_table, mean_rows
from adlearn.datasets import make_synthetic
from adlearn.models import REGISTRY


def _overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["DDAD.epochs=100", ...]`` → ``{"DDAD": {"epochs": 100}}`` (values as ``adlearn bench`` reads them)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        model, _, param = key.partition(".")
        if not (model and param and value):
            raise SystemExit(f"--set expects MODEL.param=value, got {pair!r}")
        name, change = parse_model(f"{model}:{param}={value}")
        out.setdefault(name, {}).update(change)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="book")
    parser.add_argument("--categories", nargs="*", help="default: the profile's categories")
    parser.add_argument("--models", nargs="*", default=["DDAD", "PaDiM", "AutoEncoder"])
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="MODEL.param=value")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--save-dir", default=None, help="save every fitted model there (MODEL_category.pt)")
    args = parser.parse_args(argv)

    cfg = adlearn.setup(args.profile, threads=args.threads)
    profile = cfg.profile
    models = [m for m in args.models if m in REGISTRY]
    overrides = _overrides(args.overrides)
    root = make_synthetic(categories=profile.categories, image_size=profile.image_size,
                          n_train=profile.n_train, n_test_good=profile.n_test_good,
                          n_test_defect=profile.n_test_defect)
    rows = []
    for category in args.categories or profile.categories:
        for name in models:
            model, row = fit_and_evaluate(name, root, category, profile.image_size, profile.name,
                                          **overrides.get(name, {}))
            rows.append(row)
            if args.save_dir:
                model.save(f"{args.save_dir}/{name}_{category}.pt")
            print(format_table([row]).splitlines()[-1], file=sys.stderr, flush=True)  # progress as it goes
    print(f"\nprofile={profile.name}, {profile.image_size} px, threads={cfg.threads}, "
          f"models not installed: {sorted(set(args.models) - set(models)) or 'none'}\n")
    print(format_table(rows + mean_rows(rows)))
    print(json.dumps(rows, indent=1, default=float))
    if args.json:
        with open(args.json, "w") as f:
            record = {"profile": profile.name, "threads": cfg.threads, "overrides": overrides, "rows": rows}
            json.dump(record, f, indent=1, default=float)
    return rows


if __name__ == "__main__":
    main()
