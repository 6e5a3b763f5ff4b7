"""``make book`` on a one-cell notebook: executed, rendered, indexed with its figure, outside the source folder."""

from __future__ import annotations

from pathlib import Path

import nbformat

from egc_lite.evaluate.book import build_book


def test_build_book(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    src = tmp_path / "notebooks"
    src.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# 07 · A test page\n\nSome text."),
                nbformat.v4.new_code_cell("from pathlib import Path\nimport matplotlib.pyplot as plt\n"
                                          "fig, ax = plt.subplots(); ax.plot([1, 2]); Path('../figures').mkdir(exist_ok=True)\n"
                                          "fig.savefig('../figures/07_line.png'); print(6 * 7)")]
    nbformat.write(nb, src / "07_test.ipynb")
    out = tmp_path / "book"
    index = build_book(out, src)
    page = (out / "07_test.html").read_text()
    assert "42" in page and "A test page" in page  # executed, rendered
    text = index.read_text()
    assert 'href="07_test.html"' in text and "figures/07_line.png" in text
    assert (out / "figures" / "07_line.png").is_file()
    assert not (tmp_path / "figures").exists(), "figures must land in the book's folder, not beside the sources"
    assert not any(c.get("outputs") for c in nbformat.read(src / "07_test.ipynb", as_version=4).cells if c.cell_type == "code")
