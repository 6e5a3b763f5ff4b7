"""Exact tiling of convolution-only networks: the receptive field read off the layers, windows that cover the
input, and window-by-window outputs equal to the whole-image output (autoencoder both ways, codec B's analysis)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from egc_lite.models.autoencoder import decode_tiled, encode_tiled, vae_latent
from egc_lite.models.taef2 import TAEF2
from egc_lite.models.tiling import TilingConfig, is_tileable, receptive_radius, run_tiled, windows
from egc_lite.models.tiny import TEST_CONFIG, TEST_TINY_AE_CONFIG, build_vae


def test_receptive_radius_of_a_conv_chain_counts_each_kernel_at_its_stride():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 5, stride=2, padding=2),
                        nn.Conv2d(4, 4, 3, padding=1))
    assert receptive_radius(net) == (1 + 2 + 1 * 2, 2)  # the last 3x3 sees +-1 output pixel = +-2 input pixels
    up = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Upsample(scale_factor=2), nn.Conv2d(4, 4, 3, padding=1))
    assert receptive_radius(up) == (1.5, 0.5)


def test_global_layers_are_not_tileable():
    assert not is_tileable(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)))
    assert not is_tileable(nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1)))
    assert not is_tileable(TAEF2().encoder)  # taef2's pooled blocks see the whole image
    assert is_tileable(build_vae(TEST_TINY_AE_CONFIG).decoder)
    assert not is_tileable(build_vae(TEST_CONFIG).decoder)  # AutoencoderKL: GroupNorm and attention


@pytest.mark.parametrize("size,core,align", [(100, 32, 8), (64, 64, 8), (17, 5, 1), (40, 3, 8)])
def test_windows_cover_the_input_once_on_the_grid(size, core, align):
    spans = list(windows(size, core, align))
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))  # contiguous, no overlap
    assert all(a % align == 0 for a, _ in spans)


def test_tiled_autoencoder_equals_the_whole_image_pass():
    torch.manual_seed(0)
    vae = build_vae(TEST_TINY_AE_CONFIG).eval()
    small = TilingConfig(core=48, min_side=40)  # 3 x 2 windows on a 136 x 96 image
    x = torch.rand(1, 3, 136, 96) * 2 - 1
    with torch.no_grad():
        z = vae_latent(vae, x)
        assert torch.allclose(encode_tiled(vae, x, small), z, atol=1e-5)
        out = vae.decode(z).sample
        assert torch.allclose(decode_tiled(vae, z, small), out, atol=1e-5)
        assert torch.equal(encode_tiled(vae, x), z)  # below min_side: the whole image, bit for bit


def test_tiled_analysis_of_codec_b_equals_the_whole_image_pass(tiny_backbone):
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel

    g_a1 = DiffEICModel.for_backbone(DiffEICConfig(N=16, M=24), tiny_backbone, seed=0).compressor.g_a1.eval()
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        whole = g_a1(x)
        tiled = run_tiled(g_a1, x, receptive_radius(g_a1)[0], 1 / 8, 8, TilingConfig(core=64, min_side=64))
    assert tiled.shape == whole.shape and torch.allclose(tiled, whole, atol=1e-5)


def test_a_function_of_another_stride_is_refused():
    with pytest.raises(ValueError, match="scales by"):
        run_tiled(lambda t: t[..., ::2, ::2], torch.zeros(1, 1, 64, 64), 0, 1.0, 1, TilingConfig(core=16, min_side=8))
