"""Paired AUROC comparisons of ablation rows measured on the same test images (DeLong et al., 1988).

    python benchmarks/paired_auroc.py benchmarks/results/ddad_ablation/elpv300_scores.json \
        --against AutoEncoder MeanImage PaDiM

reads the rows that ``benchmarks/ddad_ablation.py --keep-scores`` wrote and compares every DDAD row
with each baseline named by ``--against`` (its row on the same data and category, as fitted, not
through a view) and with its own *no-denoiser control* (the same test-time change, x̂₀ replaced by
the mean training view: ``CONTROLS``). Each comparison is
:func:`adlearn.metrics.paired_auroc_difference`: the difference of the two image AUROCs, its
paired standard error and a two-sided p-value. Pairing matters here: two models that miss the
same hard images are correlated, and their difference is told apart more sharply than two
unpaired standard errors would say. The result goes next to the input, ``NAME_paired.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from adlearn.files import atomic_write
from adlearn.metrics import paired_auroc_difference

CONTROLS = {
    "map standardised per pixel (on the training images)": "standardised, no denoiser (x̂₀ = the mean training view)",
    "standardised, layer 3": "standardised, layer 3, no denoiser",
}
"""A DDAD test-time row → the row that differs from it only in having no denoiser."""


def _compare(row: dict[str, Any], other: dict[str, Any], against: str) -> dict[str, Any]:
    if row["labels"] != other["labels"]:
        raise SystemExit(f"rows {row['train']}/{row['test']} and {other['train']}/{other['test']} were measured on "
                         "different test images: rerun both with the same --elpv-test and split")
    result = paired_auroc_difference(row["scores"], other["scores"], row["labels"])
    return {"data": row["data"], "category": row["category"], "train": row["train"], "test": row["test"],
            "against": against, **result}


def comparisons(rows: list[dict[str, Any]], baselines: list[str]) -> list[dict[str, Any]]:
    """Every DDAD row (one with a ``train_change``) against each baseline and against its control."""
    scored = [r for r in rows if "scores" in r]
    found = {(r["data"], r["category"], r["train"], r["test"]): r for r in scored}
    out = []
    for row in (r for r in scored if "train_change" in r and r["test"] not in CONTROLS.values()):
        place = (row["data"], row["category"])
        for name in baselines:
            if (*place, name, "-") not in found:
                raise SystemExit(f"no scored {name} row on {'/'.join(place)}: run ddad_ablation.py with "
                                 f"--reference {name} --keep-scores on the same --out")
            out.append(_compare(row, found[(*place, name, "-")], name))
        control = found.get((*place, row["train"], CONTROLS.get(row["test"], "")))
        if control is not None:
            out.append(_compare(row, control, "its no-denoiser control"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a ddad_ablation.py --keep-scores output")
    parser.add_argument("--against", nargs="+", default=["AutoEncoder"], help="baseline rows (model names)")
    args = parser.parse_args(argv)
    source = json.loads(args.results.read_text())
    given = list(sys.argv[1:] if argv is None else argv)
    record = {"what": __doc__.splitlines()[0], "command": "python benchmarks/paired_auroc.py " + shlex.join(given),
              "scores_from": source["commands"], "rows": comparisons(source["rows"], args.against)}
    out = args.results.with_name(args.results.stem.removesuffix("_scores") + "_paired.json")
    with atomic_write(out, "w") as f:
        json.dump(record, f, indent=1)
    for r in record["rows"]:
        print(f"{r['train']:>15} | {r['test'][:40]:40} vs {r['against']:24} {r['difference']:+.3f} "
              f"± {r['standard_error']:.3f}  p = {r['p']:.3f}")


if __name__ == "__main__":
    main()
