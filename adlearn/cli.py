"""Command line: ``adlearn demo | fit | evaluate``.

``adlearn demo`` is the package's main job: generate the embedded synthetic data set, fit the
models, print a metrics table and write a figure of anomaly maps — in minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import setup
from .datasets import MVTecAD, make_synthetic
from .metrics import evaluate
from .models import REGISTRY, build, load

COLUMNS = ("image_auroc", "pixel_auroc", "aupro", "fit_s", "predict_ms_per_image")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """A markdown table of ``rows`` (dicts with ``model``, ``category`` and ``columns``)."""
    header = ["model", "category", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["model"]), str(row["category"])]
        cells += [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "–")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> list[dict[str, Any]]:
    """One ``mean`` row per model, averaging each column over the categories."""
    means = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        means.append({"model": model, "category": "**mean**",
                      **{c: sum(r[c] for r in mine) / len(mine) for c in columns if all(c in r for r in mine)}})
    return means


def fit_and_evaluate(model_name: str, root: Path, category: str, image_size: int, profile: str,
                     **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """Fit ``model_name`` on a category's train split, evaluate on its test split."""
    train = MVTecAD(root, category, "train", image_size=image_size)
    test = MVTecAD(root, category, "test", image_size=image_size)
    model = build(model_name, profile, **overrides)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    metrics = evaluate(model, test)
    return model, {"model": model_name, "category": category, "fit_s": fit_s, **metrics}


def _demo_figure(model: Any, root: Path, category: str, image_size: int, path: Path) -> None:
    from .viz import show_predictions

    test = MVTecAD(root, category, "test", image_size=image_size)
    first_of_each: dict[str, int] = {}
    for i, sample in enumerate(test.samples):
        first_of_each.setdefault(sample.defect, i)
    samples = [test[i] for i in first_of_each.values()]
    images = torch.stack([s["image"] for s in samples])
    pred = model.predict(images).cpu()
    fig = show_predictions(images, pred.anomaly_map, torch.stack([s["mask"] for s in samples]), pred.score,
                           [f"{category}/{s['defect']}" for s in samples])
    fig.savefig(path, dpi=110)


def cmd_demo(args: argparse.Namespace) -> None:
    cfg = setup(args.profile, seed=args.seed)
    p = cfg.profile
    categories = args.categories or list(p.categories)
    root = make_synthetic(categories=categories, image_size=p.image_size, seed=args.seed,
                          n_train=p.n_train, n_test_good=p.n_test_good, n_test_defect=p.n_test_defect)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, figures = [], []
    for model_name in args.models:
        for category in categories:
            model, row = fit_and_evaluate(model_name, root, category, p.image_size, p.name)
            rows.append(row)
            print(f"{model_name:>10} {category:>8}: image AUROC {row['image_auroc']:.3f}  "
                  f"pixel AUROC {row['pixel_auroc']:.3f}  AUPRO {row['aupro']:.3f}  fit {row['fit_s']:.1f}s")
            if model_name == args.models[-1]:
                figure = out / f"demo_{model_name}_{category}.png"
                _demo_figure(model, root, category, p.image_size, figure)
                figures.append(figure)
    table = format_table(rows + mean_rows(rows))
    print(f"\nSynthetic data set: {root}  ({p.image_size}px, metrics at {p.image_size}px)\n\n{table}\n")
    (out / "demo_results.json").write_text(json.dumps({"profile": p.name, "rows": rows}, indent=2))
    print(f"Wrote {out / 'demo_results.json'} and heat maps: {', '.join(str(f) for f in figures)}")


def cmd_fit(args: argparse.Namespace) -> None:
    cfg = setup(args.profile, seed=args.seed)
    train = MVTecAD(args.root, args.category, "train", image_size=args.image_size or cfg.profile.image_size)
    model = build(args.model, cfg.profile).fit(train)
    print(f"saved {model.save(args.output)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    cfg = setup(args.profile, seed=args.seed)
    model = load(args.model_file)
    test = MVTecAD(args.root, args.category, "test", image_size=args.image_size or cfg.profile.image_size)
    print(json.dumps(evaluate(model, test), indent=2))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="adlearn", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=["fast", "book", "paper"], default=None,
                        help="default: $ADLEARN_PROFILE, else paper on a GPU and book otherwise")
    parser.add_argument("--seed", type=int, default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic data → fit → metrics table + heat-map PNGs")
    demo.add_argument("--models", nargs="+", default=["MeanImage", "PaDiM"], choices=sorted(REGISTRY))
    demo.add_argument("--categories", nargs="+", default=None)
    demo.add_argument("--out", default="outputs/demo")
    demo.set_defaults(func=cmd_demo)

    fit = sub.add_parser("fit", help="fit a model on ROOT/CATEGORY/train (MVTec AD layout) and save it")
    fit.add_argument("model", choices=sorted(REGISTRY))
    fit.add_argument("root")
    fit.add_argument("category")
    fit.add_argument("-o", "--output", default="model.pt")
    fit.add_argument("--image-size", type=int, default=None)
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("evaluate", help="evaluate a saved model on ROOT/CATEGORY/test")
    ev.add_argument("model_file")
    ev.add_argument("root")
    ev.add_argument("category")
    ev.add_argument("--image-size", type=int, default=None)
    ev.set_defaults(func=cmd_evaluate)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
