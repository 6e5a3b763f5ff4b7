"""``egc demo``: its input (Kodak 23 when on disk, else the photo shipped in the package) and an offline run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from egc_lite import data
from egc_lite.data import DEMO_IMAGE, load_image, save_image
from egc_lite.evaluate.demo import demo_input


def test_the_shipped_photo_is_small_documented_and_codec_friendly() -> None:
    assert DEMO_IMAGE.is_file() and DEMO_IMAGE.suffix == ".png"
    assert DEMO_IMAGE.stat().st_size < 300_000
    with Image.open(DEMO_IMAGE) as im:
        assert im.mode == "RGB" and im.width % 64 == 0 and im.height % 64 == 0
    notes = (DEMO_IMAGE.parent / "README.md").read_text(encoding="utf-8")
    assert DEMO_IMAGE.name in notes and "CC0" in notes and "scikit-image" in notes


def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the demo must not download")

    monkeypatch.setattr(data, "_download", fail)


def test_demo_input_prefers_kodak_23_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smooth_image) -> None:
    _no_download(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("EGC_DATA", str(tmp_path / "data"))
    x, stem, source = demo_input()
    assert stem == DEMO_IMAGE.stem and DEMO_IMAGE.name in source and x.shape == load_image(DEMO_IMAGE).shape
    k23 = smooth_image(64, 96, seed=23)
    save_image(k23, tmp_path / "data" / "kodak" / "kodim23.png")
    x, stem, source = demo_input()
    assert stem == "kodim23" and "Kodak" in source and x.shape == (3, 64, 96)


def test_demo_runs_offline_on_the_shipped_photo(tmp_path: Path) -> None:
    """A fresh machine: no EGC_DATA, an empty home (no Kodak cache), no hub; the guide codec for speed."""
    env = {k: v for k, v in os.environ.items() if k not in {"EGC_DATA", "XDG_CACHE_HOME"}}
    env.update(HOME=str(tmp_path / "home"), EGC_PROGRESS="0", HF_HUB_OFFLINE="1")
    out = tmp_path / "fig"
    r = subprocess.run([sys.executable, "-m", "egc_lite.cli", "demo", "--codec", "guide", "--out", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.startswith(DEMO_IMAGE.name) and "bpp" in r.stdout
    assert (out / "demo.png").is_file() and (out / f"{DEMO_IMAGE.stem}.guide.egc").is_file()
    assert not (tmp_path / "home" / ".cache" / "egc_lite" / "kodak").exists()


def test_the_comparison_with_the_guide_says_what_the_numbers_say() -> None:
    """egc demo's verdict follows the scores: detail bought with colour fidelity is called the decoder's own,
    detail with the guide's colours kept is said so, and no detail is not claimed."""
    from egc_lite.evaluate.demo import compare_with_guide

    guide = {"psnr": 28.5, "lf": 36.0, "sharpness": 0.3}
    painter = compare_with_guide({"psnr": 21.2, "lf": 31.0, "sharpness": 1.9}, guide)
    assert "6.3x" in painter and "5.0 dB" in painter and "its own, not the photograph's" in painter and "prefers the guide" in painter
    faithful = compare_with_guide({"psnr": 27.0, "lf": 35.8, "sharpness": 0.9}, guide)
    assert "3.0x" in faithful and "colours and layout kept" in faithful and "not the photograph's" not in faithful
    blurry = compare_with_guide({"psnr": 29.0, "lf": 36.5, "sharpness": 0.3}, guide)
    assert "no sharper" in blurry and "higher PSNR" in blurry
