"""``pytest --nbval notebooks/`` (how the kit's users run notebooks in CI) passes at the notebooks' own defaults.

Every notebook runs with its default parameters (the sizes and step counts a student sees), each in
a copy of the notebooks folder so that its figures land in the test's folder and not in the
repository's figures/. With Kodak on disk (``EGC_DATA``) all of them run; one more run of notebook 03
has no ``EGC_DATA``, no training photos and an empty download cache, as on a fresh clone with nothing
beside it: it passes only if the notebook's fallback to the photo shipped in the package works.
The README gives each notebook's time. tests/test_notebooks.py runs every notebook with small
parameters through papermill.
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
NOTEBOOKS = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
#: The notebook run without any data beside the clone (it falls back on the shipped photo).
WITHOUT_DATA = "03_entropy_coding.ipynb"


def _run_nbval(tmp_path: Path, notebook: str, env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    notebooks = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, notebooks, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # Agg would drop the figures silently
    env.update(HF_HUB_OFFLINE="1", EGC_PROGRESS="0")
    # the kernel imports this checkout's egc_lite, whichever copy the venv has installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NOTEBOOKS_DIR.parent), os.environ.get("PYTHONPATH")]))
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q", "-p", "no:cacheprovider", f"notebooks/{notebook}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1200)


def _check(r: subprocess.CompletedProcess, tmp_path: Path, notebook: str) -> None:
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
    prefix = notebook[:2]
    figures = sorted(p.name for p in (tmp_path / "figures").glob(f"{prefix}_*.png"))
    assert figures, "the notebook ran but wrote no figure (save_figures defaults to True)"


@pytest.mark.slow
@requires_kodak
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_pytest_nbval_runs_every_notebook_with_its_default_parameters(tmp_path: Path, notebook: str) -> None:
    _check(_run_nbval(tmp_path, notebook, {}), tmp_path, notebook)


@pytest.mark.slow
def test_a_notebook_runs_at_its_defaults_without_any_data(tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    r = _run_nbval(tmp_path, WITHOUT_DATA, {"EGC_DATA": None, "EGC_TRAIN_DATA": None, "XDG_CACHE_HOME": str(cache)})
    _check(r, tmp_path, WITHOUT_DATA)
    assert not any(cache.rglob("*.png")), "the notebook downloaded images instead of using the shipped photo"
