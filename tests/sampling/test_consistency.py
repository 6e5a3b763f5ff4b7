"""Codec A's low-frequency consistency (ILVR, beyond the paper; issue 13 item 3): exact on Gaussian data,
stored in the file's header, absent from the paper's files, hostile values refused, on the command line."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from egc_lite.codecs import CompressOptions, TextInvCodec, TextInvConfig
from egc_lite.codecs.textual_inversion import InversionConfig
from egc_lite.coding.bitstream import decode_bitstream, encode_bitstream, read_bitstream, write_bitstream
from egc_lite.errors import BitstreamError, ParameterError
from egc_lite.guide import degrade
from egc_lite.sampling.analytic import gaussian_backbone
from egc_lite.sampling.consistency import ConsistencyConfig, ilvr_hook, low_pass, pixel_projection
from egc_lite.sampling.ddim import SamplerConfig, alpha_bar, ddim_sample
from egc_lite.sampling.guidance import guide_latent

ILVR = ConsistencyConfig(mode="ilvr", until=1.0)


def _reference(shape=(1, 4, 8, 8), seed=3) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.5


def test_low_pass_replaces_block_means_exactly():
    z, y = _reference((2, 4, 7, 9), 1), _reference((2, 4, 7, 9), 2)
    for k in (1, 2, 3):
        out = z - low_pass(z, k) + low_pass(y, k)
        assert torch.allclose(degrade(out, k), degrade(y, k), atol=1e-6)
    assert not torch.allclose(degrade(z, 2), degrade(y, 2), atol=0.1)


def test_ilvr_puts_the_references_block_means_on_gaussian_samples():
    """Exact Gaussian denoiser: after the last step p_k(z) = sqrt(a_end) p_k(z_g) + sqrt(1-a_end) p_k(eps_last);
    without ILVR the block means are the prior's, far from the reference. The denoiser is linear and the same at
    every pixel, so the high-pass part must be exactly the unconditioned sampler's (detail left to the prior)."""
    b, k, steps = gaussian_backbone(std=0.5), 2, 30
    ref = _reference()
    seen = []

    def record(state):
        seen.append(state)
        return None

    cfg = SamplerConfig(steps=steps, guidance_scale=1.0, seed=7)
    cond = torch.zeros(1, 2, 4)
    plain = ddim_sample(b, cond, (8, 8), cfg, batch=16)
    z = ddim_sample(b, cond, (8, 8), cfg, guidance=ilvr_hook(ref, k, ILVR, steps, inner=record), batch=16)
    a_end = alpha_bar(b, -1)
    expected = a_end**0.5 * degrade(ref, k) + (1 - a_end) ** 0.5 * degrade(seen[-1].eps, k)
    assert torch.allclose(degrade(z, k), expected, atol=1e-5)
    assert float((degrade(z, k) - degrade(ref, k)).abs().max()) < 0.03  # the schedule's last-step error
    assert float((degrade(plain, k) - degrade(ref, k)).abs().max()) > 0.5
    assert torch.allclose(z - low_pass(z, k), plain - low_pass(plain, k), atol=1e-5)


def test_until_limits_the_steps_and_zero_is_the_papers_decoder():
    b, steps = gaussian_backbone(std=0.5), 10
    cfg = SamplerConfig(steps=steps, guidance_scale=1.0, seed=2)
    cond = torch.zeros(1, 2, 4)
    plain = ddim_sample(b, cond, (4, 4), cfg, batch=4)
    off = ddim_sample(b, cond, (4, 4), cfg, guidance=ilvr_hook(_reference((1, 4, 4, 4)), 2, dataclasses.replace(ILVR, until=0.0), steps),
                      batch=4)
    assert torch.equal(off, plain)
    half = dataclasses.replace(ILVR, until=0.5)
    assert [half.active(i, steps) for i in range(steps)] == [True] * 5 + [False] * 5
    assert not ConsistencyConfig().active(0, steps)


def test_ilvr_overrides_only_the_low_pass_of_the_guidance_correction():
    from egc_lite.sampling.ddim import StepState

    ref, k = _reference(), 2
    inner_corr = _reference(seed=9)
    hook = ilvr_hook(ref, k, ILVR, 10, inner=lambda s: inner_corr)
    z_t = _reference(seed=4)
    eps = torch.zeros_like(z_t)
    corr = hook(StepState(z_t, 500, 0, eps, 0.25, 0.36, torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), 1.0))
    z_next = 0.6 * z_t / 0.5 + corr  # DDIM with eps = 0: sqrt(a') z0_hat, z0_hat = z_t / sqrt(a_t)
    assert torch.allclose(degrade(z_next, k), 0.6 * degrade(ref, k), atol=1e-5)
    assert torch.allclose(corr - low_pass(corr, k), inner_corr - low_pass(inner_corr, k), atol=1e-6)


def test_pixel_projection_moves_block_means_onto_the_guide_and_keeps_detail():
    f = 8
    checker = ((torch.arange(32)[:, None] + torch.arange(48)[None]) % 2 * 2 - 1).float() * 0.05  # zero mean per block
    x = (0.3 + checker).expand(1, 3, 32, 48)
    out = pixel_projection(x, torch.full((3, 4, 6), 0.5), f)
    assert torch.allclose(degrade(out, f), torch.full((1, 3, 4, 6), 0.5), atol=1e-5)  # constant residual: exact
    assert torch.allclose(out - x, torch.full_like(x, 0.2), atol=1e-5)  # the checkerboard is untouched
    g = torch.Generator().manual_seed(0)
    y, guide = 0.2 + 0.6 * torch.rand(1, 3, 32, 48, generator=g), 0.2 + 0.6 * torch.rand(3, 4, 6, generator=g)
    before = float((degrade(y, f)[0] - guide).abs().mean())
    assert float((degrade(pixel_projection(y, guide, f), f)[0] - guide).abs().mean()) < 0.5 * before


@pytest.mark.parametrize("bad", [dict(mode="sdedit"), dict(until=1.5), dict(until=-0.1), dict(block=-1), dict(block=65),
                                 dict(block=1.5)])
def test_bad_consistency_settings(bad):
    with pytest.raises(ParameterError):
        ConsistencyConfig(**bad).validate()


# ---------------------------------------------------------------- codec A with the option
FAST = TextInvConfig(inversion=InversionConfig(steps=2), sampler=SamplerConfig(steps=4, guidance_scale=2.0))


@pytest.fixture(scope="module")
def codec(tiny_backbone):
    return TextInvCodec(tiny_backbone, FAST)


@pytest.fixture(scope="module")
def image(smooth_image):
    return smooth_image(96, 128, seed=2)


@pytest.fixture(scope="module")
def streams(codec, image):
    plain = codec.compress(image, CompressOptions(bpp=0.3, seed=3))
    ilvr = codec.compress(image, CompressOptions(bpp=0.3, seed=3, consistency="ilvr", consistency_until=0.75))
    return plain, ilvr


def test_the_papers_files_carry_no_consistency_field(codec, streams):
    plain, ilvr = streams
    assert not {"cm", "cu", "ck"} & set(plain.params)
    assert codec.decode_parameters(plain)[0].consistency == ConsistencyConfig()
    assert {k: ilvr.params[k] for k in ("cm", "cu", "ck")} == {"cm": 1, "cu": 7500, "ck": 0}
    assert ilvr.num_bytes() <= 0.3 * 96 * 128 / 8  # the header's few more bytes are inside the budget


def test_ilvr_file_round_trip_lands_on_the_guides_latent_block_means(tmp_path, codec, streams, tiny_backbone, monkeypatch):
    import egc_lite.codecs.textinv as textinv
    from egc_lite.guide import decode_guide

    _, bs = streams
    write_bitstream(tmp_path / "i.egc", bs)
    back = read_bitstream(tmp_path / "i.egc", expected_backbone_id=tiny_backbone.backbone_id)
    latents = []
    real = textinv.ddim_sample
    monkeypatch.setattr(textinv, "ddim_sample", lambda *a, **kw: latents.append(real(*a, **kw)) or latents[-1])
    full = ConsistencyConfig(mode="ilvr", until=1.0)
    a, b = codec.decompress(back, consistency=full), codec.decompress(back, consistency=full)
    none = codec.decompress(back, consistency=ConsistencyConfig())
    stored = codec.decompress(back)  # the file's own: until 0.75
    assert torch.equal(a, b) and a.shape == (3, 96, 128)
    assert not torch.equal(a, none) and not torch.equal(stored, none) and not torch.equal(stored, a)
    f = back.params["f"]
    small, _ = decode_guide(back.sections["guide"], (96, 128), f)
    k = full.block_for(f, tiny_backbone.vae_factor)
    goal = degrade(guide_latent(tiny_backbone, small, (96, 128), f), k)
    err = lambda z: float((degrade(z, k) - goal).abs().max())  # noqa: E731
    assert err(latents[0]) < 0.1 * err(latents[2])
    pix = codec.decompress(back, consistency=ConsistencyConfig(mode="pixel"))
    assert len(latents) == 5 and torch.equal(latents[4], latents[2])  # "pixel" leaves sampling alone
    guide_err = lambda y: float((degrade(y[None], f)[0] - small).abs().mean())  # noqa: E731
    assert guide_err(pix) < 0.7 * guide_err(none)


@pytest.mark.parametrize("fields, message", [
    (dict(cm=5), "consistency mode"),
    (dict(cm=-1), "consistency mode"),
    (dict(cu=10_001), "consistency schedule"),
    (dict(cu=-3), "consistency schedule"),
    (dict(ck=65), "consistency schedule"),
    (dict(ck=-1), "consistency schedule"),
    (dict(cm="ilvr"), "wrong type"),
    (dict(cu=0.5), "wrong type"),
])
def test_hostile_consistency_fields_are_refused(codec, streams, fields, message):
    _, bs = streams
    bad = decode_bitstream(encode_bitstream(dataclasses.replace(bs, params={**bs.params, **fields})))
    with pytest.raises(BitstreamError, match=message):
        codec.decompress(bad)
    partial = {k: v for k, v in bs.params.items() if k != "ck"}
    with pytest.raises(BitstreamError, match="ck"):
        codec.decompress(dataclasses.replace(bs, params=partial))


def test_bad_consistency_options(codec, image):
    with pytest.raises(ParameterError, match="consistency"):
        codec.compress(image, CompressOptions(bpp=0.3, consistency="sdedit"))
    with pytest.raises(ParameterError, match="until"):
        codec.compress(image, CompressOptions(bpp=0.3, consistency="ilvr", consistency_until=2.0))


def test_cli_consistency_flag(tmp_path, smooth_image, capsys):
    from egc_lite.cli import main
    from egc_lite.data import save_image

    save_image(smooth_image(64, 96, seed=5), tmp_path / "in.png")
    args = ["--backbone", "tiny-random", "--device", "cpu", "--no-progress", "--codec", "textinv", "--bpp", "0.3",
            "--steps", "2", "--inversion-steps", "1"]
    out = tmp_path / "c.egc"
    assert main(["compress", str(tmp_path / "in.png"), "-o", str(out), "--consistency", "ilvr",
                 "--consistency-until", "0.4"] + args) == 0
    assert {k: read_bitstream(out).params[k] for k in ("cm", "cu")} == {"cm": 1, "cu": 4000}
    assert main(["decompress", str(out), "-o", str(tmp_path / "c.png"), "--backbone", "tiny-random", "--device", "cpu",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compress", str(tmp_path / "in.png"), "-o", str(out), "--consistency", "ilvr",
                 "--consistency-until", "3"] + args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("egc: warning:")]
    assert len(errors) == 1 and errors[0].startswith("egc: error:") and "until" in errors[0]
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(tmp_path / "in.png"), "-o", str(out), "--consistency", "sdedit"] + args)
    assert exc.value.code == 2
