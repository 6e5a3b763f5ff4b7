"""Rate-distortion tables and the reference rows every benchmark compares against."""

from __future__ import annotations

import torch
from PIL import Image

from egc_lite.baselines import classic_available
from egc_lite.evaluate import ResultTable, Row, add_reference_rows, score


def test_score_rounds_to_eight_bits_and_measures_quality(smooth_image):
    x = smooth_image(64, 96)
    exact = score(x, x, bpp=0.1)
    assert exact.psnr > 50 and exact.ms_ssim > 0.999
    noisy = score((x + 0.05 * torch.randn_like(x)).clamp(0, 1), x, bpp=0.1)
    assert noisy.psnr < exact.psnr and noisy.ms_ssim < exact.ms_ssim


def test_table_groups_means_and_misses():
    t = ResultTable()
    t.add("0.05", "a", Row(bpp=0.04, psnr=20.0, ms_ssim=0.8, enc_s=1.0, dec_s=3.0))
    t.add("0.05", "a", Row(bpp=0.06, psnr=22.0, ms_ssim=0.9, enc_s=3.0, dec_s=5.0, missed=True))
    t.add("0.05", "webp", Row(bpp=0.07, psnr=25.0, ms_ssim=0.95, missed=True))
    lines = t.format().splitlines()
    assert len(lines) == 4
    assert lines[2] == "| 0.05 | a | 0.0500 | 21.00 | 0.8500 | 2.00 | 4.00 | 1/2 |"
    assert lines[3] == "| 0.05 | webp | 0.0700 | 25.00 | 0.9500 |  |  | 1/1 |"


def test_reference_rows_stay_near_the_target(smooth_image, tmp_path):
    x = smooth_image(128, 192)
    t = ResultTable()
    outs = add_reference_rows(t, "0.3", x, 0.3)
    assert "guide" in outs and all(y.shape == x.shape for y in outs.values())
    for name in ("webp", "avif"):
        assert (name in outs) == classic_available(name)
    for (rate, _name), rows in t.rows.items():
        assert rate == "0.3" and len(rows) == 1
        assert rows[0].missed or rows[0].bpp <= 0.3
    png = t.save_side_by_side("0.3", x, outs, tmp_path / "figs" / "side.png")
    with Image.open(png) as im:
        assert im.width >= (1 + len(outs)) * 192 and im.height > 128
    assert t.format("title").splitlines()[0] == "title"
