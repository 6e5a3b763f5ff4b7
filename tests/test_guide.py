"""Tests of egc_lite.guide: the degraded, classically coded guide image."""

from __future__ import annotations

import itertools

import pytest
import torch

from egc_lite.coding.classic import classic_available, encode_classic
from egc_lite.errors import BitstreamError, ParameterError
from egc_lite.guide import (
    GuideConfig,
    decode_guide,
    degrade,
    encode_guide,
    guide_quality_for_bpp,
    guide_size,
    upsample,
)
from egc_lite.metrics import psnr


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth (3, H, W) image in [0, 1] with mild noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy + 0.1 * torch.sin(9 * xx), 0.5 + 0.3 * torch.cos(5 * yy)])
    return (img + 0.02 * torch.randn(3, h, w, generator=g)).clamp(0, 1)


def test_config_validation():
    assert GuideConfig() == GuideConfig(8, "webp", 10)
    assert GuideConfig(codec="JPEG").codec == "jpeg"
    for bad in ({"factor": 0}, {"factor": 65}, {"factor": 2.5}, {"codec": "png"}, {"quality": 101}, {"quality": -1}):
        with pytest.raises(ParameterError):
            GuideConfig(**bad)


def test_degrade_shapes_odd_sizes():
    x = torch.rand(2, 3, 37, 53)
    assert degrade(x, 8).shape == (2, 3, 5, 7)
    assert degrade(x[0], 8).shape == (3, 5, 7)
    assert degrade(x, 1).shape == x.shape
    assert degrade(x, 64).shape == (2, 3, 1, 1)
    assert guide_size(37, 53, 8) == (5, 7)


def test_degrade_is_area_mean_and_replicates_edges():
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    expected = x.reshape(1, 3, 4, 4, 6, 4).mean(dim=(3, 5))
    torch.testing.assert_close(degrade(x, 4), expected)
    # Odd size: the last block is the mean over the replicated edge.
    y = torch.arange(5, dtype=torch.float64).view(1, 1, 1, 5).expand(1, 3, 5, 5).contiguous()
    out = degrade(y, 4)  # columns 0..3 -> 1.5; column 4 replicated 4x -> 4
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.5, 4.0], dtype=torch.float64))


def test_degrade_is_differentiable():
    x = torch.rand(1, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: degrade(t, 4), (x,))
    z = torch.rand(1, 3, 8, 8, requires_grad=True)
    degrade(z, 4).sum().backward()
    torch.testing.assert_close(z.grad, torch.full_like(z, 1 / 16))


def test_upsample_shapes_and_range():
    small = torch.rand(3, 5, 7)
    big = upsample(small, (37, 53))
    assert big.shape == (3, 37, 53) and big.min() >= 0 and big.max() <= 1
    big_exact = upsample(small.unsqueeze(0), (37, 53), factor=8)
    assert big_exact.shape == (1, 3, 37, 53)
    with pytest.raises(ParameterError, match="does not belong"):
        upsample(small, (64, 64), factor=8)
    # A constant image stays constant.
    const = torch.full((3, 4, 4), 0.3)
    torch.testing.assert_close(upsample(const, (32, 32), factor=8), torch.full((3, 32, 32), 0.3))


@pytest.mark.parametrize("codec", ["webp", "jpeg", "avif"])
def test_encode_decode_round_trip(codec):
    if not classic_available(codec):
        pytest.skip(f"{codec} not available in this Pillow")
    x = smooth_image(37, 53)
    cfg = GuideConfig(factor=8, codec=codec, quality=90)
    data = encode_guide(x, cfg)
    small, large = decode_guide(data, (37, 53), 8)
    assert small.shape == (3, 5, 7) and large.shape == (3, 37, 53)
    assert small.dtype == torch.float32 and 0 <= float(large.min()) and float(large.max()) <= 1
    assert psnr(degrade(x, 8), small) > 20  # 5x7 pixels: chroma subsampling dominates


def test_quality_monotone_in_bytes():
    x = smooth_image(96, 128)
    sizes = [len(encode_guide(x, GuideConfig(factor=2, quality=q))) for q in (0, 25, 50, 75, 100)]
    assert all(a <= b for a, b in itertools.pairwise(sizes)), sizes
    assert sizes[0] < sizes[-1]


def test_garbage_and_wrong_size_raise_bitstream_error():
    with pytest.raises(BitstreamError):
        decode_guide(b"\x00garbage" * 7, (37, 53), 8)
    with pytest.raises(BitstreamError):
        decode_guide(b"", (37, 53), 8)
    data = encode_guide(smooth_image(37, 53), GuideConfig(factor=8))
    with pytest.raises(BitstreamError, match="7x5"):
        decode_guide(data, (64, 64), 8)


def test_guide_quality_for_bpp_respects_target():
    x = smooth_image(128, 192)
    area = 128 * 192
    target = 0.1
    q, data = guide_quality_for_bpp(x, target, factor=4)
    assert len(data) * 8 / area <= target
    if q < 100:
        small = degrade(x, 4)
        from egc_lite.data import tensor_to_pil

        assert len(encode_classic(tensor_to_pil(small), "webp", q + 1)) * 8 / area > target
    # The returned bytes are the guide at that quality.
    assert data == encode_guide(x, GuideConfig(factor=4, codec="webp", quality=q))
    # Unreachable: the lowest quality comes back, over the target.
    q0, d0 = guide_quality_for_bpp(x, 0.001, factor=2)
    assert q0 == 0 and len(d0) * 8 / area > 0.001
