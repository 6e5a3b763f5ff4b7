"""Tiled denoising: the layout, the blend, that untiled sizes run as before, determinism, and both codecs decoding
large latents window by window (tiles forced small on tiny random backbones)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from egc_lite.errors import ParameterError
from egc_lite.sampling.ddim import SamplerConfig, ddim_sample, unet_denoiser
from egc_lite.sampling.tiled import (
    DEFAULT_TILES,
    TileConfig,
    blend_weights,
    current_tiles,
    latent_multiple,
    needs_tiling,
    split_side,
    tile_windows,
    tiled_denoiser,
    tiled_unet_denoiser,
    use_tiles,
    window_weights,
)

SIZES = [(8, 8), (16, 12), (40, 28), (36, 60), (126, 70), (504, 376)]


@pytest.mark.parametrize("h, w", SIZES)
@pytest.mark.parametrize("tile, overlap, multiple", [(16, 4, 4), (12, 6, 2), (128, 32, 4), (32, 0, 2)])
def test_windows_cover_the_latent_align_and_overlap(h, w, tile, overlap, multiple):
    if h % multiple or w % multiple:
        pytest.skip("the UNet takes no such latent")
    windows = tile_windows(h, w, tile, overlap, multiple)
    covered = torch.zeros(h, w, dtype=torch.int32)
    for y0, y1, x0, x1 in windows:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert y1 - y0 <= tile and x1 - x0 <= tile
        assert all(v % multiple == 0 for v in (y0, y1, x0, x1))
        covered[y0:y1, x0:x1] += 1
    assert int(covered.min()) >= 1
    for side, n in ((split_side(h, tile, overlap, multiple), h), (split_side(w, tile, overlap, multiple), w)):
        assert side[0][0] == 0 and side[-1][1] == n  # first and last flush with the borders
        assert len({b - a for a, b in side}) == 1  # one window size per side
        for (a, b), (c, _) in zip(side, side[1:]):
            assert a < c and b - c >= overlap
        if n <= tile:
            assert side == [(0, n)]
        else:  # no more windows than needed: one fewer could not keep the overlaps
            assert (len(side) - 1) * (tile - overlap) + overlap < n + tile


def test_the_default_layout_leaves_photos_up_to_1024_px_whole():
    assert DEFAULT_TILES == TileConfig(128, 32) and current_tiles() == DEFAULT_TILES
    assert not needs_tiling(1024 // 8, 768 // 8)
    assert tile_windows(128, 96, multiple=4) == [(0, 128, 0, 96)]
    assert needs_tiling(1088 // 8, 64)
    assert len(tile_windows(504, 376, multiple=4)) == 5 * 4  # a 4000x3000 photo (codec B's padding)


def test_bad_layouts_are_refused():
    with pytest.raises(ParameterError, match="multiple of 4"):
        TileConfig(30, 8).validate(4)
    with pytest.raises(ParameterError, match="overlap"):
        TileConfig(32, 20).validate(4)
    with pytest.raises(ParameterError, match="not a multiple"):
        split_side(42, 16, 4, 4)


@pytest.mark.parametrize("h, w", [(40, 28), (36, 60), (16, 12)])
def test_blend_weights_sum_to_one_and_never_vanish(h, w):
    windows = tile_windows(h, w, 16, 4, 4)
    shares = blend_weights(h, w, windows)
    assert torch.allclose(sum(shares), torch.ones(h, w), atol=1e-6)
    for (y0, y1, x0, x1), wgt, share in zip(windows, window_weights(windows), shares):
        assert wgt.shape == (y1 - y0, x1 - x0) and float(wgt.min()) > 0 and float(wgt.max()) <= 1
        assert float(share[y0:y1, x0:x1].min()) > 0
        outside = torch.ones(h, w, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert int(torch.count_nonzero(share[outside])) == 0
    # a point that only one window covers takes that window's prediction alone; the ramps are smooth
    only_first = shares[0][0, 0]
    assert float(only_first) == 1.0
    if len(windows) > 1:
        row = shares[0][0]
        assert torch.all(row[:-1] >= row[1:])  # falls monotonically across the overlap


def _spy(fn, seen: list):
    def denoise(z, t, cond, window):
        seen.append(window)
        return fn(z, t, cond, window)

    return denoise


@pytest.mark.parametrize("h, w", [(40, 28), (24, 36)])
def test_a_pointwise_denoiser_gives_exactly_the_untiled_result(h, w):
    z = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(0))
    t, cond = torch.tensor([10, 10]), torch.zeros(2, 3, 8)
    seen: list = []
    tiled = tiled_denoiser(_spy(lambda z, t, c, win: z * 2 + torch.sin(z), seen), 4, TileConfig(16, 4))(z, t, cond)
    assert len(seen) == len(tile_windows(h, w, 16, 4, 4)) > 1
    assert torch.equal(tiled, z * 2 + torch.sin(z))


def test_the_blend_is_a_weighted_mean_of_the_windows():
    """Each window predicts its own index: the blend stays between the windows' values, equals a window's index where
    it alone covers, and equals the shares' weighted sum everywhere."""
    h, w = 40, 28
    windows = tile_windows(h, w, 16, 4, 4)
    index = {win: float(i) for i, win in enumerate(windows)}
    out = tiled_denoiser(lambda z, t, c, win: torch.full_like(z, index[win]), 4, TileConfig(16, 4))(
        torch.zeros(1, 1, h, w), torch.tensor([1]), torch.zeros(1, 1, 1))
    expected = sum(i * s for i, s in enumerate(blend_weights(h, w, windows)))
    assert torch.allclose(out[0, 0], expected, atol=1e-5)
    assert float(out.min()) == 0 and float(out.max()) == len(windows) - 1


def test_a_latent_within_one_tile_runs_the_window_denoiser_once_on_the_whole(tiny_backbone):
    z = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500])
    seen: list = []
    marker = torch.randn(1, 4, 16, 12)
    assert tiled_denoiser(_spy(lambda *a: marker, seen), 2, TileConfig(16, 4))(z, t, tiny_backbone.null_cond) is marker
    assert seen == [(0, 16, 0, 12)]
    with torch.no_grad():
        assert torch.equal(tiled_unet_denoiser(tiny_backbone)(z, t, tiny_backbone.null_cond),
                           unet_denoiser(tiny_backbone)(z, t, tiny_backbone.null_cond))


def test_tiled_sampling_is_deterministic_and_close_to_untiled(tiny_backbone):
    b = tiny_backbone
    cfg = SamplerConfig(steps=3, guidance_scale=2.0, seed=4)
    cond = b.null_cond + 0.5
    whole = ddim_sample(b, cond, (24, 20), cfg)
    tiles = TileConfig(12, 4)
    assert latent_multiple(b) == 2
    runs = [ddim_sample(b, cond, (24, 20), cfg, tiled_unet_denoiser(b, tiles)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], whole)  # the windows really ran on their own
    err = float((runs[0] - whole).pow(2).mean().sqrt())
    assert err < 0.2 * float(whole.pow(2).mean().sqrt())


def test_gradients_flow_through_the_blend(tiny_backbone):
    """Codec A's ``full`` compression guidance back-propagates through the (tiled) denoiser."""
    b = tiny_backbone
    z = torch.randn(1, 4, 24, 20, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    eps = tiled_unet_denoiser(b, TileConfig(12, 4))(z, torch.tensor([300]), b.null_cond)
    (grad,) = torch.autograd.grad(eps.pow(2).sum(), z)
    assert grad.shape == z.shape and bool(torch.isfinite(grad).all()) and float(grad.abs().min()) > 0


def test_use_tiles_sets_the_layout_for_a_block_only():
    with use_tiles(TileConfig(8, 2)) as cfg:
        assert current_tiles() == cfg == TileConfig(8, 2)
    assert current_tiles() == DEFAULT_TILES


def test_codec_b_decodes_in_tiles_deterministically_with_the_control_on_the_same_windows(tiny_backbone):
    from egc_lite.codecs import CompressOptions, DiffEICCodec
    from egc_lite.coding.entropy import update_tables
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel

    model = DiffEICModel.for_backbone(DiffEICConfig(N=16, M=24), tiny_backbone, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero control outputs, so c steers the samples
        for module in model.control.output_projections():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.compressor.g_a2[-1].weight.mul_(60)  # y spans several integers, so c varies across the image
    update_tables(model.compressor)
    codec = DiffEICCodec(tiny_backbone, model=model)
    x = torch.rand(3, 100, 120, generator=torch.Generator().manual_seed(3))
    bs = codec.compress(x, CompressOptions(seed=5, steps=3, start_step=1))
    whole = codec.decompress(bs)
    seen: list[tuple[torch.Size, torch.Tensor]] = []
    predict = model.predict_noise

    def spy(unet, z_t, t, cond, c, scale=1.0):
        seen.append((z_t.shape[-2:], c.clone()))
        return predict(unet, z_t, t, cond, c, scale)

    model.predict_noise = spy
    try:
        with use_tiles(TileConfig(8, 2)):
            a, b = codec.decompress(bs), codec.decompress(bs)
    finally:
        del model.predict_noise
    assert torch.equal(a, b) and a.shape == whole.shape == (3, 100, 120)
    assert not torch.equal(a, whole)
    c = codec.content_variables(bs)
    windows = tile_windows(*c.shape[-2:], 8, 2, latent_multiple(tiny_backbone))
    assert len(windows) > 1 and len(seen) == 2 * 2 * len(windows)  # 2 decodes x 2 steps x windows
    for (z_size, c_window), (y0, y1, x0, x1) in zip(seen, windows * 4):  # the control reads z's window of c
        assert z_size == c_window.shape[-2:] and torch.equal(c_window, c[..., y0:y1, x0:x1])


def test_codec_a_decodes_in_tiles_deterministically(tiny_backbone, smooth_image):
    from egc_lite.codecs import CompressOptions, TextInvCodec, TextInvConfig
    from egc_lite.codecs.textual_inversion import InversionConfig

    cfg = TextInvConfig(inversion=InversionConfig(steps=2), sampler=SamplerConfig(steps=2, guidance_scale=2.0))
    codec = TextInvCodec(tiny_backbone, cfg)
    bs = codec.compress(smooth_image(96, 128, seed=2), CompressOptions(bpp=0.3, seed=5))
    whole = codec.decompress(bs)
    full = dataclasses.replace(codec.decode_parameters(bs)[0].guidance, mode="full", scale=5.0)
    with use_tiles(TileConfig(8, 2)):
        a, b = codec.decompress(bs), codec.decompress(bs)
        guided = codec.decompress(bs, guidance=full)
    assert torch.equal(a, b) and not torch.equal(a, whole)
    assert bool(torch.isfinite(guided).all()) and not torch.equal(guided, a)
