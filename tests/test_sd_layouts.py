"""Tiny random models in each real Stable Diffusion configuration, loaded from disk like a user's folder
(issue 11): both codecs compress and decompress on each; rate points and priors live per backbone id;
training runs under `accelerate launch` with two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from egc_lite.backbone import load_backbone
from egc_lite.codecs import CompressOptions, DiffEICCodec, TextInvCodec, TextInvConfig
from egc_lite.codecs.textual_inversion import InversionConfig
from egc_lite.errors import EGCWarning
from egc_lite.sampling.ddim import SamplerConfig

LAYOUTS = ["sd15", "sd21-base", "sd21", "sd15-fp16", "sd15-taesd"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from egc_lite.models.tiny import TEST_TINY_AE_CONFIG, write_fp16_variant_folder, write_tiny_sd_folder

    root = tmp_path_factory.mktemp("sd-layouts")
    out = {name: write_tiny_sd_folder(root / name, seed=1, layout=name) for name in ("sd15", "sd21-base", "sd21")}
    out["sd15-fp16"] = write_fp16_variant_folder(out["sd15"], root / "sd15-fp16")
    # SD 1.5 with a TAESD (AutoencoderTiny) in vae/, as a user swaps in a fast autoencoder
    out["sd15-taesd"] = write_tiny_sd_folder(root / "sd15-taesd", seed=1, layout="sd15", cfg=TEST_TINY_AE_CONFIG)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_codecs_round_trip_on_each_layout(folders, layout, smooth_image):
    from egc_lite.coding.entropy import update_tables
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel

    b = load_backbone(str(folders[layout]), device="cpu")
    assert type(b.vae).__name__ == ("AutoencoderTiny" if layout.endswith("taesd") else "AutoencoderKL")
    assert b.bos and b.n_tokens == 77 and b.cond_dim == (768 if layout.startswith("sd15") else 1024)
    assert b.prediction_type == ("v_prediction" if layout == "sd21" else "epsilon")
    x = smooth_image(256, 256, seed=2)
    with pytest.warns(EGCWarning, match="no fitted embedding prior"):
        a = TextInvCodec(b, TextInvConfig(inversion=InversionConfig(steps=4, lr=0.1), sampler=SamplerConfig(steps=2, guidance_scale=2.0),
                                          embedding_share=0.5))
    bs = a.compress(x, CompressOptions(bpp=0.07, steps=2))
    assert bs.bpp() <= 0.07 * 1.01 and (bs.params["t0"], bs.params["nt"]) == (1, 4)  # 4 tokens after BOS
    sym = a.decode_embedding(bs.sections["emb"], bs.params["nt"], bs.params["dq"] / 10_000)
    # the embedding carries something at 0.07 bpp (with half the budget: a random UNet and the unfitted
    # prior leave Adam's nearly equal coordinates all above or all below the rounding threshold)
    assert int((sym != 0).sum()) > 0
    assert a.decompress(bs).shape == (3, 256, 256)
    model = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8), b, seed=0).eval()
    update_tables(model.compressor, update_quantiles=True)
    codec_b = DiffEICCodec(b, model=model)
    y = codec_b.decompress(codec_b.compress(x, CompressOptions(steps=2)))
    assert y.shape == (3, 256, 256) and bool(torch.isfinite(y).all())


@pytest.mark.parametrize("layout", ["sd15", "sd21"])
def test_reference_control_on_stable_diffusions_block_structure(layout):
    """The reference's control module on SD's own block structure (four levels, two ResNets per block, the last
    level without attention; SD 2.1's per-level heads and linear projections), at a tiny width: 12 encoder and 12
    decoder residuals, zero-initialised, and with non-zero projections exactly the reference's loop."""
    from diffusers import UNet2DConditionModel

    from egc_lite.models.diffeic.config import DiffEICConfig, unet_summary
    from egc_lite.models.diffeic.model import DiffEICModel
    from tests.models.diffeic.test_control import _randomise_projections, _reference_loop

    heads = 8 if layout == "sd15" else (5, 10, 20, 20)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(40, 80, 160, 160), layers_per_block=2, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=heads, use_linear_projection=layout == "sd21",
    ).eval().requires_grad_(False)
    model = DiffEICModel(DiffEICConfig(N=8, M=8), unet_summary(unet), 4, 8, unet=unet).eval()
    assert model.control.widths == [8, 16, 32, 32]
    assert model.control.heads == ([8, 8, 8, 8] if layout == "sd15" else [4, 8, 16, 16])  # SD 2.1: 16-channel heads, as the reference
    z, c = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    t, cond = torch.tensor([5, 900]), torch.randn(2, 3, 32)
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=cond).sample
        assert torch.equal(model.predict_noise(unet, z, t, cond, c), plain)
        _randomise_projections(model, 3)
        enc, mid, dec = model.control(z, t, cond, c)
        assert len(enc) == len(dec) == 12
        out = model.predict_noise(unet, z, t, cond, c)
        assert torch.allclose(out, _reference_loop(unet, enc, mid, dec, z, t, cond), atol=1e-5)
    assert float((out - plain).abs().max()) > 1e-3


def test_rate_points_are_kept_per_backbone_id(tmp_path, tiny_backbone, smooth_image, monkeypatch):
    """Fault 5: exported points go to <root>/<backbone id>/qN; --weights names any folder of points."""
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel, save_diffeic
    from egc_lite.weights import rate_points_root

    monkeypatch.setenv("EGC_DIFFEIC_WEIGHTS", str(tmp_path / "points"))
    model = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8), tiny_backbone, seed=0).eval()
    save_diffeic(model, rate_points_root() / tiny_backbone.backbone_id / "q2", tiny_backbone.backbone_id)
    x = smooth_image(64, 64, seed=1)
    bs = DiffEICCodec(tiny_backbone).compress(x, CompressOptions(quality=2, steps=2))
    assert DiffEICCodec(tiny_backbone).decompress(bs).shape == (3, 64, 64)
    own = tmp_path / "mine"
    save_diffeic(model, own / "q4", tiny_backbone.backbone_id)
    assert DiffEICCodec(tiny_backbone, weights_dir=own).available_qualities() == [4]
    assert DiffEICCodec(tiny_backbone).available_qualities() == [2]  # the shipped egc-tiny points are not this backbone's


def test_prior_fitting_never_writes_into_the_model_folder(tmp_path, folders, monkeypatch):
    """Fault 3: the prior goes to the user's prior folder for the backbone id; the id does not change."""
    from egc_lite.cli import main
    from egc_lite.codecs.textual_inversion import EmbeddingPrior
    from egc_lite.weights import prior_path

    monkeypatch.setenv("EGC_PRIORS", str(tmp_path / "priors"))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(photos / "a.png")
    folder = folders["sd21-base"]
    before = sorted(p.name for p in folder.rglob("*"))
    bid = load_backbone(str(folder), device="cpu").backbone_id
    assert main(["train", "textinv-prior", "--backbone", str(folder), "--data", str(photos), "--images", "1",
                 "--inversion-steps", "1", "--device", "cpu"]) == 0
    assert sorted(p.name for p in folder.rglob("*")) == before
    b = load_backbone(str(folder), device="cpu")
    assert b.backbone_id == bid and prior_path(bid).is_file()
    assert EmbeddingPrior.for_backbone(b).fitted


def test_two_process_training_keeps_ranks_equal(tmp_path, folders, photo_folder):
    """Fault 7: `accelerate launch --cpu --num_processes 2`, two steps of codec B on a tiny SD folder."""
    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    # `--cpu` alone runs one process (accelerate needs MPI for several CPU ranks): torchrun via --multi_gpu,
    # with every rank on the CPU (ACCELERATE_USE_CPU, and --device cpu), gives two gloo ranks
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EGC_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "egc_lite.cli", "train", "diffeic", "--lmbda", "1",
           "--backbone", str(folders["sd15"]), "--ckpt", str(ckpt), "--data", str(photos), "--steps", "2",
           "--batch-size", "1", "--crop", "64", "--n", "8", "--m", "8", "--device", "cpu", "--threads", "1"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = json.loads((ckpt / "ranks.json").read_text())
    assert ranks == {"step": 2, "processes": 2, "ranks_equal": True}
