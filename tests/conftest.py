"""Shared fixtures: offline, no progress bars, tiny seeded models, the shared data folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EGC_PROGRESS", "0")
# the user's priors and rate points (~/.cache/egc_lite) never leak into the tests
_USER_FILES = tempfile.mkdtemp(prefix="egc-user-")
os.environ.setdefault("EGC_PRIORS", os.path.join(_USER_FILES, "priors"))
os.environ.setdefault("EGC_DIFFEIC_WEIGHTS", os.path.join(_USER_FILES, "diffeic"))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "EGC_DATA" not in os.environ and (SHARED_DATA / "kodak").is_dir():
    os.environ["EGC_DATA"] = str(SHARED_DATA)

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def kodak_available() -> bool:
    data = os.environ.get("EGC_DATA")
    return bool(data) and (Path(data) / "kodak" / "kodim01.png").exists()


requires_kodak = pytest.mark.skipif(not kodak_available(), reason="Kodak not found: set EGC_DATA to a folder holding kodak/")


@pytest.fixture(scope="session")
def tiny_backbone():
    """A seeded random backbone of SD's classes (shared; tests must not modify it)."""
    from egc_lite.backbone import tiny_random_backbone

    return tiny_random_backbone(seed=0, device="cpu")


@pytest.fixture(scope="session")
def tiny_by_precision():
    """The tiny random backbone of ``tiny_backbone`` twice, with inference precision ``"fp32"`` and ``"bf16"``
    chosen explicitly (whatever this CPU or ``EGC_PRECISION`` say): ``{"fp32": ..., "bf16": ...}``."""
    from egc_lite.backbone import tiny_random_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("EGC_PRECISION", raising=False)
        return {p: tiny_random_backbone(seed=0, device="cpu", precision=p) for p in ("fp32", "bf16")}


@pytest.fixture
def photo_folder(tmp_path):
    """``tmp_path/photos`` holding two seeded random 112x80 "photos": the folder the training code reads."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(2):
        Image.fromarray((torch.rand(80, 112, 3, generator=g) * 255).byte().numpy()).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """A tiny random model saved in Stable Diffusion's folder layout, text encoder included."""
    from egc_lite.models.tiny import write_tiny_sd_folder

    return write_tiny_sd_folder(tmp_path_factory.mktemp("tiny-sd") / "sd", seed=3)


def _smooth_random(h: int, w: int, grid: tuple[int, int], seed: int, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, *grid, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic").clamp(0, 1)


@pytest.fixture(scope="session")
def smooth_image():
    """Factory: a deterministic smooth RGB image, a seeded coarse random grid upsampled bicubically.

    ``smooth_image(h, w, grid=(gh, gw), seed=s)`` gives (3, h, w); with ``batch=n``, (n, 3, h, w).
    """

    def make(h: int, w: int, grid: tuple[int, int] = (6, 8), seed: int = 0, batch: int | None = None) -> torch.Tensor:
        x = _smooth_random(h, w, grid, seed, batch or 1)
        return x if batch else x[0]

    return make
