"""The (s_c, s_f) sweep and the slider panel, driven without a browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egc_lite.codecs import CompressOptions, TextInvCodec, TextInvConfig
from egc_lite.codecs.textual_inversion import InversionConfig
from egc_lite.evaluate.scale_sweep import SC_RANGES, GuidancePanel, guidance_sweep, plot_heatmaps
from egc_lite.sampling.ddim import SamplerConfig
from egc_lite.sampling.guidance import CompressionGuidanceConfig


@pytest.fixture(scope="module")
def setup(tiny_backbone, smooth_image):
    codec = TextInvCodec(tiny_backbone, TextInvConfig(inversion=InversionConfig(steps=2), sampler=SamplerConfig(steps=2)))
    x = smooth_image(64, 64, grid=(4, 4), seed=2)
    return codec, codec.compress(x, CompressOptions(bpp=0.5)), x


def test_sweep_grid_and_heatmaps(setup):
    codec, bs, x = setup
    res = guidance_sweep(codec, bs, x, [0.0, 30.0], [1.0, 3.0], metrics=("psnr", "ms_ssim", "lpips"))
    assert res.values["psnr"].shape == (2, 2) and not np.isnan(res.values["psnr"]).any()
    assert "lpips" in res.unavailable or "lpips" in res.values
    sc, sf, best = res.best("psnr")
    assert sc in (0.0, 30.0) and sf in (1.0, 3.0) and best == np.nanmax(res.values["psnr"])
    # cells differ: the scales really change the decoding
    assert np.unique(res.values["psnr"]).size > 1
    fig = plot_heatmaps(res)
    assert len(fig.axes) >= 2


def test_panel_render_and_widget(setup):
    codec, bs, x = setup
    panel = GuidancePanel(codec, bs, x)
    a = panel.render(0.0, 1.0)
    b = panel.render(0.0, 1.0)
    assert torch.equal(a["image"], b["image"]) and a["psnr"] > 0
    box = panel.widget()
    sliders = box.children[0].children
    file_mode = codec.decode_parameters(bs)[0].guidance.mode  # the codec's default: "fast"
    assert (sliders[0].min, sliders[0].max, sliders[0].step) == SC_RANGES[file_mode]
    sliders[0].value = 0.3  # moving a slider redraws
    assert panel.last["sc"] == 0.3 and box.children[1].value.startswith("s_c=0.3")


def test_slider_range_follows_the_guidance_mode(tiny_backbone, smooth_image):
    codec = TextInvCodec(tiny_backbone, TextInvConfig(inversion=InversionConfig(steps=1), sampler=SamplerConfig(steps=1),
                                                      guidance=CompressionGuidanceConfig(scale=0.5, mode="fast")))
    x = smooth_image(64, 64, seed=3)
    panel = GuidancePanel(codec, codec.compress(x, CompressOptions(bpp=0.5)), x)
    assert panel.sc_range == SC_RANGES["fast"] and panel.sc_range[0] < 0.3 and panel.sc_range[1] > 1.0
    assert SC_RANGES["latent"][0] < 0.05 and 0.4 < SC_RANGES["latent"][1] < 1.0
