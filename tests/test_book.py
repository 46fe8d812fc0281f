"""Notebook hygiene: what every chapter must be before it is committed and published."""

from __future__ import annotations

import json
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
    assert on_disk == listed, f"notebooks not in _toc.yml: {on_disk - listed}; missing files: {listed - on_disk}"


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
