"""egc-tiny's training pipeline, two steps per phase on a tiny architecture, then export and load."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from PIL import Image

from egc_lite.backbone import load_backbone
from egc_lite.cli import main
from egc_lite.models.tiny import TEST_CONFIG, TEST_TINY_AE_CONFIG, ImageTokenEncoder, build_components, build_unet
from egc_lite.sampling.ddim import SamplerConfig, ddim_sample
from egc_lite.training.backbone import (
    BackboneTrainConfig,
    _load_unet,
    _param_groups,
    _regroup_optimizer_state,
    checkpoint_arch,
    export_backbone,
    export_vae,
    train,
)
from egc_lite.training.losses import DenoisingLoss


def test_two_steps_per_phase_resume_and_export(tmp_path, photo_folder):
    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    common = dict(ckpt_dir=str(ckpt), data_dir=str(photos), batch_size=2, crop=64, arch=TEST_CONFIG, log_every=1, save_every=1)
    train(BackboneTrainConfig(phase="vae", steps=2, **common))
    first = torch.load(ckpt / "vae.pt", weights_only=False)
    assert first["step"] == 2
    train(BackboneTrainConfig(phase="vae", steps=3, lr=1e-3, **common))  # resumes from step 2, at the new rate
    resumed_vae = torch.load(ckpt / "vae.pt", weights_only=False)
    assert resumed_vae["step"] == 3 and all(g["lr"] == 1e-3 for g in resumed_vae["opt"]["param_groups"])
    assert len((ckpt / "vae_log.jsonl").read_text().splitlines()) == 3
    train(BackboneTrainConfig(phase="decoder", steps=2, **common))
    dec = torch.load(ckpt / "decoder.pt", weights_only=False)
    enc_keys = [k for k in dec["vae"] if k.startswith("encoder.")]
    assert all(torch.equal(dec["vae"][k], torch.load(ckpt / "vae.pt", weights_only=False)["vae"][k]) for k in enc_keys)
    train(BackboneTrainConfig(phase="unet", steps=2, snr_gamma=5.0, **common))
    log = [json.loads(line) for line in (ckpt / "unet_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["loss"] > 0 for r in log)
    out = export_backbone(ckpt, tmp_path / "exported")
    b = load_backbone(str(out), device="cpu")
    assert b.latent_scale > 0 and b.n_tokens == TEST_CONFIG.n_tokens
    z = ddim_sample(b, b.null_cond, (8, 8), SamplerConfig(steps=2, guidance_scale=2.0))
    assert torch.isfinite(b.decode(z)).all()
    # training goes on from the exported weights when the checkpoints are gone
    fresh = tmp_path / "fresh"
    again = dict(common, ckpt_dir=str(fresh), init_from=str(out))
    train(BackboneTrainConfig(phase="unet", steps=1, **again))
    resumed = torch.load(fresh / "unet.pt", weights_only=False)
    assert resumed["step"] == 1 and abs(resumed["latent_scale"] / b.latent_scale - 1) < 1e-2


def test_unet_weights_of_an_older_architecture_keep_the_new_pooled_path_at_zero():
    old = build_unet(replace(TEST_CONFIG, global_cond_heads=0))
    new = build_unet(TEST_CONFIG)
    _load_unet(new, old.state_dict(), partial=True)
    assert torch.equal(new.conv_in.weight, old.conv_in.weight)
    assert not new.add_embedding.norm2.weight.any() and not new.add_embedding.norm2.bias.any()
    with pytest.raises(RuntimeError):  # a resumed checkpoint must fit exactly
        _load_unet(build_unet(TEST_CONFIG), old.state_dict(), partial=False)
    with pytest.raises(ValueError, match="do not fit"):
        _load_unet(old, new.state_dict(), partial=True)


def test_min_snr_weights_lower_only_the_nearly_clean_timesteps():
    comps = build_components(TEST_CONFIG)
    alphas = comps.scheduler.alphas_cumprod
    encoder = ImageTokenEncoder(TEST_CONFIG)
    plain = DenoisingLoss(comps.unet, encoder, comps.null_cond, alphas, 0.1)
    weighted = DenoisingLoss(comps.unet, encoder, comps.null_cond, alphas, 0.1, snr_gamma=5.0)
    t = torch.tensor([0, 100, 300, 600, 999])
    assert torch.equal(plain.weights(t), torch.ones(5))
    w = weighted.weights(t)
    assert w[0] < 0.01 and torch.all(w[1:] >= w[:-1]) and w[-1] == 1.0  # grows with t, 1 once SNR <= gamma
    snr = alphas[t] / (1 - alphas[t])
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    z0, eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randn(2, 4, 8, 8)
    keep = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        for level, w_level in [(999, 1.0), (0, float(w[0]))]:  # the weight scales the loss of its samples
            ts = torch.tensor([level, level])
            assert torch.allclose(weighted(z0, ts, eps, keep), w_level * plain(z0, ts, eps, keep))
    with pytest.raises(ValueError, match="snr_gamma"):
        DenoisingLoss(comps.unet, encoder, comps.null_cond, alphas, 0.1, snr_gamma=0.0)


def _one_group_optimizer_after_a_step() -> tuple[DenoisingLoss, torch.optim.AdamW]:
    """A tiny UNet-phase model and an AdamW over all its parameters in one group (the layout of
    checkpoints written before the conditioning group), after one step so that it has moments."""
    comps = build_components(TEST_CONFIG)
    model = DenoisingLoss(comps.unet, ImageTokenEncoder(TEST_CONFIG), comps.null_cond, comps.scheduler.alphas_cumprod, 0.1)
    one = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model(z0, torch.tensor([10, 500]), torch.randn_like(z0), torch.tensor([False, True])).backward()
    one.step()
    return model, one


def test_conditioning_group_gets_its_own_rate_and_old_one_group_states_are_split():
    model, one = _one_group_optimizer_after_a_step()
    groups = _param_groups(model, BackboneTrainConfig(phase="unet", lr=1e-3, cond_lr_scale=4.0))
    assert [g["lr"] for g in groups] == [1e-3, 4e-3]
    cond = {id(p) for p in groups[1]["params"]}
    assert len(cond) + len(groups[0]["params"]) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, p in model.named_parameters():
        expected = name == "null_cond" or name.startswith(("encoder.", "unet.add_embedding.")) or ".attn2." in name
        assert (id(p) in cond) == expected, name
    two = torch.optim.AdamW(groups, lr=1e-3)
    two.load_state_dict(_regroup_optimizer_state(one.state_dict(), model, groups))
    assert torch.equal(two.state[model.null_cond]["exp_avg"], one.state[model.null_cond]["exp_avg"])
    assert torch.equal(two.state[model.unet.conv_in.weight]["exp_avg_sq"], one.state[model.unet.conv_in.weight]["exp_avg_sq"])
    assert len(_param_groups(model, BackboneTrainConfig(phase="decoder"))) == 1


def test_a_one_group_unet_checkpoint_resumes_with_the_conditioning_group(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    arr = (torch.rand(80, 112, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    Image.fromarray(arr).save(photos / "0.png")
    common = dict(ckpt_dir=str(tmp_path / "ckpt"), data_dir=str(photos), batch_size=2, crop=64, arch=TEST_CONFIG, save_every=1)
    train(BackboneTrainConfig(phase="vae", steps=1, **common))
    path = train(BackboneTrainConfig(phase="unet", steps=1, **common))
    # rewrite its optimizer state as the older one-group layout (parameters in model order)
    blob = torch.load(path, weights_only=False)
    _, one = _one_group_optimizer_after_a_step()
    blob["opt"] = one.state_dict()
    torch.save(blob, path)
    train(BackboneTrainConfig(phase="unet", steps=2, lr=2e-4, cond_lr_scale=3.0, **common))
    resumed = torch.load(path, weights_only=False)
    assert resumed["step"] == 2
    assert [g["lr"] for g in resumed["opt"]["param_groups"]] == pytest.approx([2e-4, 6e-4])


def test_adversarial_decoder_phase_keeps_the_encoder_and_resumes_its_critic(tmp_path):
    photos = tmp_path / "a"
    more = tmp_path / "b"
    g = torch.Generator().manual_seed(1)
    for folder in (photos, more):
        folder.mkdir()
        arr = (torch.rand(72, 96, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(arr).save(folder / "0.png")
    ckpt = tmp_path / "ckpt"
    common = dict(ckpt_dir=str(ckpt), data_dir=f"{photos}{os.pathsep}{more}", batch_size=2, crop=64, arch=TEST_CONFIG,
                  log_every=1, save_every=1, precision="fp32")
    train(BackboneTrainConfig(phase="vae", steps=1, **common))
    train(BackboneTrainConfig(phase="unet", steps=1, **common))
    out = export_backbone(ckpt, tmp_path / "exported")
    adv = dict(common, adv_weight=0.1, adv_start=1, lf_weight=1.0)
    train(BackboneTrainConfig(phase="decoder", steps=2, **adv))
    first = torch.load(ckpt / "decoder.pt", weights_only=False)
    log = [json.loads(line) for line in (ckpt / "decoder_log.jsonl").read_text().splitlines()]
    assert "critic" not in log[0] and log[1]["critic"] > 0  # the critic starts at adv_start
    train(BackboneTrainConfig(phase="decoder", steps=3, **adv))  # resumes generator and critic
    second = torch.load(ckpt / "decoder.pt", weights_only=False)
    assert second["step"] == 3
    assert any(not torch.equal(first["critic"][k], second["critic"][k]) for k in first["critic"])
    before = load_backbone(str(out), device="cpu")
    export_vae(ckpt, out)
    after = load_backbone(str(out), device="cpu")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(before.encode(x), after.encode(x), atol=1e-2)  # same latent space (float16 storage)
        assert not torch.allclose(before.decode(before.encode(x)), after.decode(after.encode(x)), atol=1e-3)
    assert after.latent_scale == before.latent_scale


def test_export_vae_refuses_a_checkpoint_with_another_encoder(tmp_path, capsys):
    photos = tmp_path / "p"
    photos.mkdir()
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(photos / "0.png")
    common = dict(data_dir=str(photos), batch_size=1, crop=64, arch=TEST_CONFIG, precision="fp32")
    train(BackboneTrainConfig(phase="vae", steps=1, ckpt_dir=str(tmp_path / "one"), **common))
    train(BackboneTrainConfig(phase="unet", steps=1, ckpt_dir=str(tmp_path / "one"), **common))
    out = export_backbone(tmp_path / "one", tmp_path / "exported")
    train(BackboneTrainConfig(phase="vae", steps=1, seed=5, ckpt_dir=str(tmp_path / "two"), **common))
    with pytest.raises(ValueError, match="encoder differs"):
        export_vae(tmp_path / "two", out)
    # the command line says the same on one line, exit status 2
    assert main(["train", "export", "--vae-only", "--ckpt", str(tmp_path / "two"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("egc: error:") and "encoder differs" in err and err.count("\n") == 1
    assert main(["train", "export", "--vae-only", "--ckpt", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no decoder.pt or vae.pt" in capsys.readouterr().err


def test_architecture_of_a_new_run_and_its_later_phases_comes_from_the_vae_checkpoint(tmp_path):
    """`egc train backbone --latent-channels 8 ...`: the unet phase and a resumed run keep vae.pt's architecture."""
    photos = tmp_path / "photos"
    photos.mkdir()
    arr = (torch.rand(72, 96, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy()
    Image.fromarray(arr).save(photos / "0.png")
    ckpt = tmp_path / "ckpt"
    wide = replace(TEST_CONFIG, latent_channels=8, vae_channels=(8, 16, 16, 16))
    common = dict(ckpt_dir=str(ckpt), data_dir=str(photos), batch_size=1, crop=64, log_every=1, save_every=1)
    train(BackboneTrainConfig(phase="vae", steps=1, arch=wide, **common))
    train(BackboneTrainConfig(phase="vae", steps=2, arch=TEST_CONFIG, **common))  # resumed: the checkpoint's widths win
    assert torch.load(ckpt / "vae.pt", weights_only=False)["vae"]["encoder.conv_in.weight"].shape[0] == 8
    train(BackboneTrainConfig(phase="unet", steps=1, arch=TEST_CONFIG, **common))  # latent channels from vae.pt
    b = load_backbone(str(export_backbone(ckpt, tmp_path / "exported")), device="cpu")
    assert b.latent_channels == 8 and b.unet.config.in_channels == 8
    z = ddim_sample(b, b.null_cond, (8, 8), SamplerConfig(steps=2, guidance_scale=2.0))
    assert z.shape == (1, 8, 8, 8) and torch.isfinite(b.decode(z)).all()


def test_cli_architecture_options_refuse_bad_lists(capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", "backbone", "--phase", "vae", "--vae-channels", "64,x"])
    assert err.value.code == 2 and "comma-separated integers" in capsys.readouterr().err


def test_low_mid_timestep_sampling_favours_the_levels_the_codecs_decode_at():
    from egc_lite.training.losses import sample_timesteps

    torch.manual_seed(0)
    uniform = sample_timesteps(40_000, 1000, "uniform")
    low_mid = sample_timesteps(40_000, 1000, "low-mid")
    assert int(uniform.min()) >= 0 and int(low_mid.max()) <= 999
    share = lambda t, a, b: float(((t >= a) & (t < b)).float().mean())  # noqa: E731
    assert abs(share(uniform, 0, 600) - 0.6) < 0.01
    # 0.75 * P(sigmoid(N(-0.5, 1)) < 0.6) + 0.25 * 0.6 = 0.75 * Phi(logit(0.6) + 0.5) + 0.15
    assert abs(share(low_mid, 0, 600) - (0.75 * 0.8174 + 0.15)) < 0.01
    assert share(low_mid, 900, 1000) > 0.025  # the pure-noise end keeps a share (the uniform part's 2.5% and more)
    with pytest.raises(ValueError, match="t_sampling"):
        sample_timesteps(4, 1000, "cosine")


def test_a_new_vae_starts_with_small_posterior_noise():
    from egc_lite.training.losses import INITIAL_LOGVAR, start_with_small_posterior_noise

    vae = build_components(TEST_CONFIG, seed=0).vae
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.encode(x).latent_dist
        start_with_small_posterior_noise(vae)
        after = vae.encode(x).latent_dist
    assert torch.equal(before.mean, after.mean)  # what the codecs read is unchanged
    assert float(after.std.max()) < 0.1 < float(before.std.mean())
    assert abs(float(after.logvar.mean()) - INITIAL_LOGVAR) < 0.5


def test_tiny_autoencoder_trains_resumes_exports_and_both_codecs_run_on_it(tmp_path, photo_folder, smooth_image):
    """vae_type "tiny": the vae phase (deterministic latent, no KL) resumes, the decoder phase keeps its encoder
    and balances the critic at its last layer, the unet phase takes the autoencoder from vae.pt; the export loads
    as an AutoencoderTiny backbone, on which codec A and codec B compress and decompress."""
    from diffusers import AutoencoderTiny

    from egc_lite.codecs import CompressOptions, DiffEICCodec, TextInvCodec, TextInvConfig
    from egc_lite.codecs.textual_inversion import InversionConfig
    from egc_lite.coding.entropy import update_tables
    from egc_lite.models.diffeic.config import DiffEICConfig
    from egc_lite.models.diffeic.model import DiffEICModel

    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    common = dict(ckpt_dir=str(ckpt), data_dir=str(photos), batch_size=2, crop=64, log_every=1, save_every=1, precision="fp32")
    train(BackboneTrainConfig(phase="vae", steps=2, arch=TEST_TINY_AE_CONFIG, **common))
    first = torch.load(ckpt / "vae.pt", weights_only=False)
    assert first["step"] == 2 and checkpoint_arch(first) == TEST_TINY_AE_CONFIG
    assert "encoder.layers.0.weight" in first["vae"] and not any(k.startswith("quant_conv.") for k in first["vae"])
    train(BackboneTrainConfig(phase="vae", steps=4, arch=TEST_CONFIG, **common))  # resumed: the checkpoint's autoencoder
    resumed = torch.load(ckpt / "vae.pt", weights_only=False)
    assert resumed["step"] == 4 and checkpoint_arch(resumed).vae_type == "tiny"
    assert not torch.equal(resumed["vae"]["encoder.layers.0.weight"], first["vae"]["encoder.layers.0.weight"])
    log = [json.loads(line) for line in (ckpt / "vae_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(r["kl"] == 0.0 and 0 < r["psnr"] < 60 for r in log)  # deterministic: no KL term
    adv = dict(common, arch=TEST_CONFIG, adv_weight=0.1, adv_start=1, lf_weight=1.0)
    train(BackboneTrainConfig(phase="decoder", steps=2, **adv))
    dec = torch.load(ckpt / "decoder.pt", weights_only=False)
    dlog = [json.loads(line) for line in (ckpt / "decoder_log.jsonl").read_text().splitlines()]
    assert "critic" not in dlog[0] and dlog[1]["critic"] > 0 and dlog[1]["adv_weight"] > 0
    assert all(torch.equal(v, resumed["vae"][k]) for k, v in dec["vae"].items() if k.startswith("encoder."))
    assert any(not torch.equal(v, resumed["vae"][k]) for k, v in dec["vae"].items() if k.startswith("decoder."))
    train(BackboneTrainConfig(phase="unet", steps=2, arch=TEST_CONFIG, **common))  # the autoencoder comes from vae.pt
    out = export_backbone(ckpt, tmp_path / "exported")
    assert json.loads((out / "model_index.json").read_text())["config"]["vae_type"] == "tiny"
    b = load_backbone(str(out), device="cpu")
    assert isinstance(b.vae, AutoencoderTiny) and b.latent_scale > 0 and b.vae_factor == 8
    assert abs(b.latent_scale - torch.load(ckpt / "unet.pt", weights_only=False)["latent_scale"]) < 1e-2 * b.latent_scale
    x = smooth_image(64, 64, seed=2)
    codec_a = TextInvCodec(b, TextInvConfig(inversion=InversionConfig(steps=2), sampler=SamplerConfig(steps=2, guidance_scale=2.0)))
    bs = codec_a.compress(x, CompressOptions(bpp=0.5, steps=2, seed=1))
    ya = codec_a.decompress(bs)
    assert bs.backbone_id == b.backbone_id and ya.shape == (3, 64, 64) and torch.equal(ya, codec_a.decompress(bs))
    model = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8), b, seed=0).eval()
    update_tables(model.compressor, update_quantiles=True)
    codec_b = DiffEICCodec(b, model=model)
    yb = codec_b.decompress(codec_b.compress(x, CompressOptions(steps=2)))
    assert yb.shape == (3, 64, 64) and bool(torch.isfinite(yb).all())
    # the decoder alone goes into the exported folder: same latents, other images
    before = load_backbone(str(out), device="cpu")
    train(BackboneTrainConfig(phase="decoder", steps=3, **adv))
    export_vae(ckpt, out)
    after = load_backbone(str(out), device="cpu")
    with torch.no_grad():
        assert torch.allclose(before.encode(x[None]), after.encode(x[None]), atol=1e-2)
        assert not torch.allclose(before.decode(before.encode(x[None])), after.decode(after.encode(x[None])), atol=1e-4)
    # training goes on from the exported folder when the checkpoints are gone
    fresh = tmp_path / "fresh"
    train(BackboneTrainConfig(phase="vae", steps=1, **dict(common, ckpt_dir=str(fresh), init_from=str(out), arch=TEST_CONFIG)))
    assert checkpoint_arch(torch.load(fresh / "vae.pt", weights_only=False)).vae_type == "tiny"


def test_cli_vae_type_tiny_builds_taesds_autoencoder_and_refuses_uneven_widths(capsys):
    import argparse

    from egc_lite.cli import _arch_from_args, build_parser

    def arch(*extra: str) -> argparse.Namespace:
        return _arch_from_args(build_parser().parse_args(["train", "backbone", "--phase", "vae", *extra]))

    assert arch().vae_type == "kl" and arch().vae_channels == (16, 32, 64, 128)  # unchanged default
    tiny = arch("--vae-type", "tiny", "--latent-channels", "8")
    assert (tiny.vae_type, tiny.vae_channels, tiny.vae_blocks, tiny.latent_channels) == ("tiny", (64,) * 4, (1, 3, 3, 3), 8)
    small = arch("--vae-type", "tiny", "--vae-channels", "32,32,32,32", "--vae-blocks", "1,2,2,2")
    assert (small.vae_channels, small.vae_blocks) == ((32,) * 4, (1, 2, 2, 2))
    assert main(["train", "backbone", "--phase", "vae", "--vae-type", "tiny", "--vae-channels", "64,128,256,256", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("egc: error:") and "one width on every level" in err and err.count("\n") == 1


def test_checkpoints_from_before_the_autoencoder_type_are_kl():
    state = {"config": {"arch": {k: v for k, v in TEST_CONFIG.to_dict().items() if k not in ("vae_type", "vae_blocks")}}}
    assert checkpoint_arch(state) == TEST_CONFIG and checkpoint_arch(state).vae_type == "kl"


def test_the_v_loss_is_the_squared_error_on_v():
    """DenoisingLoss on a v_prediction UNet: a UNet that outputs zeros pays E[v^2] with
    v = sqrt(a) eps - sqrt(1 - a) z0, computed here independently."""

    class Zeros(torch.nn.Module):
        def forward(self, zt, t, encoder_hidden_states):
            return type("Out", (), {"sample": torch.zeros_like(zt)})()

    arch = replace(TEST_CONFIG, prediction_type="v_prediction")
    comps = build_components(arch)
    alphas = comps.scheduler.alphas_cumprod
    loss_fn = DenoisingLoss(Zeros(), ImageTokenEncoder(arch), comps.null_cond, alphas, 0.0, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 990])
    a = alphas[t].view(-1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * z0
    got = loss_fn(z0, t, eps, torch.zeros(3, dtype=torch.bool))
    assert torch.allclose(got, v.pow(2).mean(dim=(1, 2, 3)).mean())
    with pytest.raises(ValueError, match="Min-SNR"):
        DenoisingLoss(Zeros(), ImageTokenEncoder(arch), comps.null_cond, alphas, 0.0, snr_gamma=5.0, prediction_type="v_prediction")


def test_a_taef2_unet_trains_on_the_released_autoencoder_and_exports_with_its_licence(tmp_path, photo_folder, monkeypatch):
    """vae_type "taef2": vae.pt is made from the released files (checksums checked) with the licence text, the
    unet phase trains a v_prediction UNet on a shifted schedule, and the export loads as a TAEF2 backbone with
    LICENSE beside the autoencoder's weights."""
    from egc_lite.errors import ParameterError
    from egc_lite.models.taef2 import TAEF2
    from egc_lite.training.backbone import pretrained_vae_checkpoint
    from tests.models.test_taef2 import _write_release

    released = _write_release(tmp_path / "taef2", monkeypatch)
    arch = replace(TEST_CONFIG, vae_type="taef2", latent_channels=32, schedule_shift=3.0, prediction_type="v_prediction")
    common = dict(ckpt_dir=str(tmp_path / "ckpt"), data_dir=str(photo_folder), batch_size=2, crop=64, log_every=1,
                  save_every=1, precision="fp32", arch=arch, scales=(1.0,))
    with pytest.raises(ParameterError, match="--vae-weights"):
        pretrained_vae_checkpoint(BackboneTrainConfig(phase="unet", **common), tmp_path)
    with pytest.raises(ParameterError, match="only the unet phase"):
        train(BackboneTrainConfig(phase="vae", steps=1, vae_weights=str(tmp_path / "taef2"), **common))
    train(BackboneTrainConfig(phase="unet", steps=2, vae_weights=str(tmp_path / "taef2"), **common))
    state = torch.load(tmp_path / "ckpt" / "unet.pt", weights_only=False)
    assert state["step"] == 2 and checkpoint_arch(state).prediction_type == "v_prediction"
    out = export_backbone(tmp_path / "ckpt", tmp_path / "exported")
    assert (out / "vae" / "LICENSE").read_text().startswith("MIT")
    b = load_backbone(str(out), device="cpu", precision="fp32")
    assert isinstance(b.vae, TAEF2) and b.latent_channels == 32 and b.prediction_type == "v_prediction"
    with torch.no_grad():
        enc = released.encoder.half().float()(torch.full((1, 3, 64, 64), 0.5))
        assert torch.allclose(b.encode(torch.full((1, 3, 64, 64), 0.5)), enc * b.latent_scale, atol=1e-2)
    z = ddim_sample(b, b.null_cond, (8, 8), SamplerConfig(steps=2, guidance_scale=2.0, seed=0))
    assert z.shape == (1, 32, 8, 8) and bool(torch.isfinite(b.decode(z)).all())
