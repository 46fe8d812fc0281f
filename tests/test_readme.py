"""The README's results are rendered from the committed results files, never typed."""

from __future__ import annotations

from tests.conftest import ROOT, benchmark_script


def _renderer():
    return benchmark_script("render_results")


def test_readme_results_match_the_committed_files() -> None:
    renderer = _renderer()
    readme = (ROOT / "README.md").read_text()
    assert renderer.render(readme) == readme, "run `python benchmarks/render_results.py` and commit README.md"


def test_the_rendered_sections_hold_every_benchmarked_model() -> None:
    renderer = _renderer()
    section = renderer.bench_section()
    rows = renderer.load_results(renderer.RESULTS / "bench_book" / "results.json")["rows"]
    for model in {r["model"] for r in rows}:
        assert f"| {model} |" in section
