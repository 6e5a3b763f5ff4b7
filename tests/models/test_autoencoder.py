"""The two autoencoder classes behind one interface: latents, downsampling, the class a folder names,
gradient checkpointing, the decoder's memory estimate."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from egc_lite.errors import ModelNotFoundError
from egc_lite.models.autoencoder import (
    decoder_last_layer,
    enable_gradient_checkpointing,
    encoder_modules,
    load_vae,
    save_vae,
    vae_class_in,
    vae_downsampling,
    vae_latent,
)
from egc_lite.models.memory import DECODER_MAPS, PASS_OVERHEAD, vae_decoder_bytes
from egc_lite.models.tiny import TEST_CONFIG, TEST_TINY_AE_CONFIG, build_vae


@pytest.fixture(scope="module")
def vaes() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"kl": build_vae(TEST_CONFIG).eval(), "tiny": build_vae(TEST_TINY_AE_CONFIG).eval()}


def test_latents_are_deterministic_and_eight_times_smaller(vaes):
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        for vae in vaes.values():
            z = vae_latent(vae, x)
            assert z.shape == (2, 4, 8, 6) and torch.equal(z, vae_latent(vae, x))
            assert vae_downsampling(vae.config) == 8
        assert torch.equal(vae_latent(vaes["kl"], x), vaes["kl"].encode(x).latent_dist.mean)  # the posterior mean
        assert torch.equal(vae_latent(vaes["tiny"], x), vaes["tiny"].encode(x).latents)
    assert isinstance(vaes["tiny"], AutoencoderTiny) and "block_out_channels" not in TEST_TINY_AE_CONFIG.to_dict()


def test_downsampling_counts_the_encoder_levels_of_either_config():
    assert vae_downsampling({"block_out_channels": [128, 256, 512, 512]}) == 8  # SD's VAE
    assert vae_downsampling({"encoder_block_out_channels": [64, 64, 64], "block_out_channels": [64, 64, 64, 64]}) == 4


def test_encoder_and_last_decoder_layer_of_each_class(vaes):
    kl, tiny = vaes["kl"], vaes["tiny"]
    assert encoder_modules(kl) == [kl.encoder, kl.quant_conv] and encoder_modules(tiny) == [tiny.encoder]
    for vae in (kl, tiny):
        last = decoder_last_layer(vae)
        assert last.shape[0] == 3 and last is list(vae.decoder.parameters())[-2]  # the output convolution's weight


def test_checkpointing_leaves_the_tiny_encoders_latent_alone():
    """diffusers' EncoderTiny skips its input rescaling on the checkpointed path: the helper keeps it off there."""
    torch.manual_seed(0)
    vae = build_vae(TEST_TINY_AE_CONFIG)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae_latent(vae, x)
    enable_gradient_checkpointing(vae)
    assert vae.decoder.gradient_checkpointing and not vae.encoder.gradient_checkpointing
    z = vae_latent(vae, x)  # gradients on
    assert z.requires_grad and torch.allclose(z, before, atol=1e-6)
    vae.decode(z).sample.mean().backward()  # the checkpointed decoder still back-propagates
    assert vae.encoder.layers[0].weight.grad is not None


def test_folders_are_loaded_with_the_class_their_config_names(tmp_path, vaes):
    for name, vae in vaes.items():
        vae.save_pretrained(tmp_path / name / "vae")
        assert vae_class_in(tmp_path / name / "vae") is type(vae)
        loaded = load_vae(tmp_path / name)
        assert type(loaded) is type(vae)
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    assert vae_class_in(tmp_path / "missing") is AutoencoderKL  # loading then fails with diffusers' message
    config = tmp_path / "odd" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"_class_name": "AutoencoderDC"}))
    with pytest.raises(ModelNotFoundError, match="AutoencoderDC"):
        vae_class_in(config.parent)


def test_saved_folders_load_without_config_warnings(tmp_path, vaes):
    """diffusers registers ``block_out_channels`` on an ``AutoencoderTiny`` but warns when a config has it:
    ``save_vae`` leaves it out, so loading the folder logs no warning."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger("diffusers")  # diffusers' loggers do not propagate to the root logger
    root.addHandler(handler)
    try:
        for name, vae in vaes.items():
            save_vae(vae, tmp_path / name / "vae")
            loaded = load_vae(tmp_path / name)
            assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), vae.state_dict().values()))
    finally:
        root.removeHandler(handler)
    assert [r.getMessage() for r in records] == []


def test_tiny_decoder_memory_estimate_has_no_attention_and_grows_with_the_image(vaes):
    kl, tiny = dict(vaes["kl"].config), dict(vaes["tiny"].config)
    small, large = vae_decoder_bytes(tiny, 64, 64, 1), vae_decoder_bytes(tiny, 512, 768, 1)
    assert large - PASS_OVERHEAD == (small - PASS_OVERHEAD) * 96  # feature maps only: linear in the pixels
    with_attention = vae_decoder_bytes({**kl, "mid_block_add_attention": True}, 512, 768, 1)  # SD's VAE
    assert with_attention > vae_decoder_bytes(kl, 512, 768, 1) + (96 * 64) ** 2 * 4 - 1  # its mid attention counts
    # the tiny decoder's maps: its widths per level, fine to coarse (here all 8), DECODER_MAPS each, float32
    assert large - PASS_OVERHEAD == int(sum(DECODER_MAPS * 8 * (512 // 2**i) * (768 // 2**i) * 4 for i in range(4)))
