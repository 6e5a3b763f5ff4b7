"""The taef2 autoencoder: its interface, its released weights, its folder, and its one global branch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from egc_lite.models import taef2
from egc_lite.models.autoencoder import decoder_last_layer, is_tiny, load_vae, save_vae, vae_downsampling, vae_latent
from egc_lite.models.taef2 import TAEF2, from_released

SHARED = Path(__file__).resolve().parents[3] / "shared" / "models" / "taef2"
SMALL = dict(width=16, pool_width=32, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1))


def _small(seed: int = 0) -> TAEF2:
    torch.manual_seed(seed)
    return TAEF2(**SMALL).eval()


def test_latents_are_32_channels_at_an_eighth_and_images_come_back_in_the_same_shape():
    vae = _small()
    x = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latents
        y = vae.decode(z).sample
    assert z.shape == (1, 32, 8, 6) and y.shape == x.shape
    with torch.no_grad():
        assert torch.equal(z, vae.encode(x).latents)  # deterministic


def test_images_in_minus_one_one_reach_the_networks_in_zero_one():
    vae = _small()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    z = torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        assert torch.allclose(vae.encode(x).latents, vae.encoder((x + 1) / 2))
        assert torch.allclose(vae.decode(z).sample, vae.decoder(z) * 2 - 1)


def test_the_decoder_soft_clamps_latents_to_three():
    vae = _small()
    clamp = vae.decoder[0]
    assert float(clamp(torch.tensor([100.0]))) == pytest.approx(3.0, abs=1e-4)
    assert float(clamp(torch.tensor([0.3]))) == pytest.approx(3 * torch.tanh(torch.tensor(0.1)).item(), rel=1e-6)


def test_only_the_pooled_blocks_see_beyond_their_receptive_field():
    """taef2's GroupNorm branch normalises over the whole image: a pixel far away changes the output (the
    caveat for tiling); with that branch removed the same change leaves the output unchanged."""
    vae = _small()
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    far = x.clone()
    far[..., -8:, -8:] = -1
    with torch.no_grad():
        moved = (vae.encode(x).latents - vae.encode(far).latents)[..., :2, :2].abs().max()
        for block in vae.encoder:
            if isinstance(block, taef2.Block):
                block.pool = None
        still = (vae.encode(x).latents - vae.encode(far).latents)[..., :2, :2].abs().max()
    assert moved > 0 and still == 0


def _write_release(folder: Path, monkeypatch, seed: int = 0) -> TAEF2:
    """A default-sized TAEF2 saved as the release's two float16 state dicts, its checksums made the expected ones."""
    torch.manual_seed(seed)
    model = TAEF2()
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, part in (("taef2_encoder.pth", model.encoder), ("taef2_decoder.pth", model.decoder)):
        torch.save({k: v.half() for k, v in part.state_dict().items()}, folder / name)
        digests[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "LICENSE").write_text("MIT License (test copy)\n")
    monkeypatch.setattr(taef2, "RELEASED_FILES", digests)
    return model


def test_released_files_load_by_index_keys_and_other_files_are_refused(tmp_path, monkeypatch):
    model = _write_release(tmp_path / "rel", monkeypatch)
    loaded = from_released(tmp_path / "rel")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float())
    with open(tmp_path / "rel" / "taef2_decoder.pth", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match="not taef2's released file"):
        from_released(tmp_path / "rel")
    (tmp_path / "rel" / "taef2_encoder.pth").unlink()
    with pytest.raises(FileNotFoundError, match="taef2_encoder.pth"):
        from_released(tmp_path / "rel")


def test_saved_as_a_vae_folder_it_loads_back_as_a_deterministic_autoencoder_of_factor_8(tmp_path):
    vae = _small(3)
    save_vae(vae, tmp_path / "vae")
    back = load_vae(tmp_path)
    assert isinstance(back, TAEF2) and is_tiny(back) and vae_downsampling(back.config) == 8
    assert decoder_last_layer(back).shape == (3, 16, 3, 3)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vae_latent(back, x), vae_latent(vae, x))


@pytest.mark.skipif(not (SHARED / "taef2_encoder.pth").is_file(), reason="taef2's released weights are not beside this checkout (../shared/models/taef2)")
def test_the_released_weights_reconstruct_a_photo_crop():
    from egc_lite.data import kodak_paths, load_image
    from egc_lite.metrics import psnr

    vae = from_released(SHARED)
    try:
        x = load_image(kodak_paths()[22])[:, :256, :256]
    except Exception as exc:  # noqa: BLE001 - no Kodak here: the shipped photo instead
        pytest.skip(f"no Kodak images: {exc}")
    with torch.no_grad():
        y = (vae.decode(vae.encode(x[None] * 2 - 1).latents).sample[0] + 1) / 2
    assert psnr(y.clamp(0, 1), x) > 28
