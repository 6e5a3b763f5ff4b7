"""Every notebook runs top to bottom, offline, on a CPU, with small parameters (papermill).

Notebooks are committed without outputs; each one is executed here in a temporary copy with
the parameters of :data:`NOTEBOOK_PARAMETERS` injected after its cell tagged ``parameters``.
A second test checks each notebook's structure without running it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
NAME_PATTERN = re.compile(r"^\d\d_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")
KERNEL_NAME = "python3"

#: Small CPU parameters for each notebook (every notebook needs an entry, ``{}`` if its defaults
#: are already small). They are injected by papermill after the notebook's ``parameters`` cell.
NOTEBOOK_PARAMETERS: dict[str, dict] = {
    # The shipped egc-tiny, the backbone students run on a CPU; tiny sizes keep each run short.
    "00_tour.ipynb": {"backbone": "egc-tiny", "save_figures": False},
    "01_textual_inversion.ipynb": {"backbone": "egc-tiny", "max_side": 64, "inversion_steps": 3, "steps": 2,
                                   "sf_values": [1, 2], "save_figures": False},
    "02_compression_guidance.ipynb": {"backbone": "egc-tiny", "max_side": 64, "inversion_steps": 3, "steps": 2,
                                      "sc_values": [0, 0.2], "sf_values": [1, 2], "n_samples": 2, "save_figures": False},
    # 03 and 04 train a DiffEIC model for train_steps steps when no shipped rate point fits the backbone.
    # 03 trains its own two-step model (the path taken where no rate point is shipped); 04 uses the shipped ones
    "03_entropy_coding.ipynb": {"backbone": "egc-tiny", "rate_points": "train", "max_side": 64, "train_steps": 2, "train_batch_size": 2,
                                "train_crop": 64, "fit_steps": 20, "fit_photos": 2, "save_figures": False},
    "04_control_module.ipynb": {"backbone": "egc-tiny", "max_side": 64, "train_steps": 2, "train_batch_size": 2,
                                "train_crop": 64, "steps": 2, "n_samples": 2, "save_figures": False},
    # 05 runs egc eval on one downscaled image (every codec, two-step samplers); 06 a two-point sweep of notebook 02
    "05_evaluation.ipynb": {"backbone": "egc-tiny", "n_images": 1, "max_side": 64, "classic": ["guide", "jpeg", "webp"],
                            "bpp_targets": [0.3], "diffeic_qualities": [1], "steps": 2, "inversion_steps": 3,
                            "gallery_bpp": 0.3, "crop": 48, "save_figures": False},
    "06_sweeps.ipynb": {"grid": {"sc": [0.3, 1.0]}, "workers": 2, "engine": "dask", "save_figures": False,
                        "fixed": {"backbone": "egc-tiny", "max_side": 64, "inversion_steps": 3, "steps": 2, "sc_values": [0.6],
                                  "sf_values": [1], "n_samples": 1, "save_figures": False}},
}

#: Notebooks that read Kodak images (they skip when ``$EGC_DATA/kodak`` is absent, since the
#: tests never download).
NEEDS_KODAK = {"00_tour.ipynb", "01_textual_inversion.ipynb", "02_compression_guidance.ipynb", "03_entropy_coding.ipynb",
               "04_control_module.ipynb", "05_evaluation.ipynb", "06_sweeps.ipynb"}


def _kodak_available() -> bool:
    data = os.environ.get("EGC_DATA")  # tests/conftest.py points it at ../shared/data when present
    return bool(data) and (Path(data) / "kodak" / "kodim01.png").exists()


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def _parameters_cells(nb: dict) -> list[dict]:
    return [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]


def _assigned_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_structure(path: Path) -> None:
    assert NAME_PATTERN.match(path.name), f"{path.name}: notebooks are named NN_topic.ipynb (e.g. 00_tour.ipynb)"
    nb = json.loads(path.read_text(encoding="utf-8"))  # valid JSON

    import nbformat

    nbformat.validate(nbformat.from_dict(nb))
    assert nb["metadata"].get("kernelspec", {}).get("name") == KERNEL_NAME, f"{path.name}: kernelspec name must be {KERNEL_NAME!r}"

    params = _parameters_cells(nb)
    assert len(params) == 1, f"{path.name}: expected exactly one cell tagged 'parameters', found {len(params)}"
    assert params[0]["cell_type"] == "code"

    for i, cell in enumerate(nb["cells"]):
        assert cell.get("id"), f"{path.name}: cell {i} has no id (nbformat 4.5 needs one; nbformat.validator.normalize adds it)"
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: cell {i} has stored outputs; strip them before committing"
            assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"

    assert path.name in NOTEBOOK_PARAMETERS, f"{path.name}: add its small CPU parameters to NOTEBOOK_PARAMETERS"
    defined = _assigned_names("".join(params[0]["source"]))
    unknown = set(NOTEBOOK_PARAMETERS[path.name]) - defined
    assert not unknown, f"{path.name}: NOTEBOOK_PARAMETERS sets {sorted(unknown)}, which its parameters cell does not define"


def test_kernel_is_this_interpreter() -> None:
    """papermill's ``python3`` kernel must be the interpreter running the tests (the venv's)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    exe = spec.argv[0]
    # jupyter_client replaces a bare "python"/"python3"/"python3.X" by sys.executable.
    generic = {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    assert exe in generic or Path(exe).absolute() == Path(sys.executable).absolute(), (
        f"kernel {KERNEL_NAME!r} ({spec.resource_dir}) runs {exe}, not {sys.executable}: "
        f"run `{sys.executable} -m ipykernel install --sys-prefix --name {KERNEL_NAME}`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.name in NEEDS_KODAK and not _kodak_available():
        pytest.skip("Kodak not found: set EGC_DATA to a folder holding kodak/ (the tests never download)")
    import papermill

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EGC_PROGRESS", "0")
    # the kernel imports this checkout's egc_lite, whichever copy the venv has installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOKS_DIR.parent), os.environ.get("PYTHONPATH")])))
    if os.environ.get("MPLBACKEND", "").lower() == "agg":
        monkeypatch.delenv("MPLBACKEND")  # with Agg, %matplotlib inline figures are silently dropped
    papermill.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters=NOTEBOOK_PARAMETERS.get(path.name, {}),
        kernel_name=KERNEL_NAME,
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=False,
        log_output=False,
        start_timeout=120,
        execution_timeout=600,
    )
