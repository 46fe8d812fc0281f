"""``adlearn bench``: every registered model, both settings, three results files, resumable."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch

from adlearn import bench
from adlearn.errors import AdlearnError
from adlearn.models import REGISTRY


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """The command CI runs: every registered model, fast profile, synthetic data, both settings."""
    from adlearn.cli import main

    out = tmp_path_factory.mktemp("bench")
    main(["--profile", "fast", "bench", "--data", "synthetic", "--out", str(out)])
    return out


def test_every_model_both_settings_three_files(fast_run) -> None:
    results = json.loads((fast_run / "results.json").read_text())
    rows = results["rows"]
    assert {r["model"] for r in rows} == set(REGISTRY)
    assert {r["setting"] for r in rows} == {"one-class", "multi-class"}
    for row in rows:
        for metric in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max"):
            assert isinstance(row[metric], float) and 0 <= row[metric] <= 1, (row["model"], metric, row[metric])
        assert row["fit_s"] > 0 and row["predict_ms_per_image"] > 0 and row["n_params"] >= 0
        assert row["params"] and row["versions"]["torch"] and row["device"] == "cpu"
        assert row["machine"] == results["meta"]["machine"]
    assert torch.backends.cpu.get_cpu_capability() in results["meta"]["machine"]  # what float rounding follows
    with open(fast_run / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    markdown = (fast_run / "results.md").read_text()
    assert "## synthetic, one-class" in markdown and "## synthetic, multi-class" in markdown
    assert results["meta"]["commands"][-1].startswith("adlearn --profile fast bench")


def test_summary_names_the_models_a_table_lacks(fast_run) -> None:
    results = json.loads((fast_run / "results.json").read_text())
    assert "Not in this run" not in bench.summary_tables(results)
    kept = [r for r in results["rows"] if r["model"] != "DDAD" or r["setting"] == "one-class"]
    summary = bench.summary_tables({**results, "rows": kept})
    one_class, multi_class = summary.split("### synthetic, multi-class")
    assert "Not in this run" not in one_class
    assert "Not in this run: DDAD." in multi_class


def test_resume_skips_finished_rows(tmp_path, monkeypatch) -> None:
    first = bench.run_bench(["MeanImage"], profile="fast", settings=["one-class"], out=tmp_path)
    monkeypatch.setattr(bench, "_fit", lambda *a: pytest.fail("a finished row was fitted again"))
    again = bench.run_bench(["MeanImage"], profile="fast", settings=["one-class"], out=tmp_path, resume=True)
    assert again == json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["image_auroc"] for r in again] == [r["image_auroc"] for r in first]


def test_an_interrupted_run_keeps_its_finished_rows(tmp_path, monkeypatch) -> None:
    calls = []
    real = bench.evaluate

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "evaluate", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(["MeanImage"], profile="fast", settings=["one-class"], out=tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 1 and not math.isnan(rows[0]["image_auroc"])


def test_bad_requests_are_clear_errors(tmp_path) -> None:
    with pytest.raises(AdlearnError, match="unknown model"):
        bench.run_bench(["NoSuchModel"], profile="fast", out=tmp_path)
    with pytest.raises(AdlearnError, match="settings must be"):
        bench.run_bench(["MeanImage"], profile="fast", settings=["two-class"], out=tmp_path)
    with pytest.raises(AdlearnError, match="MVTec AD layout"):
        bench.run_bench(["MeanImage"], data=str(tmp_path / "missing"), profile="fast", out=tmp_path)


def test_a_model_spec_changes_profile_settings() -> None:
    assert bench.parse_model("SPADE") == ("SPADE", {})
    assert bench.parse_model("SPADE:image_score=max") == ("SPADE", {"image_score": "max"})
    assert bench.parse_model("DDAD:layers=(1, 2),w=0") == ("DDAD", {"layers": (1, 2), "w": 0})
    with pytest.raises(AdlearnError, match="param=value"):
        bench.parse_model("SPADE:max")


def test_a_spec_row_is_its_own_row(tmp_path) -> None:
    """SPADE's two image scores, side by side: same fit, different image AUROC, same map."""
    specs = ["SPADE", "SPADE:image_score=max"]
    rows = bench.run_bench(specs, categories=["fabric"], profile="fast", settings=["one-class"], out=tmp_path)
    assert [r["model"] for r in rows] == specs
    assert [r["params"]["image_score"] for r in rows] == ["knn", "max"]
    assert rows[0]["pixel_auroc"] == rows[1]["pixel_auroc"]
    again = bench.run_bench(specs, categories=["fabric"], profile="fast", settings=["one-class"], out=tmp_path,
                            resume=True)
    assert [(r["model"], r["image_auroc"]) for r in again] == [(r["model"], r["image_auroc"]) for r in rows]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resident set is read from /proc on Linux")
def test_peak_memory_counts_a_block_that_reuses_freed_memory() -> None:
    """Memory that an earlier fit freed below a live allocation stays in the heap; a block that
    reuses it did not grow the resident set and read ≈ 0 MiB. The start is now taken after that
    memory went back to the system, so the block reads its real size."""
    chunks = [torch.ones(64, 64, 4) for _ in range(1500)]  # 64 KiB each: on the heap, not mmap-ed
    pin = torch.ones(64, 64, 4)  # above them: the freed chunks cannot be trimmed off the top
    del chunks
    with bench.PeakMemory(torch.device("cpu")) as memory:
        again = [torch.ones(64, 64, 4) for _ in range(1500)]  # ≈ 94 MiB
    assert memory.peak_mb > 60, memory.peak_mb
    assert len(again) == 1500 and pin.sum() > 0
