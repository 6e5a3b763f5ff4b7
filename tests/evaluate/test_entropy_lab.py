"""Notebook 03's measurements on the shipped rate points, and the step panel without a browser."""

from __future__ import annotations

import pytest
import torch

from egc_lite.coding.entropy import estimate_bits_factorized, estimate_bits_gaussian
from egc_lite.data import DEMO_IMAGE, load_image, pad_to_multiple
from egc_lite.evaluate.entropy_lab import StepPanel, compressor_latents, quantise_with_step, rate_breakdown
from egc_lite.evaluate.notebook_data import notebook_image, training_images


@pytest.fixture(scope="module")
def shipped():
    from egc_lite.backbone import load_backbone
    from egc_lite.codecs.diffeic import DiffEICCodec

    bb = load_backbone("egc-tiny", device="cpu")
    codec = DiffEICCodec(bb)
    qs = codec.available_qualities()
    if not qs:
        pytest.skip("no shipped DiffEIC rate points")
    x = load_image(DEMO_IMAGE)[:, :128, :192]
    return bb, {q: codec.model(q) for q in qs[:2]}, x


def test_latents_match_the_codec(shipped):
    bb, models, x = shipped
    model = models[min(models)]
    xp, _ = pad_to_multiple(x[None], 64)
    z0 = bb.encode(xp).float()
    lat = compressor_latents(model.compressor, xp, z0)
    # the decoder's y_hat is y rounded around the means the two passes predicted
    assert torch.equal(lat.y_hat, torch.round(lat.y - lat.means) + lat.means)
    ref = model.compressor.compress(xp, z0)
    assert ref["strings"] == {"y": lat.y_bytes, "z": lat.z_bytes}
    rows = rate_breakdown(model.compressor, lat, xp, z0)
    shipped_row = next(r for r in rows if "shipped" in r["model"] and "z0 = 0" not in r["model"])
    est = estimate_bits_gaussian(model.compressor.gaussian_conditional, lat.y, lat.scales, lat.means)
    assert shipped_row["y_bits"] == pytest.approx(est, rel=1e-6)
    assert shipped_row["total_bits"] == pytest.approx(est + estimate_bits_factorized(model.compressor.entropy_bottleneck, lat.w), rel=1e-6)
    # the real section is within a few percent (plus the flush) of the estimate
    assert 8 * len(lat.y_bytes) == pytest.approx(est, rel=0.1, abs=96)
    if lat.anchors is not None:
        only = next(r for r in rows if r["model"].startswith("hyperprior only"))
        assert only["anchor_bits"] == pytest.approx(shipped_row["anchor_bits"])  # same first pass
        assert shipped_row["anchor_bits"] + shipped_row["nonanchor_bits"] == pytest.approx(shipped_row["y_bits"])
    if model.compressor.g_a_sft is not None:
        z = next(r for r in rows if "z0 = 0" in r["model"])
        assert z["c_mse"] > shipped_row["c_mse"]


def test_step_panel(shipped):
    bb, models, x = shipped
    panel = StepPanel(bb, models, x)
    q = min(models)
    one = panel.render(q, 1.0)
    assert one["image"].shape == x.shape and 0 <= float(one["image"].min()) and float(one["image"].max()) <= 1
    coarse, fine = panel.render(q, 4.0), panel.render(q, 0.5)
    assert fine["bits"] > one["bits"] > coarse["bits"]
    _, bits1 = quantise_with_step(models[q].compressor, panel.latents(q), 1.0)
    assert bits1 == pytest.approx(one["bits"])
    assert not torch.equal(coarse["image"], one["image"])
    box = panel.widget()
    dropdown, slider = box.children[0].children
    line, image = box.children[1], box.children[2]
    before = (image.value, line.value)
    slider.value = 3.0
    assert "step=3:" in line.value and (image.value, line.value) != before
    if len(models) > 1:
        dropdown.value = max(models)
        assert f"q{max(models)}" in line.value


def test_fallbacks_without_data(monkeypatch, tmp_path):
    monkeypatch.delenv("EGC_DATA", raising=False)
    monkeypatch.delenv("EGC_TRAIN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    img, name, source = notebook_image(23)
    assert name == DEMO_IMAGE.stem and "not on disk" in source and img.shape[0] == 3
    photos, source = training_images(5)
    assert len(photos) == 5 and "crops" in source
    assert len({tuple(p.shape) for p in photos}) == 2 and not torch.equal(photos[0], photos[1][..., :photos[0].shape[-1]])
