"""The egc command line: compress, info, decompress, one-line errors with non-zero status."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from egc_lite.cli import main
from egc_lite.data import load_image, save_image


@pytest.fixture
def image_file(tmp_path, smooth_image):
    x = smooth_image(96, 144, grid=(8, 12), seed=4)
    path = tmp_path / "in.png"
    save_image(x, path)
    return path


def test_compress_info_decompress(tmp_path, image_file, capsys):
    out = tmp_path / "a.egc"
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "guide", "--bpp", "0.2"]) == 0
    assert "bpp" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "guide" in info and "144" in info
    png = tmp_path / "b.png"
    assert main(["decompress", str(out), "-o", str(png)]) == 0
    assert load_image(png).shape == (3, 96, 144)


def test_textinv_through_cli_with_tiny_backbone(tmp_path, image_file, capsys):
    out = tmp_path / "t.egc"
    args = ["--backbone", "tiny-random", "--device", "cpu", "--no-progress"]
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "textinv", "--bpp", "0.3", "--steps", "2",
                 "--inversion-steps", "2", "--seed", "9"] + args) == 0
    assert main(["decompress", str(out), "-o", str(tmp_path / "t.png"), "--samples", "2"] + args) == 0
    assert (tmp_path / "t_0.png").exists() and (tmp_path / "t_1.png").exists()
    assert main(["info", str(out)]) == 0
    assert "seed" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.egc"], "missing.egc"),
    (["compress", "missing.png", "-o", "x.egc"], "missing.png"),
    (["compress", "{img}", "-o", "x.egc", "--codec", "zip"], "unknown codec"),
    (["compress", "{img}", "-o", "x.egc", "--bpp", "-1"], "--bpp"),
    (["decompress", "{img}", "-o", "x.png"], "not an egc_lite file"),
])
def test_user_mistakes_are_one_line(tmp_path, image_file, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{img}", str(image_file)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_file_in_a_subprocess_exits_non_zero(tmp_path, image_file):
    out = tmp_path / "a.egc"
    assert main(["compress", str(image_file), "-o", str(out), "--codec", "guide", "--bpp", "0.2"]) == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x10
    out.write_bytes(bytes(data))
    env = {**os.environ, "EGC_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "egc_lite.cli", "decompress", str(out), "-o", str(tmp_path / "x.png")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("egc: error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()
