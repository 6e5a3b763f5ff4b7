"""The small backbones' architecture: the autoencoder type and its checks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from diffusers import AutoencoderKL, AutoencoderTiny

from egc_lite.errors import ParameterError
from egc_lite.models.tiny import TAESD_CHANNELS, TEST_CONFIG, TinyBackboneConfig, build_components, build_vae


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_autoencoder_is_still_autoencoder_kl():
    assert TinyBackboneConfig().vae_type == "kl" and isinstance(build_vae(TEST_CONFIG), AutoencoderKL)


def test_taesd_widths_and_blocks_build_diffusers_default_tiny_autoencoder():
    cfg = TinyBackboneConfig(vae_type="tiny", vae_channels=TAESD_CHANNELS)
    vae = build_vae(cfg)
    reference = AutoencoderTiny()  # TAESD's architecture as diffusers ships it
    assert isinstance(vae, AutoencoderTiny) and _params(vae) == _params(reference)
    assert {k: v.shape for k, v in vae.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert tuple(vae.config.num_decoder_blocks) == (3, 3, 3, 1)  # the decoder mirrors the encoder's blocks


def test_tiny_autoencoder_follows_latent_channels_and_blocks():
    cfg = TinyBackboneConfig(vae_type="tiny", vae_channels=(16,) * 4, vae_blocks=(1, 2, 2, 2), latent_channels=8)
    comps = build_components(cfg)
    assert comps.vae.config.latent_channels == 8 and comps.unet.config.in_channels == 8
    assert tuple(comps.vae.config.num_encoder_blocks) == (1, 2, 2, 2)
    assert tuple(comps.vae.config.encoder_block_out_channels) == (16, 16, 16, 16)


def test_tiny_autoencoder_settings_are_checked():
    with pytest.raises(ParameterError, match="one width on every level"):
        TinyBackboneConfig(vae_type="tiny", vae_channels=(64, 128, 256, 256))
    with pytest.raises(ParameterError, match="one count per level"):
        TinyBackboneConfig(vae_type="tiny", vae_channels=TAESD_CHANNELS, vae_blocks=(1, 3, 3))
    with pytest.raises(ParameterError, match="vae_type"):
        replace(TEST_CONFIG, vae_type="vq")
    TinyBackboneConfig(vae_channels=(64, 128, 256, 256))  # a KL autoencoder may widen per level


def test_a_shifted_schedule_divides_every_levels_snr_by_the_shift_squared():
    import torch

    from egc_lite.models.tiny import build_scheduler

    plain, shifted = build_scheduler().alphas_cumprod.double(), build_scheduler(shift=3.0).alphas_cumprod.double()
    snr = lambda a: a / (1 - a)  # noqa: E731
    assert torch.allclose(snr(shifted), snr(plain) / 9, rtol=1e-4)
    assert bool((shifted < plain).all()) and float(shifted[-1]) < float(plain[-1])  # more noise everywhere
    assert torch.equal(build_scheduler(shift=1.0).alphas_cumprod, build_scheduler().alphas_cumprod)


def test_taef2_backbone_settings_are_checked():
    with pytest.raises(ParameterError, match="32 latent channels"):
        TinyBackboneConfig(vae_type="taef2", latent_channels=4)
    with pytest.raises(ParameterError, match="schedule_shift"):
        TinyBackboneConfig(schedule_shift=0.5)
    with pytest.raises(ParameterError, match="prediction_type"):
        TinyBackboneConfig(prediction_type="sample")
    comps = build_components(replace(TEST_CONFIG, vae_type="taef2", latent_channels=32, schedule_shift=2.0,
                                     prediction_type="v_prediction"))
    assert type(comps.vae).__name__ == "TAEF2" and comps.unet.config.in_channels == 32
    assert comps.scheduler.config.prediction_type == "v_prediction" and comps.scheduler.config.trained_betas is not None
