"""Render the committed benchmark into the README, between its ``results`` markers.

    python benchmarks/render_results.py            # rewrite README.md
    python benchmarks/render_results.py --check    # exit 1 if README.md is out of date (a test runs this)

The numbers come from ``benchmarks/results/bench_book/results.json``, whose ``meta.commands``
say how to reproduce them; nothing in the README's results section is typed by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adlearn.bench import load_results, summary_tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_book" / "results.json"
BEGIN = "<!-- results:begin — rendered by `python benchmarks/render_results.py`; do not edit by hand -->"
END = "<!-- results:end -->"


def section(results_path: Path = RESULTS) -> str:
    results = load_results(results_path)
    commands = "\n".join(results["meta"]["commands"])
    return (f"{BEGIN}\n{summary_tables(results)}\nReproduce with (the machine: {results['meta']['machine']}, "
            f"{results['meta']['threads']} thread; times are from a shared machine, compare ratios):\n\n"
            f"```bash\n{commands}\n```\n\nEvery row, per category, with `get_params()`, versions and memory: "
            f"[results.md](benchmarks/results/bench_book/results.md), "
            f"[results.json](benchmarks/results/bench_book/results.json).\n{END}")


def render(readme: str, results_path: Path = RESULTS) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the markers {BEGIN!r} … {END!r}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + section(results_path) + tail


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
