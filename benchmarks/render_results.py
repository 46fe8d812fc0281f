"""Render the committed benchmark results into the README, between its marker comments.

    python benchmarks/render_results.py            # rewrite README.md
    python benchmarks/render_results.py --check    # exit 1 if README.md is out of date (a test runs this)

The numbers come from ``benchmarks/results/bench_book/results.json`` (``adlearn bench``),
``benchmarks/results/padim_spade.json`` (``benchmarks/padim_spade.py``) and
``benchmarks/results/ddad_ablation/*.json`` (``benchmarks/ddad_ablation.py`` and, for the ``_paired``
files, ``benchmarks/paired_auroc.py``), which record the commands
that reproduce them; nothing between the README's markers is typed by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adlearn.bench import load_results, summary_tables
from adlearn.tables import cell, markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def bench_section() -> str:
    results = load_results(RESULTS / "bench_book" / "results.json")
    commands = "\n".join(results["meta"]["commands"])
    return (f"{summary_tables(results)}\nReproduce with ({results['meta']['threads']} thread; each row "
            f"records its machine: {_machines(results['rows'])}):\n\n```bash\n{commands}\n```\n\n"
            "Every row, per category, with `get_params()`, versions and memory: "
            "[results.md](benchmarks/results/bench_book/results.md), "
            "[results.json](benchmarks/results/bench_book/results.json).")


def _machines(rows: list[dict]) -> str:
    """Each machine of the run with the models whose rows it produced."""
    models: dict[str, dict[str, None]] = {}
    for row in rows:
        models.setdefault(row["machine"], {})[row["model"]] = None
    return "; ".join(f"{machine} — {', '.join(names)}" for machine, names in models.items())


def padim_spade_section() -> str:
    results = load_results(RESULTS / "padim_spade.json")
    sizes = sorted({r["n_train"] for r in results["rows"]})
    body = []
    for method in dict.fromkeys(r["method"] for r in results["rows"]):
        by_n = {r["n_train"]: r for r in results["rows"] if r["method"] == method}
        body.append([method, *(" / ".join(cell(float(by_n[n][key]), digits) for n in sizes)
                               for key, digits in (("fit_s", 1), ("predict_ms_per_image", 0), ("peak_rss_mib", 0)))])
    header = ["method", *(f"{what} (N = {' / '.join(map(str, sizes))})"
                          for what in ("fit s", "predict ms/image", "peak RSS MiB"))]
    ratios = "\n".join(f"* {r['what']}: {r['value']:.2f}×" for r in results["ratios"])
    spearman = min(a["spearman"] for a in results["agreement"])
    return (f"{markdown(header, body)}\n\nRatios measured in the same run (fit + predict time; peak memory):\n\n"
            f"{ratios}\n\nScores agree with every reference (lowest Spearman correlation {spearman:.3f}). "
            f"Reproduce with `{results['meta']['command']}` (anomalib in a separate venv, optional).")


README_TESTS = ("-", "as trained", "feature only (v=0)", "pixel only", "s: mean ratio on val",
                "map standardised per pixel (on the training images)", "standardised, layer 3",
                "standardised, w=1", "standardised, no denoiser (x̂₀ = the mean training view)",
                "standardised, layer 3, no denoiser")
"""The ablation rows the README shows, with the baselines' rows at each view size (chapter 7 shows them all)."""
ABLATIONS = ("synthetic", "elpv", "elpv300")
"""benchmarks/results/ddad_ablation/NAME.json: ELPV with 80 and with 300 training images."""


PAIRED = ("synthetic", "elpv300")
"""benchmarks/results/ddad_ablation/NAME_paired.json (``benchmarks/paired_auroc.py``)."""


def paired_section(name: str) -> str:
    """DDAD's rows against the baselines and its no-denoiser control on the same test images."""
    results = load_results(RESULTS / "ddad_ablation" / f"{name}_paired.json")
    body = [[f"{r['data']}/{r['category']}", r["train"], r["test"], r["against"], cell(r["auroc_a"], 3),
             cell(r["auroc_b"], 3), f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
             f"{r['p']:.3f}"] for r in results["rows"]]
    header = ["data", "DDAD denoiser", "test-time change", "against", "DDAD", "other", "difference [95 % CI]", "p"]
    return (f"Paired on the same test images (DeLong's test, `adlearn.metrics.paired_auroc_difference`):\n\n"
            f"{markdown(header, body)}\n\n```bash\n" + "\n".join([*results["scores_from"], results["command"]])
            + "\n```")


def ddad_ablation_section() -> str:
    parts = []
    for name in ABLATIONS:
        results = load_results(RESULTS / "ddad_ablation" / f"{name}.json")
        body = [[f"{r['data']}/{r['category']}, {r['n_train']} train", r["train"], r["test"],
                 *(cell(r.get(k), 3) for k in ("image_auroc", "pixel_auroc", "aupro")),
                 cell(float(r["fit_s"]), 0)] for r in results["rows"]
                if r["test"] in README_TESTS or r["test"].startswith("view ")]
        header = ["data", "model / DDAD denoiser trained as", "test-time change or view", "image AUROC", "pixel AUROC",
                  "AUPRO", "fit s"]
        commands = "\n".join(results["commands"])
        parts.append(f"{markdown(header, body)}\n\n```bash\n{commands}\n```")
        if name in PAIRED:
            parts.append(paired_section(name))
    return "\n\n".join(parts) + ("\n\nEvery row (w, T', layers, domain adaptation, …): "
                                 "[benchmarks/results/ddad_ablation/](benchmarks/results/ddad_ablation/).")


SECTIONS = {"results": bench_section, "padim_spade": padim_spade_section, "ddad_ablation": ddad_ablation_section}


def render(readme: str) -> str:
    """``readme`` with every marked section rendered afresh from the results files."""
    for name, make in SECTIONS.items():
        begin = f"<!-- {name}:begin — rendered by `python benchmarks/render_results.py`; do not edit by hand -->"
        end = f"<!-- {name}:end -->"
        if begin not in readme or end not in readme:
            raise SystemExit(f"README.md lacks the markers {begin!r} … {end!r}")
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{begin}\n{make()}\n{end}{tail}"
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    current = path.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md's results differ from benchmarks/results: run python benchmarks/render_results.py")
            return 1
        return 0
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
