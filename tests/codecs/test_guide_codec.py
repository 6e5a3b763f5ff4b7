"""The guide codec end to end: rate targets (header included), round trips, bad files."""

from __future__ import annotations

import pytest
import torch

from egc_lite.codecs import CompressOptions, decompress, make_codec
from egc_lite.coding.bitstream import decode_bitstream, encode_bitstream
from egc_lite.errors import BitstreamError, ParameterError
from egc_lite.metrics import psnr


@pytest.fixture
def photo():
    g = torch.Generator().manual_seed(3)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(192, 256), mode="bicubic")
    return (base + 0.03 * torch.randn(base.shape, generator=g))[0].clamp(0, 1)


@pytest.mark.parametrize("target", [0.05, 0.1, 0.3])
def test_target_rate_met_with_the_whole_file(photo, target):
    bs = make_codec("guide").compress(photo, CompressOptions(bpp=target))
    data = encode_bitstream(bs)
    assert 8 * len(data) / (192 * 256) <= target
    assert bs.bpp() == 8 * len(data) / (192 * 256)


def test_more_bits_better_quality(photo):
    codec = make_codec("guide")
    scores = [psnr(codec.decompress(codec.compress(photo, CompressOptions(bpp=b))), photo) for b in (0.05, 0.2, 0.8)]
    assert scores[0] < scores[1] < scores[2]


def test_round_trip_through_bytes_is_exact(photo):
    codec = make_codec("guide")
    bs = codec.compress(photo, CompressOptions(quality=30))
    a = decompress(decode_bitstream(encode_bitstream(bs)))
    assert a.shape == photo.shape and torch.equal(a, codec.decompress(bs))


def test_errors(photo):
    codec = make_codec("guide")
    with pytest.raises(ParameterError):
        codec.compress(photo, CompressOptions(bpp=0.1, quality=3))
    with pytest.raises(ParameterError):
        make_codec("nope")
    bs = codec.compress(photo, CompressOptions(quality=10))
    import dataclasses

    with pytest.raises(BitstreamError):
        codec.decompress(dataclasses.replace(bs, params={"factor": 999}))
    with pytest.raises(BitstreamError):
        codec.decompress(dataclasses.replace(bs, sections={}))
    with pytest.raises(BitstreamError):
        codec.decompress(dataclasses.replace(bs, height=bs.height * 2))
