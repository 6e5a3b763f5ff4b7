"""Tests of egc_lite.coding.classic: JPEG / WebP / AVIF through Pillow at target rates."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from egc_lite.coding.classic import (
    CLASSIC_CODECS,
    QUALITY_RANGE,
    classic_available,
    classic_unavailable_reason,
    compress_at_bpp,
    decode_classic,
    encode_classic,
)
from egc_lite.errors import BitstreamError, ParameterError


def natural_image(h: int = 128, w: int = 128, seed: int = 0) -> Image.Image:
    """A smooth natural-ish RGB image: gradients, a disc, stripes and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.08).astype(np.float64)
    r = 0.2 + 0.6 * xx + 0.2 * disc
    g = 0.3 + 0.4 * yy * (1 - disc) + 0.1 * np.sin(25 * xx)
    b = 0.5 + 0.3 * np.cos(7 * yy + 3 * xx) - 0.2 * disc
    img = np.stack([r, g, b], -1) + 0.03 * rng.standard_normal((h, w, 3))
    return Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))


def _codec_or_skip(codec: str) -> str:
    if not classic_available(codec):
        pytest.skip(classic_unavailable_reason(codec))
    return codec


@pytest.mark.parametrize("codec", CLASSIC_CODECS)
def test_round_trip_and_size(codec):
    _codec_or_skip(codec)
    img = natural_image(40, 56)
    data = encode_classic(img, codec, 50)
    out = decode_classic(data)
    assert out.mode == "RGB" and out.size == (56, 40)
    err = np.abs(np.asarray(out, dtype=np.float64) - np.asarray(img, dtype=np.float64)).mean()
    assert err < 20


@pytest.mark.parametrize("codec", CLASSIC_CODECS)
def test_bytes_fall_with_quality(codec):
    _codec_or_skip(codec)
    img = natural_image()
    sizes = [len(encode_classic(img, codec, q)) for q in (90, 60, 30, 5)]
    assert all(a >= b for a, b in itertools.pairwise(sizes)), sizes
    assert sizes[0] > sizes[-1]


def test_no_metadata_overhead():
    img = natural_image(32, 32)
    img.info["exif"] = b"Exif\x00\x00" + b"x" * 2000
    img.info["icc_profile"] = b"y" * 3000
    for codec in CLASSIC_CODECS:
        if classic_available(codec):
            assert len(encode_classic(img, codec, 10)) < 1500, codec


@pytest.mark.parametrize("codec", CLASSIC_CODECS)
def test_compress_at_bpp_lands_at_or_below_target(codec):
    _codec_or_skip(codec)
    img = natural_image()
    target = 1.0
    res = compress_at_bpp(img, codec, target)
    assert res.reached_target and res.bpp <= target
    assert res.num_bytes * 8 / (128 * 128) == pytest.approx(res.bpp)
    assert res.image.size == img.size and res.image.mode == "RGB"
    if res.quality < QUALITY_RANGE[codec][1]:  # the next quality must overshoot
        assert len(encode_classic(img, codec, res.quality + 1)) * 8 / (128 * 128) > target
    assert str(res.quality) in res.note


def test_jpeg_cannot_reach_tiny_rate():
    img = natural_image(256, 256)
    res = compress_at_bpp(img, "jpeg", 0.02)
    assert not res.reached_target
    assert res.quality == QUALITY_RANGE["jpeg"][0]
    assert res.bpp > 0.02
    assert res.note.startswith("jpeg cannot go below") and "256x256" in res.note and "quality 1" in res.note


def test_unknown_codec_and_bad_arguments():
    img = natural_image(16, 16)
    with pytest.raises(ParameterError, match="unknown classic codec"):
        encode_classic(img, "png", 50)
    with pytest.raises(ParameterError):
        compress_at_bpp(img, "bpg", 0.1)
    with pytest.raises(ParameterError):
        classic_available("jxl")
    with pytest.raises(ParameterError):
        encode_classic(img, "jpeg", 101)
    with pytest.raises(ParameterError):
        compress_at_bpp(img, "jpeg", 0.0)


def test_garbage_and_truncated_data_raise_bitstream_error():
    with pytest.raises(BitstreamError):
        decode_classic(b"")
    with pytest.raises(BitstreamError):
        decode_classic(b"definitely not an image" * 4)
    png = io.BytesIO()
    natural_image(16, 16).save(png, format="PNG")
    with pytest.raises(BitstreamError):  # a real image, but not a codec of this module
        decode_classic(png.getvalue())
    data = encode_classic(natural_image(), "webp", 50)
    with pytest.raises(BitstreamError):
        decode_classic(data[: len(data) // 2])


def test_missing_avif_support_is_reported_with_fix(monkeypatch):
    from egc_lite.coding import classic
    from egc_lite.guide import GuideConfig

    real_check = classic.features.check
    monkeypatch.setattr(classic.features, "check", lambda name: False if name == "avif" else real_check(name))
    assert not classic_available("avif")
    reason = classic_unavailable_reason("avif")
    assert "avif" in reason and "pip install" in reason
    with pytest.raises(ParameterError, match="not supported by the installed Pillow"):
        encode_classic(natural_image(16, 16), "avif", 10)
    with pytest.raises(ParameterError, match="not supported"):
        GuideConfig(codec="avif")
