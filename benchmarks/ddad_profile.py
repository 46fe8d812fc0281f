"""Where a DDAD fit spends its time: data loading, the resize to the denoiser's size, the UNet
step (forward, backward, optimiser), and the per-epoch validation — at a profile's settings.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 python benchmarks/ddad_profile.py --profile book

Writes ``benchmarks/results/ddad_fit_profile.json`` (one run: compare the shares, not the times).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from adlearn import setup
from adlearn.datasets import MVTecAD, make_synthetic
from adlearn.files import atomic_write
from adlearn.models import build
from adlearn.training import split_validation

OUT = Path(__file__).resolve().parent / "results" / "ddad_fit_profile.json"


def seconds(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="book")
    parser.add_argument("--category", default="fabric")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cfg = setup(args.profile, threads=1)
    p = cfg.profile
    root = make_synthetic(categories=[args.category], image_size=p.image_size, n_train=p.n_train,
                          n_test_good=p.n_test_good, n_test_defect=p.n_test_defect)
    train = MVTecAD(root, args.category, "train", image_size=p.image_size)
    model = build("DDAD", p)
    model._ensure_built(load_weights=True)
    train_set, val_set = split_validation(train, model.val_fraction, model.seed)
    loader = DataLoader(train_set, batch_size=model.batch_size, shuffle=True, drop_last=True)
    batch = next(iter(loader))["image"].to(model.device)
    optimizer = torch.optim.Adam(model.unet.parameters(), lr=model.lr, weight_decay=model.weight_decay)
    model.unet.train()

    def step() -> None:
        loss = model.denoising_loss(model.unet, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def validate() -> None:
        with torch.no_grad():
            for sample in DataLoader(val_set, batch_size=model.batch_size):
                model.denoising_loss(model.unet, sample["image"])

    per_epoch = len(loader)
    parts = {
        "load and decode one epoch of images": seconds(lambda: [b for b in loader], 2),
        "resize to the denoiser's size, per epoch": per_epoch * seconds(lambda: model.denoiser_view(batch), 20),
        "UNet steps (forward, backward, Adam), per epoch": per_epoch * seconds(step, args.steps),
        "validation loss, per epoch": seconds(validate, 2),
    }
    total = sum(parts.values())
    result = {
        "command": f"OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TQDM_DISABLE=1 python benchmarks/ddad_profile.py "
                   f"--profile {args.profile} --category {args.category}",
        "profile": p.name, "threads": 1, "batch_size": model.batch_size, "steps_per_epoch": per_epoch,
        "input_size": model.input_size, "epochs": model.epochs,
        "unet_parameters": sum(t.numel() for t in model.unet.parameters()),
        "seconds_per_epoch": parts, "share": {k: v / total for k, v in parts.items()},
        "estimated_fit_s": total * model.epochs,
    }
    with atomic_write(OUT, "w") as f:
        json.dump(result, f, indent=1)
    for name, value in parts.items():
        print(f"{name:>50}: {value:7.3f} s  ({100 * value / total:4.1f} %)")
    print(f"≈ {total:.2f} s per epoch × {model.epochs} epochs ≈ {total * model.epochs / 60:.0f} min; wrote {OUT}")


if __name__ == "__main__":
    main()
