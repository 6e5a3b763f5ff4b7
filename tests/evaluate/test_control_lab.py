"""Notebook 04's control measurements and panel, on a shipped rate point, without a browser."""

from __future__ import annotations

import pytest
import torch

from egc_lite.codecs import CompressOptions
from egc_lite.data import DEMO_IMAGE, load_image, pad_to_multiple
from egc_lite.evaluate.control_lab import ControlPanel, decode_scaled, residual_norms
from egc_lite.sampling.ddim import initial_noise


@pytest.fixture(scope="module")
def shipped():
    from egc_lite.backbone import load_backbone
    from egc_lite.codecs.diffeic import DiffEICCodec

    bb = load_backbone("egc-tiny", device="cpu")
    codec = DiffEICCodec(bb)
    if not codec.available_qualities():
        pytest.skip("no shipped DiffEIC rate points")
    x = load_image(DEMO_IMAGE)[:, :64, :128]
    q = codec.available_qualities()[0]
    bs = codec.compress(x, CompressOptions(quality=q, steps=6, seed=0))
    return bb, codec, q, bs, x


def test_scale_one_is_the_codec_and_zero_differs(shipped):
    bb, codec, q, bs, x = shipped
    ref = codec.decompress(bs)
    assert torch.equal(decode_scaled(codec, bs, 1.0), ref)
    assert not torch.equal(decode_scaled(codec, bs, 0.0), ref)
    assert not torch.equal(decode_scaled(codec, bs, 1.0, start_step=0), ref)


def test_residual_norms_cover_encoder_middle_decoder(shipped):
    bb, codec, q, bs, x = shipped
    model = codec.model(q)
    xp, _ = pad_to_multiple(x[None], 64)
    z0 = bb.encode(xp).float()
    c = codec.content_variables(bs)
    rows = residual_norms(model, bb, z0, c, 600, initial_noise(tuple(z0.shape), 0))
    parts = [r["part"] for r in rows]
    enc, dec = parts.count("encoder"), parts.count("decoder")
    assert parts.count("middle") == 1 and enc == len(model.control.enc_out) and dec == len(model.control.dec_out)
    assert parts == ["encoder"] * enc + ["middle"] + ["decoder"] * dec
    assert all(r["residual_rms"] > 0 and r["unet_rms"] > 0 for r in rows)  # trained projections are not zero
    assert rows[0]["eps_change"] > 0
    for r in rows:
        assert r["ratio"] == pytest.approx(r["residual_rms"] / r["unet_rms"])


def test_panel_render_and_widget(shipped):
    bb, codec, q, bs, x = shipped
    panel = ControlPanel(codec, bs, x)
    r = panel.render(panel.start, 1.0)
    assert r["image"].shape == x.shape and r["psnr"] > 0
    box = panel.widget()
    start, scale = box.children[0].children
    line, image = box.children[1], box.children[2]
    assert f"start={panel.start} " in line.value and "control=1:" in line.value
    before = image.value
    scale.value = 0.5
    assert "control=0.5:" in line.value and image.value != before
    start.value = 0
    assert "start=0 " in line.value and f"({panel.steps} run)" in line.value
