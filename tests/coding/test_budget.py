"""The decode budget: its setting, and the encoder's refusal to write a file this machine could not open."""

from __future__ import annotations

import pytest

from egc_lite.coding.budget import GIB, check_decode, check_encode, decode_budget_bytes, largest_fitting_megapixels
from egc_lite.errors import BitstreamError, ImageError


def per_pixel(h: int, w: int) -> int:
    return 1000 * h * w  # a codec needing 1000 bytes a pixel


def test_the_budget_is_the_environment_setting(monkeypatch):
    monkeypatch.setenv("EGC_DECODE_BUDGET_GB", "2")
    assert decode_budget_bytes() == 2 * GIB
    monkeypatch.delenv("EGC_DECODE_BUDGET_GB")
    assert 0 < decode_budget_bytes() <= 12 * GIB


def test_the_encoder_refuses_what_the_decoder_would_refuse_and_says_what_fits(monkeypatch):
    monkeypatch.setenv("EGC_DECODE_BUDGET_GB", "1")
    fits = largest_fitting_megapixels(per_pixel, 3000, 4000)
    assert fits == pytest.approx(GIB / 1000 / 1e6, rel=0.01)
    check_encode(per_pixel, 750, 1000, "a codec")  # 0.75 Mpx: 0.7 GiB
    with pytest.raises(ImageError, match=r"4000x3000 photo .* 1\.1 megapixels or less.*EGC_DECODE_BUDGET_GB"):
        check_encode(per_pixel, 3000, 4000, "a codec")
    with pytest.raises(BitstreamError, match="budget"):
        check_decode(per_pixel(3000, 4000), "this file")
