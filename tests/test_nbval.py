"""``pytest --nbval notebooks/`` (how the kit's users run notebooks in CI) keeps working.

Running every notebook with its default parameters takes minutes (see the README), so this runs
the documented command on one notebook, 00_tour (about 40 s here), in a copy of the notebooks
folder so that its figures land in the test's folder and not in the repository's figures/.
tests/test_notebooks.py runs every notebook with small parameters through papermill.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_kodak

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = "00_tour.ipynb"


@pytest.mark.slow
@requires_kodak
def test_pytest_nbval_runs_a_notebook_with_its_default_parameters(tmp_path: Path) -> None:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(NOTEBOOKS_DIR / NOTEBOOK, notebooks / NOTEBOOK)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # Agg would drop the figures silently
    env.update(HF_HUB_OFFLINE="1", EGC_PROGRESS="0")
    r = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q", "-p", "no:cacheprovider", f"notebooks/{NOTEBOOK}"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
    figures = sorted(p.name for p in (tmp_path / "figures").glob("00_*.png"))
    assert figures, "the notebook ran but wrote no figure (save_figures defaults to True)"
