"""benchmarks/paired_auroc.py pairs each DDAD ablation row with its baselines and its no-denoiser control."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adlearn.metrics import paired_auroc_difference
from tests.conftest import benchmark_script


def _script():
    return benchmark_script("paired_auroc")


def _row(train: str, test: str, scores: np.ndarray, labels: list[int], ddad: bool) -> dict:
    row = {"data": "elpv", "category": "elpv", "train": train, "test": test, "scores": scores.tolist(),
           "labels": labels}
    return {**row, "train_change": {}} if ddad else row


@pytest.fixture
def rows() -> list[dict]:
    rng = np.random.default_rng(0)
    labels = [0] * 30 + [1] * 20
    y = np.array(labels)
    standardised, control = "map standardised per pixel (on the training images)", \
        "standardised, no denoiser (x̂₀ = the mean training view)"
    return [
        _row("AutoEncoder", "-", rng.normal(size=50) + 0.5 * y, labels, ddad=False),
        _row("PaDiM", "-", rng.normal(size=50) + 2.0 * y, labels, ddad=False),
        _row("epochs75", standardised, rng.normal(size=50) + 1.0 * y, labels, ddad=True),
        _row("epochs75", control, rng.normal(size=50) + 1.0 * y, labels, ddad=True),
        _row("epochs75", "standardised, w=1", rng.normal(size=50) + 1.0 * y, labels, ddad=True),
    ]


def test_every_ddad_row_is_paired_with_each_baseline_and_its_control(rows) -> None:
    out = _script().comparisons(rows, ["AutoEncoder", "PaDiM"])
    pairs = [(r["test"][:12], r["against"]) for r in out]
    assert pairs == [("map standard", "AutoEncoder"), ("map standard", "PaDiM"),
                     ("map standard", "its no-denoiser control"),
                     ("standardised", "AutoEncoder"), ("standardised", "PaDiM")]  # w=1 has no control
    expected = paired_auroc_difference(rows[2]["scores"], rows[1]["scores"], rows[2]["labels"])
    assert out[1]["difference"] == pytest.approx(expected["difference"]) and out[1]["difference"] < 0
    assert out[1]["p"] == pytest.approx(expected["p"])


def test_a_missing_baseline_or_other_test_images_stop_with_the_fix(rows) -> None:
    script = _script()
    with pytest.raises(SystemExit, match="--reference MeanImage --keep-scores"):
        script.comparisons(rows, ["MeanImage"])
    rows[0]["labels"] = rows[0]["labels"][::-1]
    with pytest.raises(SystemExit, match="different test images"):
        script.comparisons(rows, ["AutoEncoder"])


def test_the_script_writes_the_paired_file_next_to_the_scores(rows, tmp_path) -> None:
    scores = tmp_path / "elpv300_scores.json"
    scores.write_text(json.dumps({"commands": ["python benchmarks/ddad_ablation.py ..."], "rows": rows}))
    _script().main([str(scores), "--against", "AutoEncoder"])
    record = json.loads((tmp_path / "elpv300_paired.json").read_text())
    assert record["scores_from"] == ["python benchmarks/ddad_ablation.py ..."]
    assert record["command"].endswith("--against AutoEncoder") and len(record["rows"]) == 3
