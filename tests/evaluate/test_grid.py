"""``egc sweep``: a grid file, papermill per point, one table, resumable, failures recorded, Dask."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from egc_lite.cli import main
from egc_lite.errors import ParameterError
from egc_lite.evaluate import grid
from egc_lite.evaluate.grid import RunOptions, expand, load_results, load_spec, run_sweep
from egc_lite.evaluate.record import MIME, read_records, record

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def kernels_import_this_checkout(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.fixture
def grid_file(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("a = 1\nb = 2\nlabel = 'x'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from egc_lite.evaluate.record import record\n"
        "record(total=a + b, label=label)\n"
        "assert a != 99, 'a must not be 99'\n"
        "record(prod=a * b)")]
    nbformat.write(nb, tmp_path / "toy.ipynb")
    (tmp_path / "toy.yaml").write_text(
        "notebook: toy.ipynb\nparameters: {label: fixed}\ngrid:\n  a: [1, 2]\n  b: [10, 20]\npoints:\n  - {a: 99, b: 1}\n"
        "  - {a: 1, b: 10}\n")
    return tmp_path / "toy.yaml"


def test_record_outside_a_kernel_and_read_back():
    assert record(x=1, y=2.5, z="s", w=None) == {"x": 1, "y": 2.5, "z": "s", "w": None}
    with pytest.raises(ParameterError):
        record(bad=[1, 2])
    nb = {"cells": [{"outputs": [{"data": {MIME: {"a": 1, "b": 2}}}]}, {"outputs": [{"data": {MIME: {"a": 3}}}]}]}
    assert read_records(nb) == {"a": 3, "b": 2}


def test_spec_and_points(grid_file):
    spec = load_spec(grid_file)
    assert spec.out == grid_file.parent / "toy" and spec.notebook.name == "toy.ipynb"
    points = expand(spec)
    assert len(points) == 5  # 2 x 2 grid + 1 explicit point; the duplicate of (1, 10) is dropped
    assert points[0].varying == {"a": 1, "b": 10} and points[0].parameters == {"label": "fixed", "a": 1, "b": 10}
    assert points[0].id.startswith("a=1_b=10-") and len({p.id for p in points}) == 5


@pytest.mark.parametrize("text, message", [
    ("grid: {a: [1]}", "'notebook' is missing"),
    ("notebook: nope.ipynb\ngrid: {a: [1]}", "not found"),
    ("notebook: toy.ipynb\ngrid: {a: 1}", "non-empty lists"),
    ("notebook: toy.ipynb", "'grid' and/or 'points'"),
    ("notebook: toy.ipynb\ngrid: {a: [1]}\nworkers: 3", "unknown keys"),
    ("notebook: [", "not valid YAML"),
])
def test_spec_mistakes(grid_file, text, message):
    bad = grid_file.parent / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ParameterError, match=message):
        load_spec(bad)


def test_sweep_table_failures_resume_and_plots(grid_file, monkeypatch):
    spec = load_spec(grid_file)
    calls = []
    real = grid.run_point

    def interrupted(task):  # Ctrl-C after the first point
        if calls:
            raise KeyboardInterrupt
        calls.append(task)
        return real(task)

    monkeypatch.setattr(grid, "run_point", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec)
    monkeypatch.setattr(grid, "run_point", real)
    r = run_sweep(spec, RunOptions(workers=2))
    assert (r.skipped, r.ran, r.failed) == (1, 4, 1)
    df = load_results(spec.out).set_index("point")
    assert len(df) == 5 and list(df.columns[:2]) == ["a", "b"]
    ok = df[df.status == "ok"]
    assert (ok.total == ok.a + ok.b).all() and (ok["prod"] == ok.a * ok.b).all() and (ok.label == "fixed").all()
    bad = df[df.status == "failed"].iloc[0]
    assert bad.a == 99 and "a must not be 99" in bad.error and bad.total == 100  # recorded before the failure
    assert (spec.out / "points" / f"{bad.name}.ipynb").is_file()
    assert json.loads((spec.out / "points" / f"{bad.name}.json").read_text())["status"] == "failed"
    assert (spec.out / "results.csv").is_file()
    assert (spec.out / "figures" / "sweep_toy.png").stat().st_size > 1000
    again = run_sweep(spec)
    assert (again.skipped, again.ran, again.failed) == (4, 1, 1)  # only the failed point runs again


def test_sweep_on_a_local_dask_cluster(grid_file, capfd):
    spec = load_spec(grid_file)
    r = run_sweep(spec, RunOptions(engine="dask", workers=2))
    assert (r.ran, r.failed) == (5, 1)
    assert "IPKernelApp" not in capfd.readouterr().err  # the kernels' start-up log stays off the terminal
    assert sorted(load_results(spec.out).status) == ["failed", "ok", "ok", "ok", "ok"]


def test_cli_sweep(grid_file, capsys):
    assert main(["sweep", str(grid_file), "--engine", "nope"]) == 2
    assert "--engine" in capsys.readouterr().err
    assert main(["sweep", str(grid_file.parent / "missing.yaml")]) == 2
    assert main(["sweep", str(grid_file), "--scheduler", "tcp://x:1"]) == 2  # needs --engine dask
    assert "--engine dask" in capsys.readouterr().err
