"""Backbone loading: tiny random models, the SD folder layout, errors for missing weights."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

import egc_lite
from egc_lite.backbone import ID_CHARS, load_backbone, save_backbone, tiny_random_backbone
from egc_lite.errors import ModelNotFoundError, ParameterError


def test_tiny_random_is_seeded_and_shaped(tiny_backbone):
    other = tiny_random_backbone(seed=0)
    for a, b in zip(tiny_backbone.unet.parameters(), other.unet.parameters()):
        assert torch.equal(a, b)
    assert tiny_random_backbone(seed=1).backbone_id != tiny_backbone.backbone_id
    assert tiny_backbone.vae_factor == 8 and tiny_backbone.latent_channels == 4
    z = tiny_backbone.encode(torch.rand(1, 3, 64, 32))
    assert z.shape == (1, 4, 8, 4)
    assert tiny_backbone.decode(z).shape == (1, 3, 64, 32)


def test_sd_layout_folder_loads_with_text_encoder(sd_folder):
    b = load_backbone(str(sd_folder), device="cpu")
    assert b.null_cond.shape == (1, 8, 16)  # max_length tokens x hidden size from the text encoder
    assert b.name == "sd" and b.bos  # the CLIP tokenizer puts BOS at position 0
    again = load_backbone(str(sd_folder), device="cpu")
    assert again.backbone_id == b.backbone_id
    assert torch.equal(again.null_cond, b.null_cond)


def test_save_and_reload_round_trip(tmp_path, tiny_backbone):
    folder = save_backbone(tiny_backbone, tmp_path / "bb")
    b = load_backbone(str(folder), device="cpu")
    assert torch.equal(b.null_cond, tiny_backbone.null_cond)
    x = torch.rand(1, 4, 8, 8)
    t = torch.tensor([10])
    with torch.no_grad():
        assert torch.allclose(b.unet(x, t, tiny_backbone.null_cond).sample, tiny_backbone.unet(x, t, tiny_backbone.null_cond).sample)


def test_missing_folder_and_hub_fail_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        load_backbone("stabilityai/stable-diffusion-2-1-base", device="cpu")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ModelNotFoundError, match="missing vae/"):
        load_backbone(str(tmp_path), device="cpu")
    with pytest.raises(ModelNotFoundError, match="unknown backbone"):
        load_backbone("./nowhere", device="cpu")


def test_egc_tiny_missing_weights_message(monkeypatch, tmp_path):
    import egc_lite.backbone as bb

    monkeypatch.setattr(bb, "EGC_TINY_DIR", tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match="looked in"):
        load_backbone("egc-tiny", device="cpu")


def test_device_errors():
    with pytest.raises(ParameterError, match="float16"):
        tiny_random_backbone(device="cpu", dtype=torch.float16)
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA"):
            load_backbone("tiny-random", device="cuda")
    with pytest.raises(ParameterError):
        load_backbone("tiny-random:x", device="cpu")


def test_egc_tiny_loads_offline_and_samples_two_steps(monkeypatch, smooth_image):
    """The shipped backbone: from the package folder, no network, a two-step sample and a VAE round trip."""
    from egc_lite.sampling.ddim import SamplerConfig, ddim_sample

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = load_backbone("egc-tiny", device="cpu")
    assert b.name == "egc-tiny" and b.vae_factor == 8 and b.latent_channels == 8  # v3: AutoencoderTiny, 8 latents
    shipped = json.loads((Path(egc_lite.__file__).parent / "weights/diffeic/q3/config.json").read_text())
    assert shipped["backbone_id"] == b.backbone_id  # the shipped rate points record the content id
    assert b.dtype == torch.float32 and next(b.unet.parameters()).dtype == torch.float32
    z = ddim_sample(b, b.null_cond, (8, 8), SamplerConfig(steps=2, guidance_scale=3.0, seed=0))
    x = b.decode(z)
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()
    smooth = smooth_image(64, 64, grid=(4, 4), seed=0, batch=1)
    from egc_lite.models.tiny import build_components
    from egc_lite.training.backbone import EGC_TINY_CONFIG

    untrained = build_components(EGC_TINY_CONFIG, seed=0).vae.eval()
    with torch.no_grad():
        rec = b.decode(b.encode(smooth)).clamp(0, 1)
        rand = ((untrained.decode(untrained.encode(smooth * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
    # a trained autoencoder: far closer to its input than the same architecture untrained
    assert float((rec - smooth).pow(2).mean()) < 0.5 * float((rand - smooth).pow(2).mean())


def test_backbone_id_is_a_short_content_id(tmp_path, sd_folder):
    """Issue 11, fault 4: the id hashes what is loaded, not folder names or the files beside it."""
    b = load_backbone(str(sd_folder), device="cpu")
    assert len(b.backbone_id) == ID_CHARS and int(b.backbone_id, 16) >= 0 and "sd" not in b.backbone_id
    renamed = shutil.copytree(sd_folder, tmp_path / "another-name")
    assert load_backbone(str(renamed), device="cpu").backbone_id == b.backbone_id
    # other variants cached beside the weights, and codec A's prior (fault 3), change nothing
    shutil.copy(renamed / "unet/diffusion_pytorch_model.safetensors", renamed / "unet/diffusion_pytorch_model.fp16.safetensors")
    from egc_lite.codecs.textual_inversion import EmbeddingPrior

    EmbeddingPrior(sigma=torch.full((b.cond_dim,), 0.3)).save(renamed)
    (renamed / "notes.json").write_text("{}")
    assert load_backbone(str(renamed), device="cpu").backbone_id == b.backbone_id
    # other weights: another id
    other = tiny_random_backbone(seed=9)
    assert other.backbone_id != tiny_random_backbone(seed=0).backbone_id
    # other weights in files of the same names and sizes, in a folder of the same name: another id
    # (an id of names and sizes gave both the same one, and a file decoded into garbage)
    from safetensors.torch import load_file, save_file

    same = shutil.copytree(sd_folder, tmp_path / "elsewhere" / sd_folder.name)
    weights = same / "unet/diffusion_pytorch_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == (sd_folder / "unet/diffusion_pytorch_model.safetensors").stat().st_size
    assert load_backbone(str(same), device="cpu").backbone_id != b.backbone_id


def test_fp16_variant_only_folder_loads(tmp_path, sd_folder):
    """Issue 11, fault 6: a cache with only ``*.fp16.safetensors`` loads (variant and dtype passed)."""
    from egc_lite.models.tiny import write_fp16_variant_folder

    folder = write_fp16_variant_folder(sd_folder, tmp_path / "fp16-only")
    assert not list(folder.rglob("diffusion_pytorch_model.safetensors"))
    b = load_backbone(str(folder), device="cpu")
    assert b.dtype == torch.float32 and next(b.unet.parameters()).dtype == torch.float32
    ref = load_backbone(str(sd_folder), device="cpu")
    for p, q in zip(b.unet.parameters(), ref.unet.parameters()):
        assert torch.equal(p, q.half().float())


def test_broken_weights_raise_model_not_found(tmp_path, sd_folder):
    folder = shutil.copytree(sd_folder, tmp_path / "broken")
    (folder / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        load_backbone(str(folder), device="cpu")


def test_sample_prediction_type_is_refused(tmp_path, sd_folder):
    folder = shutil.copytree(sd_folder, tmp_path / "x0")
    cfg = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    (folder / "scheduler/scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "sample"}))
    with pytest.raises(ModelNotFoundError, match="predicts 'sample'"):
        load_backbone(str(folder), device="cpu")


def test_vae_follows_the_unet_dtype(monkeypatch, sd_folder):
    """Issue 11, fault 6: on float16 (CUDA) the VAE was upcast to float32 beside the float16 UNet
    (``force_upcast`` in SD's config): both now run in the UNet's dtype. Loaded, not run: the CPU
    stands in for the GPU here."""
    import egc_lite.backbone as bb

    monkeypatch.setattr(bb, "resolve_device", lambda device="auto", dtype=None: (torch.device("cpu"), torch.float16))
    b = bb.load_backbone(str(sd_folder))
    assert b.vae.config.force_upcast  # diffusers' default, as in SD's own VAE configs
    assert next(b.unet.parameters()).dtype == torch.float16
    assert b.vae_dtype == torch.float16


# ---------------------------------------------------------------- issue 13: bf16 inference
@pytest.mark.parametrize("fast, env, expected", [(True, None, "bf16"), (False, None, "fp32"), (True, "fp32", "fp32"),
                                                 (False, "bf16", "bf16")])
def test_load_backbone_decides_the_inference_precision(monkeypatch, sd_folder, fast, env, expected):
    import egc_lite.precision as precision

    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast)
    if env is None:
        monkeypatch.delenv("EGC_PRECISION", raising=False)
    else:
        monkeypatch.setenv("EGC_PRECISION", env)
    for spec in ("tiny-random", str(sd_folder)):
        b = load_backbone(spec, device="cpu")
        assert b.inference_precision == expected
        conv_in = b.unet.conv_in.weight
        assert conv_in.is_contiguous(memory_format=torch.channels_last) == (expected == "bf16")
        assert b.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last) == (expected == "bf16")
        assert b.vae.encoder.conv_in.weight.is_contiguous()  # the encoder is never touched
        with b.inference_autocast():
            out = b.unet.conv_in(torch.rand(1, 4, 8, 8))
        assert out.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)
    assert load_backbone("tiny-random", device="cpu", precision="fp32").inference_precision == ("bf16" if env == "bf16" else "fp32")


def test_encoder_stays_float32_under_a_bf16_backbone(tiny_by_precision):
    """Codec B's compressor decides its symbols from z0: a bf16 backbone encodes bit for bit as a float32
    one, even inside a caller's bf16 autocast."""
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    z32 = tiny_by_precision["fp32"].encode(x)
    z = tiny_by_precision["bf16"].encode(x)
    assert z.dtype == torch.float32 and torch.equal(z, z32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(tiny_by_precision["bf16"].encode(x), z32)


def test_bf16_decode_is_deterministic_and_close_to_float32(tiny_by_precision):
    """The decoder runs in bf16 (it differs from float32, so autocast is on) and stays within bf16's
    rounding of it (measured: relative RMS 0.026, max 0.041 on this random VAE); two calls agree bit for bit."""
    z = torch.randn(2, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tiny_by_precision["fp32"].decode(z)
        a, b = (tiny_by_precision["bf16"].decode(z) for _ in range(2))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    diff = a - ref
    assert float(diff.abs().max()) > 0
    assert float(diff.pow(2).mean().sqrt() / ref.std()) < 0.06 and float(diff.abs().max()) < 0.1


def test_backbone_with_a_tiny_autoencoder_round_trips_through_a_folder(tmp_path, smooth_image):
    """An AutoencoderTiny backbone: deterministic /8 latents, the class kept by save and load, the same id."""
    from diffusers import AutoencoderTiny

    from egc_lite.models.tiny import TEST_TINY_AE_CONFIG, write_fp16_variant_folder, write_tiny_sd_folder

    b = tiny_random_backbone(seed=0, cfg=TEST_TINY_AE_CONFIG, precision="fp32")
    assert isinstance(b.vae, AutoencoderTiny) and b.vae_factor == 8 and b.size_multiple == 16
    assert b.backbone_id != tiny_random_backbone(seed=0).backbone_id  # another autoencoder: another id
    x = smooth_image(64, 48, seed=1, batch=1)
    with torch.no_grad():
        z = b.encode(x)
        assert z.shape == (1, 4, 8, 6) and torch.equal(z, b.encode(x))
        y = b.decode(z)
    assert y.shape == (1, 3, 64, 48) and torch.isfinite(y).all()
    again = load_backbone(str(save_backbone(b, tmp_path / "bb")), device="cpu", precision="fp32")
    assert isinstance(again.vae, AutoencoderTiny) and again.backbone_id == b.backbone_id
    with torch.no_grad():
        assert torch.equal(again.encode(x), z) and torch.equal(again.decode(z), y)
    # in an SD folder (a user's TAESD in vae/), also one holding only float16 weights
    sd = write_tiny_sd_folder(tmp_path / "sd-taesd", seed=2, cfg=TEST_TINY_AE_CONFIG)
    half = write_fp16_variant_folder(sd, tmp_path / "sd-taesd-fp16")
    full, fp16 = (load_backbone(str(folder), device="cpu") for folder in (sd, half))
    for loaded in (full, fp16):
        assert isinstance(loaded.vae, AutoencoderTiny) and loaded.vae_dtype == torch.float32 and loaded.bos
    assert all(torch.equal(p.half(), q.half()) for p, q in zip(full.vae.state_dict().values(), fp16.vae.state_dict().values()))


def test_bf16_inference_puts_the_tiny_decoder_in_channels_last():
    from egc_lite.models.tiny import TEST_TINY_AE_CONFIG

    b = tiny_random_backbone(seed=0, cfg=TEST_TINY_AE_CONFIG, precision="bf16")
    first = b.vae.decoder.layers[0].weight
    assert b.inference_precision == "bf16" and first.is_contiguous(memory_format=torch.channels_last)
    assert b.vae.encoder.layers[0].weight.is_contiguous()  # the encoder stays as built (float32 path)
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        fp32 = tiny_random_backbone(seed=0, cfg=TEST_TINY_AE_CONFIG, precision="fp32").decode(z)
        assert torch.allclose(b.decode(z), fp32, atol=0.05)
