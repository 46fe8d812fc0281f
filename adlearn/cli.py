"""Command line: ``adlearn demo | fit | evaluate | bench | models``.

``adlearn demo`` is the package's main job: generate the embedded synthetic data set, fit the
models, print a metrics table and write a figure of anomaly maps — in minutes on a laptop CPU.

Exit codes (also printed by ``adlearn --help``):

* 0 — success;
* 1 — an :class:`~adlearn.errors.AdlearnError`: a problem with the input or set-up that the
  user can fix (a missing folder, an unwritable output path, an unknown model name). One line
  ``adlearn: error: <what is wrong and how to fix it>`` goes to stderr, without a traceback;
* 2 — bad command-line arguments (argparse's usage error);
* 130 — interrupted with Ctrl-C (128 + SIGINT, the shell convention). Files being written are
  left as they were: every file goes through :func:`adlearn.files.atomic_write`;
* 141 — the reader of the output went away (``adlearn models | head``; 128 + SIGPIPE), quietly.

Any other exception is a bug in adlearn and keeps its traceback.

The parser imports neither torch nor the models, so ``adlearn --help`` answers at once; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import AdlearnError
from .files import atomic_write, check_writable_dir, check_writable_file
from .profiles import PROFILES
from .tables import TABLE_COLUMNS, format_table, mean_rows

EXIT_ERROR = 1
"""Exit code of an :class:`AdlearnError` (a user-fixable problem)."""
EXIT_USAGE = 2
"""Exit code of a command-line usage error (argparse's)."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C: 128 + SIGINT."""
EXIT_BROKEN_PIPE = 141
"""Exit code when stdout's reader closed the pipe: 128 + SIGPIPE."""

EPILOG = f"""\
exit codes: 0 success; {EXIT_ERROR} an adlearn error (one line on stderr says what and how to fix it);
{EXIT_USAGE} bad arguments; {EXIT_INTERRUPTED} interrupted (Ctrl-C). `adlearn models` lists the model names."""

MODEL_HELP = "a model name, e.g. PaDiM (`adlearn models` lists them)"

def fit_and_evaluate(model_name: str, root: Path, category: str, image_size: int, profile: str,
                     **overrides: Any) -> tuple[Any, dict[str, Any]]:
    """Fit ``model_name`` on a category's train split, evaluate on its test split."""
    from .datasets import MVTecAD
    from .metrics import evaluate
    from .models import build

    model = build(model_name, profile, **overrides)
    train = MVTecAD(root, category, "train", image_size=image_size)
    test = MVTecAD(root, category, "test", image_size=image_size)
    start = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - start
    metrics = evaluate(model, test)
    return model, {"model": model_name, "category": category, "fit_s": fit_s, **metrics}


def _demo_figure(model: Any, root: Path, category: str, image_size: int, path: Path) -> None:
    import torch

    from .datasets import MVTecAD
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
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def _check_model_names(names: Sequence[str]) -> None:
    """Refuse unknown model names before any work starts (``build`` would, but only when reached)."""
    from .models import REGISTRY

    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise AdlearnError(f"unknown model {', '.join(map(repr, unknown))}; available: {sorted(REGISTRY)}")


def cmd_demo(args: argparse.Namespace) -> None:
    out = check_writable_dir(args.out, "demo output folder (--out)")  # in a blink, before torch loads
    _check_model_names(args.models)
    from . import setup
    from .datasets import make_synthetic

    cfg = setup(args.profile, seed=args.seed)
    p = cfg.profile
    categories = args.categories or list(p.categories)
    root = make_synthetic(categories=categories, image_size=p.image_size, seed=args.seed,
                          n_train=p.n_train, n_test_good=p.n_test_good, n_test_defect=p.n_test_defect)
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
    columns = [c for c in TABLE_COLUMNS if c != "fit_peak_mb"]  # the benchmark measures memory
    table = format_table(rows + mean_rows(rows, columns), columns)
    print(f"\nSynthetic data set: {root}  ({p.image_size}px, metrics at {p.image_size}px)\n\n{table}\n")
    results = out / "demo_results.json"
    with atomic_write(results, "w") as f:
        json.dump({"profile": p.name, "rows": rows}, f, indent=2)
    print(f"Wrote {results} and heat maps: {', '.join(str(f) for f in figures)}")


def cmd_fit(args: argparse.Namespace) -> None:
    output = check_writable_file(args.output, "model file (-o)")  # in a blink, before torch loads
    from . import setup
    from .datasets import MVTecAD
    from .models import build

    cfg = setup(args.profile, seed=args.seed)
    model = build(args.model, cfg.profile)
    train = MVTecAD(args.root, args.category, "train", image_size=args.image_size or cfg.profile.image_size)
    model.fit(train)
    print(f"saved {model.save(output)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from . import load, setup
    from .datasets import MVTecAD
    from .metrics import evaluate

    cfg = setup(args.profile, seed=args.seed)
    model = load(args.model_file)
    fitted = getattr(model, "image_size_", None)  # models with per-pixel state score only that size
    size = args.image_size or (fitted[0] if fitted else cfg.profile.image_size)
    test = MVTecAD(args.root, args.category, "test", image_size=size)
    print(json.dumps(evaluate(model, test), indent=2))


def cmd_bench(args: argparse.Namespace) -> None:
    out = check_writable_dir(args.out, "benchmark output folder (--out)")
    from .bench import SETTINGS, run_bench

    settings = SETTINGS if args.setting == "both" else (args.setting,)
    command = "adlearn " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    run_bench(args.models, args.data, args.categories, settings, args.profile, out, resume=args.resume,
              seed=args.seed, command=command)
    print((out / "results.md").read_text())
    print(f"Wrote {out / 'results.json'}, {out / 'results.csv'} and {out / 'results.md'}")


def cmd_models(args: argparse.Namespace) -> None:
    from .models import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        summary = (cls.__doc__ or "").strip().splitlines()
        print(f"{name:<12} {summary[0] if summary else ''}")


def _whole_number(minimum: int, unit: str) -> Callable[[str], int]:
    """An argparse type: an integer ≥ ``minimum`` (anything else is a usage error, exit code 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number{unit}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number{unit} ≥ {minimum}, got {value}")
        return value

    return parse


pixels = _whole_number(1, " of pixels")
"""argparse type of ``--image-size``: a positive number of pixels."""
non_negative = _whole_number(0, "")
"""argparse type of ``--seed``: a non-negative integer (what numpy's generators accept)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``adlearn`` argument parser (built without importing torch or the models)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="adlearn", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=formatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="default: $ADLEARN_PROFILE, else paper on a GPU and book otherwise")
    parser.add_argument("--seed", type=non_negative, default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help, description=help, epilog=EPILOG, formatter_class=formatter)
        cmd.set_defaults(func=func)
        return cmd

    demo = command("demo", cmd_demo, "synthetic data → fit → metrics table + heat-map PNGs")
    demo.add_argument("--models", nargs="+", default=["MeanImage", "PaDiM"], metavar="MODEL", help=MODEL_HELP)
    demo.add_argument("--categories", nargs="+", default=None)
    demo.add_argument("--out", default="outputs/demo", help="folder for the PNGs and demo_results.json")

    fit = command("fit", cmd_fit, "fit a model on ROOT/CATEGORY/train (MVTec AD layout) and save it")
    fit.add_argument("model", help=MODEL_HELP)
    fit.add_argument("root")
    fit.add_argument("category")
    fit.add_argument("-o", "--output", default="model.pt", help="model file to write (default: model.pt)")
    fit.add_argument("--image-size", type=pixels, default=None, help="default: the profile's")

    ev = command("evaluate", cmd_evaluate, "evaluate a saved model on ROOT/CATEGORY/test")
    ev.add_argument("model_file")
    ev.add_argument("root")
    ev.add_argument("category")
    ev.add_argument("--image-size", type=pixels, default=None,
                    help="default: the size the model was fitted at if it needs one, else the profile's")

    bench = command("bench", cmd_bench, "every model on the same data, one-class and multi-class, with its cost")
    bench.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                       help="default: every registered model; NAME:param=value[,...] changes a profile setting, "
                            "e.g. SPADE:image_score=max")
    bench.add_argument("--data", default="synthetic",
                       help="'synthetic' (generated), 'elpv' (solar cells, image labels) or a folder in the MVTec AD layout")
    bench.add_argument("--categories", nargs="+", default=None, help="default: the profile's (synthetic) or all")
    bench.add_argument("--setting", choices=["one-class", "multi-class", "both"], default="both")
    bench.add_argument("--out", default="outputs/bench", help="folder for results.json, results.csv and results.md")
    bench.add_argument("--resume", action="store_true", help="keep the rows in --out and skip what they cover")

    command("models", cmd_models, "list the model names")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; exits with the codes listed in the module docstring."""
    args = build_parser().parse_args(argv)  # exits 2 on bad arguments
    args.argv = None if argv is None else list(argv)  # recorded by `bench` as the command to re-run
    try:
        args.func(args)
    except AdlearnError as err:
        print(f"adlearn: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print("adlearn: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # Python flushes stdout again at exit, into the closed pipe: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)


if __name__ == "__main__":
    main()
