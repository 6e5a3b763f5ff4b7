"""``make book``: the notebooks executed and rendered as a static HTML site (nbconvert), with an index.

:func:`build_book` copies ``notebooks/`` into a work folder (so that the figures the notebooks write land
in ``<out>/figures`` and not in the repository's), executes every notebook there with its default
parameters (nbconvert's ``ExecutePreprocessor``, the ``python3`` kernel), writes one HTML page per
notebook (``HTMLExporter``, figures embedded) and ``index.html`` linking the pages and the figures each
notebook wrote. ``python -m egc_lite.evaluate.book OUT`` runs it; ``--copy-figures figures`` also copies
the figures of the run into the repository's ``figures/`` (how the committed ``figures/0N_*.png`` are made).
"""

from __future__ import annotations

import html
import shutil
import sys
import time
from pathlib import Path

__all__ = ["build_book"]


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def build_book(out: str | Path, notebooks_dir: str | Path, names: list[str] | None = None, timeout: int = 1800,
               kernel: str = "python3", execute: bool = True) -> Path:
    """Execute and render the notebooks of ``notebooks_dir`` (``names``: a subset, e.g. ``["00_tour.ipynb"]``)
    into ``out``; returns the path of ``index.html``. A notebook that fails stops the build (its error raised)."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor

    out, src = Path(out), Path(notebooks_dir)
    work = out / "_work"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    paths = sorted((work / "notebooks").glob("*.ipynb"))
    if names is not None:
        paths = [p for p in paths if p.name in set(names)]
    exporter = HTMLExporter()
    entries = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        if execute:
            ExecutePreprocessor(timeout=timeout, kernel_name=kernel).preprocess(nb, {"metadata": {"path": str(path.parent)}})
        seconds = time.perf_counter() - t0
        body, _ = exporter.from_notebook_node(nb)
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        entries.append((path.stem, _title(nb), seconds))
        print(f"{path.name}: {seconds:.0f} s -> {page}", flush=True)
    figures = out / "figures"
    if figures.exists():
        shutil.rmtree(figures)
    if (work / "figures").exists():
        shutil.copytree(work / "figures", figures)
    index = out / "index.html"
    index.write_text(_index(entries, figures), encoding="utf-8")
    return index


def _index(entries: list[tuple[str, str, float]], figures: Path) -> str:
    rows = []
    for stem, title, seconds in entries:
        figs = sorted(figures.glob(f"{stem[:2]}_*.png")) if figures.exists() else []
        thumbs = "".join(f'<a href="figures/{f.name}"><img src="figures/{f.name}" alt="{html.escape(f.name)}" '
                         f'title="{html.escape(f.name)}" style="height:90px;margin:2px"></a>' for f in figs)
        rows.append(f'<h2><a href="{stem}.html">{html.escape(title or stem)}</a></h2>'
                    f'<p>executed in {seconds:.0f} s; {len(figs)} figures</p><div>{thumbs}</div>')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>egc_lite notebooks</title></head>"
            "<body style='font-family:sans-serif;max-width:70em;margin:auto'><h1>egc_lite: the notebooks, executed</h1>"
            "<p>Every notebook run top to bottom with its default parameters by <code>make book</code>; "
            "the figures are the ones each run wrote.</p>" + "".join(rows) + "</body></html>")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m egc_lite.evaluate.book", description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder (index.html and one page per notebook)")
    p.add_argument("--notebooks", default="notebooks", help="folder of the notebooks (default: notebooks)")
    p.add_argument("--only", nargs="*", help="notebook file names to build (default: all)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p.add_argument("--copy-figures", metavar="DIR", help="also copy the figures the run wrote into DIR (e.g. figures)")
    a = p.parse_args(argv)
    index = build_book(a.out, a.notebooks, a.only, a.timeout)
    print(index)
    if a.copy_figures:
        dest = Path(a.copy_figures)
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((index.parent / "figures").glob("*.png")):
            shutil.copy2(f, dest / f.name)
            print(f"copied {f.name} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
