"""Codec B end to end on a tiny random backbone: files, determinism, start step, eta, rate points, bad files; the
shipped egc-tiny rate points round-trip, and a file made for the previous egc-tiny is refused plainly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from egc_lite.codecs import CompressOptions, DiffEICCodec, make_codec
from egc_lite.codecs.diffeic import DEFAULT_STEPS, QUALITY_LAMBDA, default_start_step, image_multiple, suggested_lambdas
from egc_lite.coding.bitstream import decode_bitstream, encode_bitstream, read_bitstream, write_bitstream
from egc_lite.coding.entropy import update_tables
from egc_lite.errors import BitstreamError, ModelNotFoundError, ParameterError
from egc_lite.models.diffeic.config import DiffEICConfig
from egc_lite.models.diffeic.model import DiffEICModel, save_diffeic

TINY = DiffEICConfig(N=16, M=24)
#: A codec B file made with the second egc-tiny's rate point q1 (narrow control module; egc_lite/assets/coffee.png
#: cut to 128x192, quality 1, seed 3, 4 steps, start 0): its backbone id is not the shipped backbone's any more.
OLD_FILE = Path(__file__).parents[1] / "data" / "diffeic_q1_narrow.egc"


def _model(backbone, seed: int, control: str = "cddm") -> DiffEICModel:
    """A random model whose control outputs are not zero (so ``c`` changes the samples)."""
    m = DiffEICModel.for_backbone(dataclasses.replace(TINY, control=control), backbone, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in m.control.output_projections():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        if control == "narrow":  # its hint embedding's last convolution starts at zero too
            conv = m.control.net.controlnet_cond_embedding.conv_out
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.1)
        spread(m)
    update_tables(m.compressor)
    return m


def spread(m: DiffEICModel) -> None:
    """Scale the random analysis transforms so that y and the hyper-latent span several integers
    (a fresh model's values all round to zero, which would make coding tests trivial)."""
    with torch.no_grad():
        m.compressor.g_a2[-1].weight.mul_(60)
        m.compressor.h_a[-1].weight.mul_(40)


@pytest.fixture(scope="module")
def model(tiny_backbone):
    return _model(tiny_backbone, 0)


@pytest.fixture(scope="module")
def codec(tiny_backbone, model):
    return DiffEICCodec(tiny_backbone, model=model)


@pytest.fixture(scope="module")
def image(smooth_image):
    return smooth_image(72, 100, seed=1)


@pytest.fixture(scope="module")
def stream(codec, image):
    return codec.compress(image, CompressOptions(seed=5, steps=3))


def test_file_round_trip_is_deterministic(tmp_path, codec, stream, tiny_backbone):
    path = tmp_path / "a.egc"
    n = write_bitstream(path, stream)
    assert n == len(encode_bitstream(stream))
    assert set(stream.sections) == {"y", "z"}
    assert {"seed", "steps", "q", "start", "model"} <= set(stream.params)
    bs = read_bitstream(path, expected_backbone_id=tiny_backbone.backbone_id)
    assert bs.params["seed"] == 5 and bs.params["q"] == 0
    a, b = codec.decompress(bs), codec.decompress(bs)
    assert a.shape == (3, 72, 100) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, codec.decompress(bs, sample=1))


def test_start_step_starts_from_the_content_variables(codec, image, stream):
    calls = []
    assert stream.params["start"] == default_start_step(3) == 2 and "eta" not in stream.params
    bs = codec.compress(image, CompressOptions(seed=5, steps=3, start_step=0))
    assert bs.params["start"] == 0 and bs.sections == stream.sections
    import egc_lite.codecs.diffeic as mod

    real = mod.ddim_sample

    def spy(*args, **kwargs):
        calls.append((args[3].start_step, kwargs.get("init_latent")))
        return real(*args, **kwargs)

    mod.ddim_sample = spy
    try:
        y = codec.decompress(bs)
    finally:
        mod.ddim_sample = real
    assert calls[0][0] == 0 and calls[0][1] is None  # start step 0: from noise
    calls.clear()
    mod.ddim_sample = spy
    try:
        y_default = codec.decompress(stream)
    finally:
        mod.ddim_sample = real
    assert calls[0][0] == 2 and torch.equal(calls[0][1], codec.content_variables(stream))
    assert y.shape == (3, 72, 100) and not torch.equal(y, y_default)
    with pytest.raises(ParameterError, match="start_step"):
        codec.compress(image, CompressOptions(steps=3, start_step=3))


def test_content_variables_steer_the_samples(tiny_backbone, model, image):
    """Two images give different content variables, hence different decodes with the same seed."""
    codec = DiffEICCodec(tiny_backbone, model=model)
    a = codec.compress(image, CompressOptions(steps=2))
    b = codec.compress(image.flip(-1), CompressOptions(steps=2))
    assert not torch.equal(codec.content_variables(a), codec.content_variables(b))
    assert not torch.equal(codec.decompress(a), codec.decompress(b))


def test_bad_files(codec, stream, tiny_backbone):
    from egc_lite.backbone import tiny_random_backbone

    with pytest.raises(BitstreamError, match="'y'"):
        codec.decompress(dataclasses.replace(stream, sections={"z": stream.sections["z"]}))
    with pytest.raises(BitstreamError, match="'z'"):
        codec.decompress(dataclasses.replace(stream, sections={"y": stream.sections["y"]}))
    with pytest.raises(BitstreamError, match="backbone"):
        codec.decompress(dataclasses.replace(stream, backbone_id="tiny-random:1"))
    with pytest.raises(BitstreamError, match="backbone"):
        other = tiny_random_backbone(seed=1)
        decode_bitstream(encode_bitstream(stream), expected_backbone_id=other.backbone_id)
    data = bytearray(encode_bitstream(stream))
    data[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum"):
        decode_bitstream(bytes(data))
    with pytest.raises(BitstreamError, match="steps"):
        codec.decompress(dataclasses.replace(stream, params={**stream.params, "steps": 0}))
    with pytest.raises(BitstreamError, match="'seed'"):
        codec.decompress(dataclasses.replace(stream, params={k: v for k, v in stream.params.items() if k != "seed"}))
    with pytest.raises(BitstreamError, match="fingerprint"):
        DiffEICCodec(tiny_backbone, model=_model(tiny_backbone, 1)).decompress(stream)
    with pytest.raises(BitstreamError, match="pixels"):
        codec.decompress(dataclasses.replace(stream, height=60000, width=60000))
    with pytest.raises(BitstreamError, match="textinv"):
        codec.decompress(dataclasses.replace(stream, codec="textinv"))


def test_missing_weights_name_the_folder_and_the_command(tmp_path, tiny_backbone, image, stream):
    codec = DiffEICCodec(tiny_backbone, weights_dir=tmp_path / "none")
    with pytest.raises(ModelNotFoundError, match=rf"q2.*egc train diffeic --lmbda {QUALITY_LAMBDA[2]:g}"):
        codec.compress(image, CompressOptions(quality=2))
    with pytest.raises(ModelNotFoundError, match="none"):
        codec.compress(image, CompressOptions(bpp=0.1))
    with pytest.raises(ModelNotFoundError, match="passed in code"):
        codec.decompress(stream)  # a quality-0 file needs the model object
    with pytest.raises(ParameterError, match="quality"):
        codec.compress(image, CompressOptions(quality=9))
    with pytest.raises(ParameterError, match="either"):
        codec.compress(image, CompressOptions(quality=1, bpp=0.1))
    assert isinstance(make_codec("diffeic", tiny_backbone), DiffEICCodec)


def test_shipped_rate_points_and_bpp_target(tmp_path, tiny_backbone, model, image):
    save_diffeic(model, tmp_path / "q2", tiny_backbone.backbone_id)
    save_diffeic(_model(tiny_backbone, 3), tmp_path / "q4", tiny_backbone.backbone_id)
    enc = DiffEICCodec(tiny_backbone, weights_dir=tmp_path)
    assert enc.available_qualities() == [2, 4]
    bs = enc.compress(image, CompressOptions(quality=2, steps=2))
    assert bs.params["q"] == 2
    dec = DiffEICCodec(tiny_backbone, weights_dir=tmp_path)  # loads q2 from its folder
    assert torch.equal(dec.decompress(decode_bitstream(encode_bitstream(bs))), enc.decompress(bs))
    sizes = {q: enc.compress(image, CompressOptions(quality=q)).bpp() for q in (2, 4)}
    assert enc.compress(image, CompressOptions(bpp=24.0)).params["q"] == 4  # highest that fits
    assert enc.compress(image, CompressOptions(bpp=1e-3)).params["q"] == 2  # nothing fits: lowest rate
    assert min(sizes.values()) > 0


def test_default_start_step_leaves_forty_percent_of_the_steps(codec, image):
    assert default_start_step(DEFAULT_STEPS) == 30 and default_start_step(1) == 0 and default_start_step(10) == 6
    assert codec.compress(image, CompressOptions()).params["start"] == 30
    assert codec.compress(image, CompressOptions(steps=20)).params["start"] == 12


def test_eta_goes_in_the_header_and_decodes_the_same_every_time(tmp_path, codec, image):
    ddim = codec.compress(image, CompressOptions(seed=5, steps=3))
    bs = codec.compress(image, CompressOptions(seed=5, steps=3, eta=1.0))
    assert bs.params["eta"] == 1000 and bs.sections == ddim.sections
    write_bitstream(tmp_path / "e.egc", bs)
    back = read_bitstream(tmp_path / "e.egc")
    sampler, _ = codec.decode_parameters(back)
    assert sampler.eta == 1.0 and sampler.start_step == 2 and sampler.seed == 5
    a = codec.decompress(back)
    assert torch.equal(a, codec.decompress(back)) and not torch.equal(a, codec.decompress(ddim))
    half = codec.compress(image, CompressOptions(seed=5, steps=3, eta=0.25))
    assert half.params["eta"] == 250 and codec.decode_parameters(half)[0].eta == 0.25
    assert "eta" not in ddim.params and codec.decode_parameters(ddim)[0].eta == 0.0  # absent: DDIM, as before the field
    with pytest.raises(ParameterError, match="eta"):
        CompressOptions(eta=1.5)


def test_a_header_that_claims_more_than_its_payloads_hold_is_refused(codec, stream):
    """New files record the coded latent's shape: a header edited to a larger image (checksum recomputed) is
    refused, where it used to decode the short payload into a garbage image."""
    assert {"yh", "yw"} <= set(stream.params)
    m = image_multiple(codec.backbone)
    bigger = dataclasses.replace(stream, height=stream.height + m, width=stream.width + m)
    with pytest.raises(BitstreamError, match="does not match its payloads"):
        codec.decompress(decode_bitstream(encode_bitstream(bigger)))
    legacy = dataclasses.replace(stream, params={k: v for k, v in stream.params.items() if k not in ("yh", "yw")})
    assert torch.equal(codec.decompress(legacy), codec.decompress(stream))  # files written before the fields decode as before


def test_quality_lambdas_come_from_the_shipped_rate_points():
    from egc_lite.weights import shipped_rate_point_lambdas

    shipped = shipped_rate_point_lambdas()
    assert shipped and all(QUALITY_LAMBDA[q] == lmbda for q, lmbda in shipped.items())
    lambdas = [QUALITY_LAMBDA[q] for q in sorted(QUALITY_LAMBDA)]
    assert all(a > b for a, b in zip(lambdas, lambdas[1:]))  # a higher quality weighs the rate less
    assert suggested_lambdas({1: 4.0, 3: 0.25})[2] == pytest.approx(1.0)  # geometric between neighbours
    assert suggested_lambdas({}) == {1: 16.0, 2: 8.0, 3: 4.0, 4: 2.0, 5: 1.0}  # the reference's, with none shipped


@pytest.mark.parametrize("key, value", [("start", 3), ("start", -1), ("start", 2**62), ("eta", -1), ("eta", 1001),
                                        ("eta", 2**62), ("eta", 0.5), ("eta", "x"), ("eta", True), ("steps", 2**40)])
def test_hostile_sampler_fields_are_refused(codec, stream, key, value):
    bad = decode_bitstream(encode_bitstream(dataclasses.replace(stream, params={**stream.params, key: value})))
    with pytest.raises(BitstreamError):
        codec.decompress(bad)


def test_the_narrow_control_variant_round_trips_through_files(tmp_path, tiny_backbone, image):
    narrow = _model(tiny_backbone, 2, control="narrow")
    save_diffeic(narrow, tmp_path / "q1", tiny_backbone.backbone_id)
    enc = DiffEICCodec(tiny_backbone, weights_dir=tmp_path)
    assert enc.model(1).config.control == "narrow"
    bs = enc.compress(image, CompressOptions(quality=1, steps=2, seed=1))
    dec = DiffEICCodec(tiny_backbone, weights_dir=tmp_path)
    y = dec.decompress(decode_bitstream(encode_bitstream(bs)))
    assert torch.equal(y, enc.decompress(bs)) and y.shape == (3, 72, 100)


@pytest.fixture(scope="module")
def egc_tiny():
    from egc_lite.backbone import load_backbone

    return load_backbone("egc-tiny", device="cpu")


def test_shipped_rate_points_round_trip_and_a_file_for_another_backbone_is_refused(egc_tiny, tmp_path):
    """egc-tiny v3's q1, q3, q5 (the reference's control module) write files whose rate falls with the
    quality number's lambda and that decode to the same pixels twice; a file made for the previous egc-tiny
    names the backbone it needs instead of decoding garbage."""
    from egc_lite.data import load_image

    codec = DiffEICCodec(egc_tiny)
    assert codec.available_qualities() == [1, 3, 5]
    assert all(codec.model(q).config.control == "cddm" for q in (1, 3, 5))
    x = load_image(Path(__file__).resolve().parents[2] / "egc_lite" / "assets" / "coffee.png")[:, :128, :192]
    sizes = {}
    for q in (1, 3, 5):
        path = tmp_path / f"q{q}.egc"
        sizes[q] = write_bitstream(path, codec.compress(x, CompressOptions(quality=q, steps=4, seed=3)))
    assert sizes[1] < sizes[3] < sizes[5]
    bs = read_bitstream(tmp_path / "q3.egc", expected_backbone_id=egc_tiny.backbone_id)
    y = codec.decompress(bs)
    assert y.shape == (3, 128, 192) and torch.equal(y, codec.decompress(bs))
    with pytest.raises(BitstreamError, match="backbone"):
        decode_bitstream(OLD_FILE.read_bytes(), expected_backbone_id=egc_tiny.backbone_id)


# ---------------------------------------------------------------- issue 13: bf16 inference
@pytest.fixture(scope="module")
def codecs_by_precision(tiny_by_precision):
    model = _model(tiny_by_precision["fp32"], 0)
    return {p: DiffEICCodec(b, model=model) for p, b in tiny_by_precision.items()}


def test_files_do_not_depend_on_the_inference_precision(codecs_by_precision, image):
    """The encoder path (VAE encoder, compressor, entropy coder) never sees bf16: the same bytes either way."""
    files = {p: encode_bitstream(c.compress(image, CompressOptions(seed=5, steps=3))) for p, c in codecs_by_precision.items()}
    assert files["bf16"] == files["fp32"]


def test_bf16_decode_is_deterministic_and_close_to_float32(codecs_by_precision, image):
    bs = codecs_by_precision["fp32"].compress(image, CompressOptions(seed=5, steps=3))
    c16 = codecs_by_precision["bf16"]
    assert torch.equal(c16.content_variables(bs), codecs_by_precision["fp32"].content_variables(bs))
    a, b = c16.decompress(bs), c16.decompress(bs)
    assert torch.equal(a, b)
    ref = codecs_by_precision["fp32"].decompress(bs)
    diff = a - ref
    assert float(diff.abs().max()) > 0 and float(diff.pow(2).mean().sqrt() / ref.std()) < 0.06


@pytest.mark.slow
def test_bf16_decode_in_another_process_gives_the_same_pixels(tmp_path, codecs_by_precision, image):
    """A file decodes to the same pixels in a fresh process on this machine under bf16 (same thread count)."""
    import subprocess
    import sys
    import textwrap

    model = codecs_by_precision["bf16"].model(0)
    save_diffeic(model, tmp_path / "q3", codecs_by_precision["bf16"].backbone_id)
    codec = DiffEICCodec(codecs_by_precision["bf16"].backbone, weights_dir=tmp_path)
    bs = codec.compress(image, CompressOptions(quality=3, seed=5, steps=3))
    write_bitstream(tmp_path / "a.egc", bs)
    here = codec.decompress(bs)
    code = f"""
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from egc_lite.backbone import tiny_random_backbone
        from egc_lite.coding.bitstream import read_bitstream
        from egc_lite.codecs import DiffEICCodec
        b = tiny_random_backbone(seed=0, precision="bf16")
        assert b.inference_precision == "bf16"
        codec = DiffEICCodec(b, weights_dir={str(tmp_path)!r})
        torch.save(codec.decompress(read_bitstream({str(tmp_path / 'a.egc')!r})), {str(tmp_path / 'x.pt')!r})
    """
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin", "EGC_PROGRESS": "0",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "x.pt"), here)


@pytest.mark.parametrize("kind", ["cddm", "narrow"])
def test_denoiser_runs_control_and_unet_under_the_backbones_precision(kind, tiny_by_precision):
    """The control module (with non-zero outputs, so it steers) and the UNet compute in bf16 on a bf16
    backbone, in float32 on a float32 one; the float32 noise predictions agree to bf16's rounding."""
    b16, b32 = tiny_by_precision["bf16"], tiny_by_precision["fp32"]
    model = DiffEICModel.for_backbone(dataclasses.replace(TINY, control=kind), b32, seed=1).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.control.output_projections():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    from egc_lite.codecs.diffeic import steered_denoiser
    from egc_lite.sampling.ddim import unet_denoiser

    first_conv = next(m for m in model.control.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[torch.dtype] = []
    handle = first_conv.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    z = torch.randn(1, 4, 8, 8, generator=g)
    c = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([600])
    try:
        e16 = steered_denoiser(model, b16, c)(z, t, b16.null_cond)
        e32 = steered_denoiser(model, b32, c)(z, t, b32.null_cond)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16, torch.float32]
    with torch.no_grad():
        plain = unet_denoiser(b32)(z, t, b32.null_cond)  # the UNet alone: what the control adds
    assert e16.dtype == torch.float32 and float((e16 - e32).abs().max()) > 0
    assert float((e16 - e32).pow(2).mean().sqrt()) < 0.05 * float((e32 - plain).pow(2).mean().sqrt())


def test_what_the_encoder_writes_the_same_machine_decodes(monkeypatch, codec, smooth_image):
    """With the budget set to what a 192x256 photo needs, that photo (the largest of its shape the budget allows)
    goes through both ways, and a photo twice as large is refused before anything is written, saying what fits."""
    from egc_lite.coding.budget import GIB, largest_fitting_megapixels
    from egc_lite.errors import ImageError

    need = codec.memory_estimate(192, 256, "decode")
    monkeypatch.setenv("EGC_DECODE_BUDGET_GB", str(need / GIB))
    assert largest_fitting_megapixels(lambda h, w: codec.memory_estimate(h, w, "decode"), 192, 256) >= 0.99 * 192 * 256 / 1e6
    bs = decode_bitstream(encode_bitstream(codec.compress(smooth_image(192, 256, seed=4), CompressOptions(steps=2))))
    assert codec.decompress(bs).shape == (3, 192, 256)
    with pytest.raises(ImageError, match=r"512x384 photo .* decode budget .* resize it to about 0\.0[45]\d* megapixels"):
        codec.compress(smooth_image(384, 512, seed=4), CompressOptions(steps=2))
