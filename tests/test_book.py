"""Notebook hygiene: what every chapter must be before it is committed and published."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

BOOK = Path(__file__).resolve().parents[1] / "book"
NOTEBOOKS = sorted(p for p in BOOK.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _toc_files() -> set[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = set()
    for part in toc.get("parts", []) or [{"chapters": toc.get("chapters", [])}]:
        for chapter in part["chapters"]:
            files.add(chapter["file"])
    return files


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_book_has_notebooks() -> None:
    assert NOTEBOOKS, "book/ must hold the chapter notebooks"


def test_toc_and_notebooks_agree() -> None:
    on_disk = {str(p.relative_to(BOOK).with_suffix("")) for p in NOTEBOOKS}
    listed = _toc_files()
    pages = {f for f in listed if (BOOK / f"{f}.md").is_file()}
    assert on_disk == listed - pages, f"notebooks not in _toc.yml: {on_disk - listed}; missing: {listed - pages - on_disk}"


def test_intro_links_every_chapter() -> None:
    """The intro's chapter table is the reader's map: every notebook is a link there."""
    linked = set(re.findall(r"\]\(([^)]+)\.ipynb\)", (BOOK / "intro.md").read_text()))
    on_disk = {str(p.relative_to(BOOK).with_suffix("")) for p in NOTEBOOKS}
    assert on_disk <= linked, f"chapters missing from intro.md's table: {sorted(on_disk - linked)}"


def test_no_reference_to_developer_notes() -> None:
    """The book cites papers, repositories and issues — never notes a reader does not have."""
    for path in [*NOTEBOOKS, *BOOK.rglob("*.md")]:
        text = path.read_text()
        for phrase in ("methods.md", "reference notes", "reference/"):
            assert phrase not in text, f"{path.name} mentions {phrase!r}: link to papers.md instead"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"strip outputs of {path.name}"
    assert json.loads(path.read_text())["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_shape(path: Path) -> None:
    cells = _cells(path)
    badge = f"colab.research.google.com/github/adlearn/adlearn/blob/main/book/{path.relative_to(BOOK)}"
    assert badge in _source(cells[0]), "the first cell carries the chapter's Colab badge"
    first_code = next(c for c in cells if c["cell_type"] == "code")
    code = _source(first_code)
    assert "COLAB_RELEASE_TAG" in code and "adlearn.setup(" in code, "first code cell: Colab install + setup"
    assert "parameters" in first_code["metadata"].get("tags", [])
    text = "\n".join(_source(c) for c in cells)
    assert not re.search(r"profile\.name\s*==", text), "read sizes from cfg.profile; never branch on its name"
    assert "../data" not in text, "data come from adlearn (Colab has no repository checkout)"
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    assert re.search(r"^#+ .*Exercises", markdown, re.M) and markdown.count("Solution") >= 3
    assert re.search(r"^#+ .*Summary", markdown, re.M) and re.search(r"^#+ .*Pitfalls", markdown, re.M)


# --- Number provenance: every metric-like number in a chapter's prose is printed by one of its cells.
#
# Runs on *executed* copies (``make notebooks`` writes them to ``book_executed/``); point
# ``ADLEARN_EXECUTED_BOOK`` at another folder to check elsewhere. Without executed copies the test
# is skipped with a reason, never passed silently.

EXECUTED = Path(os.environ.get("ADLEARN_EXECUTED_BOOK", BOOK.parent / "book_executed"))
EXECUTED_NOTEBOOKS = (
    sorted(p for p in EXECUTED.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and "_build" not in p.parts)
    if EXECUTED.is_dir()
    else []
)
METRIC_LIKE = re.compile(
    r"(?<![\w.])(?:"
    r"[01]\.\d{3,}"  # a metric with three decimals: 0.575, 1.000
    r"|\d+(?:\.\d+)?(?=\s?×(?!\s?\d))"  # a ratio: 1.71×, ≈ 100× (not a size such as 32×32)
    r"|\d+(?:\.\d+)?(?=\s?%)"  # a percentage: 49 %
    r")(?![\w.]\d)"
)
NUMBER = re.compile(r"\d+(?:\.\d+)?")
NOT_PROSE = re.compile(r"```.*?```|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$", re.S)  # code and maths
SENTENCE_END = re.compile(r"(?<=[.;:!?])\s+(?=[A-Z(*])|\n\s*\n|\n\s*[*|-]\s")
# A sentence that names its source quotes a published number: a citation, a link (issue, README),
# or the book's "Papers and official code" page.
SOURCED = re.compile(r"\{cite|\]\(https?://|\]\([^)]*papers")


def prose_numbers(markdown: str) -> list[str]:
    """The metric-like numbers of a markdown cell's own prose: code and maths are not prose, and
    a sentence that cites its source quotes a published number rather than claiming a result."""
    sentences = SENTENCE_END.split(NOT_PROSE.sub(" ", markdown))
    return [n for sentence in sentences if not SOURCED.search(sentence) for n in METRIC_LIKE.findall(sentence)]


def _output_text(cell: dict) -> str:
    text = []
    for output in cell.get("outputs", []):
        text.append("".join(output.get("text", "")))
        for mime in ("text/plain", "text/markdown", "text/html", "text/latex"):
            text.append("".join(output.get("data", {}).get(mime, "")))
    return "\n".join(text)


def printed(number: str, outputs: str) -> bool:
    """Whether ``outputs`` hold ``number`` — exactly, or a longer value that rounds to it."""
    decimals = len(number.partition(".")[2])
    target = float(number)
    return any(
        value == number or round(float(value), decimals) == target
        for value in NUMBER.findall(outputs)
        if len(value.partition(".")[2]) >= decimals
    )


def unprinted_numbers(notebook: dict) -> list[tuple[int, str]]:
    """(cell index, number) for each prose number that no output of the notebook contains."""
    outputs = "\n".join(_output_text(c) for c in notebook["cells"] if c["cell_type"] == "code")
    return [
        (index, number)
        for index, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "markdown"
        for number in prose_numbers(_source(cell))
        if not printed(number, outputs)
    ]


def test_prose_number_detection() -> None:
    text = "AUPRO is 0.575 (not 0.5); 1.71× faster; 49 % of it; a 32×32 map; `0.123` and $0.456$."
    assert prose_numbers(text) == ["0.575", "1.71", "49"]
    quoted = "The paper reports 0.998 {cite}`x`. Issue [#4](https://github.com/o/r/issues/4) saw 0.674. We got 0.9."
    assert prose_numbers(quoted) == []
    assert prose_numbers("See the [appendix](../papers.md): 0.891.\n\nOurs: 0.812.") == ["0.812"]
    notebook = {"cells": [
        {"cell_type": "markdown", "source": text},
        {"cell_type": "code", "source": "", "outputs": [{"output_type": "stream", "text": "0.5751 1.709 49.2"}]},
    ]}
    assert unprinted_numbers(notebook) == []
    notebook["cells"][1]["outputs"][0]["text"] = "0.5756 1.71"
    assert unprinted_numbers(notebook) == [(0, "0.575"), (0, "49")]


@pytest.mark.skipif(
    not EXECUTED_NOTEBOOKS,
    reason=f"no executed notebooks in {EXECUTED}: run `make notebooks` first (or set ADLEARN_EXECUTED_BOOK)",
)
@pytest.mark.parametrize("path", EXECUTED_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_prose_number_is_printed(path: Path) -> None:
    notebook = json.loads(path.read_text())
    assert any(c.get("outputs") for c in notebook["cells"] if c["cell_type"] == "code"), f"{path} was not executed"
    missing = unprinted_numbers(notebook)
    assert not missing, (
        f"{path.name}: numbers in the prose that no cell prints (cell index, number): {missing}. "
        "Print them from a cell (or render the committed results file that holds them), or drop them."
    )


# --- The built HTML reads offline: equations typeset by a bundled MathJax, no duplicated scripts.
# Runs on `make book-build`'s output (``_build/html``; ``ADLEARN_BUILT_BOOK`` points elsewhere).

BUILT = Path(os.environ.get("ADLEARN_BUILT_BOOK", BOOK.parent / "_build" / "html"))
BUILT_PAGES = sorted(BUILT.rglob("*.html")) if BUILT.is_dir() else []
SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.S)


@pytest.mark.skipif(not BUILT_PAGES, reason=f"no built book in {BUILT}: run `make book-build` first")
def test_built_pages_typeset_equations_offline() -> None:
    pages_with_maths = 0
    for page in BUILT_PAGES:
        html = page.read_text(encoding="utf-8")
        scripts = SCRIPT.findall(html)
        assert len(scripts) == len(set(scripts)), f"{page.name}: a script is included twice"
        sources = re.findall(r'<script[^>]*\bsrc="([^"]*mathjax[^"]*)"', html, re.I)
        if 'class="math' not in html:
            continue
        pages_with_maths += 1
        assert sources, f"{page.name} has equations but loads no MathJax"
        for source in sources:
            assert "://" not in source, f"{page.name} loads MathJax from the network: {source}"
            assert (page.parent / source.split("?")[0]).is_file(), f"{page.name}: {source} is missing"
    assert pages_with_maths, "no built page has equations: is this the book?"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_profile_is_an_explicit_choice(path: Path) -> None:
    """A GPU runtime must not silently pick the paper profile: the notebooks default to "book"."""
    setup = _source(next(c for c in _cells(path) if c["cell_type"] == "code"))
    assert 'adlearn.setup(os.environ.get("ADLEARN_PROFILE", "book"))' in setup
    assert '"paper"' in setup and "opt-in" in setup, "the setup cell states what the paper profile costs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_fit_the_page(path: Path) -> None:
    long = [line for c in _cells(path) if c["cell_type"] == "code" for line in _source(c).splitlines() if len(line) > 88]
    assert not long, f"{path.name}: {len(long)} code lines over 88 characters, e.g. {long[0]!r}"
