"""DiffEIC's learned parts on a tiny random backbone: shapes, exact coding, control, save/load, training."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from egc_lite.coding.entropy import likelihood_bits, update_tables
from egc_lite.errors import BitstreamError, ModelNotFoundError, ParameterError
from egc_lite.models.diffeic.compressor import LatentCompressor
from egc_lite.models.diffeic.config import LEGACY_FIELDS, DiffEICConfig
from egc_lite.models.diffeic.control import control_widths
from egc_lite.models.diffeic.layers import HyperAnalysisSFT, checkerboard
from egc_lite.models.diffeic.model import DiffEICModel, load_compressor, load_diffeic, save_diffeic
from egc_lite.training.diffeic import DiffEICTrainConfig, export_diffeic, train_diffeic

REPO = Path(__file__).resolve().parents[1]
TINY = DiffEICConfig(N=16, M=24)
#: The compressor variants beside the shipped design (concat + no context, the ``model`` fixture).
VARIANTS = {
    "sft": replace(TINY, z0_modulation="sft", sft_channels=8),
    "checkerboard": replace(TINY, context="checkerboard"),
    "sft+slices": replace(TINY, z0_modulation="sft", sft_channels=8, context="checkerboard", context_slices=(4, 4, 8, 8)),
}
SHIPPED = REPO / "egc_lite" / "weights" / "diffeic"
#: config.json of the first egc-tiny rate point q1, written before the appended DiffEICConfig fields existed
#: (the rate points trained on other backbones then, in users' caches, look the same).
LEGACY_CONFIG = Path(__file__).parent / "data" / "diffeic_legacy_config.json"


def _spread(comp: LatentCompressor) -> None:
    """Scale the last layers of the random analysis transforms so that y and the hyper-latent span
    several integers (a fresh model's values all round to zero, which would make coding tests trivial)."""
    with torch.no_grad():
        (comp.g_a_sft.out if comp.g_a_sft is not None else comp.g_a2[-1]).weight.mul_(60)
        (comp.h_a.out if isinstance(comp.h_a, HyperAnalysisSFT) else comp.h_a[-1]).weight.mul_(40)


@pytest.fixture(scope="module")
def model(tiny_backbone):
    m = DiffEICModel.for_backbone(TINY, tiny_backbone, seed=0).eval()
    with torch.no_grad():  # spread y and the hyper-latent over several integers (fresh values all round to 0)
        m.compressor.g_a2[-1].weight.mul_(60)
        m.compressor.h_a[-1].weight.mul_(40)
    update_tables(m.compressor)
    return m


@pytest.fixture(scope="module")
def batch(tiny_backbone, smooth_image):
    x = smooth_image(64, 128, grid=(8, 16), seed=2, batch=2)
    with torch.no_grad():
        return x, tiny_backbone.encode(x)


def test_shapes_and_likelihoods(model, batch):
    x, z0 = batch
    with torch.no_grad():
        c, lik = model.compressor(x, z0)
    assert c.shape == z0.shape == (2, 4, 8, 16)
    assert lik["y"].shape == (2, TINY.M, 4, 8) and lik["z"].shape == (2, TINY.N, 1, 2)
    for v in lik.values():
        assert bool(((v > 0) & (v <= 1)).all())
    with pytest.raises(ParameterError, match="z0"):
        model.compressor.analysis(x, None)


@pytest.mark.parametrize("kind", ["cddm", "narrow"])
def test_control_is_zero_initialised_and_trainable(kind, batch, tiny_backbone):
    """A fresh control module leaves the UNet's output unchanged (bit for bit), and its zero-initialised output
    projections are what the first gradients move; the UNet gets none."""
    x, z0 = batch
    unet = tiny_backbone.unet
    t = torch.tensor([10, 700])
    cond = tiny_backbone.null_cond.expand(2, -1, -1)
    fresh = DiffEICModel.for_backbone(replace(TINY, control=kind), tiny_backbone, seed=0).eval()
    with torch.no_grad():
        ref = unet(z0, t, encoder_hidden_states=cond).sample
        assert torch.equal(fresh.predict_noise(unet, z0, t, cond, torch.randn_like(z0)), ref)
    trial = DiffEICModel.for_backbone(replace(TINY, control=kind), tiny_backbone, seed=0).train()
    c, _ = trial.compressor(x, z0)
    trial.predict_noise(unet, z0, t, cond, c).pow(2).mean().backward()
    assert all(p.grad is None for p in unet.parameters())
    outs = [p for m in trial.control.output_projections() for p in m.parameters()]
    assert outs and all(p.grad is not None for p in outs)
    assert any(float(p.grad.abs().sum()) > 0 for p in outs)
    assert all(float(p.detach().abs().sum()) == 0 for p in outs)  # still zero: only their gradients are not


def _randomise_projections(model: DiffEICModel, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.control.output_projections():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _reference_loop(unet, enc, mid, dec, z, t, cond):
    """The reference's ``CDDM.forward`` written out over diffusers' blocks: after each encoder layer (conv_in, each
    ResNet + attention, each downsampler) its residual joins the stream and so the skip; after the middle block its
    own; before each decoder layer (before the skip is concatenated) the mirrored encoder residual."""
    emb = unet.time_embedding(unet.get_time_embed(sample=z, timestep=t))
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=cond, added_cond_kwargs={})
    emb = emb + aug if aug is not None else emb
    enc, dec = list(enc), list(dec)
    h = unet.conv_in(z) + enc.pop(0)
    skips = [h]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            h = resnet(h, emb)
            if attentions is not None:
                h = attentions[j](h, encoder_hidden_states=cond, return_dict=False)[0]
            h = h + enc.pop(0)
            skips.append(h)
        if block.downsamplers is not None:
            h = block.downsamplers[0](h) + enc.pop(0)
            skips.append(h)
    h = unet.mid_block(h, emb, encoder_hidden_states=cond) + mid
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            h = resnet(torch.cat([h + dec.pop(0), skips.pop()], dim=1), emb)
            if attentions is not None:
                h = attentions[j](h, encoder_hidden_states=cond, return_dict=False)[0]
        if block.upsamplers is not None:
            h = block.upsamplers[0](h)
    assert not enc and not dec and not skips
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def test_cddm_adds_its_residuals_where_the_reference_does(batch, tiny_backbone):
    """With non-zero projections, the hooks on the frozen UNet's own forward give the reference's loop."""
    _, z0 = batch
    unet = tiny_backbone.unet
    model = DiffEICModel.for_backbone(TINY, tiny_backbone, seed=0).eval()
    _randomise_projections(model, 1)
    t = torch.tensor([30, 600])
    cond = tiny_backbone.null_cond.expand(2, -1, -1)
    c = torch.randn_like(z0)
    with torch.no_grad():
        enc, mid, dec = model.control(z0, t, cond, c)
        assert len(enc) == len(dec) == 4 and [r.shape[1] for r in dec] == [32, 32, 32, 16]  # UNet widths (16, 32)
        ref = _reference_loop(unet, enc, mid, dec, z0, t, cond)
        out = model.predict_noise(unet, z0, t, cond, c)
        plain = unet(z0, t, encoder_hidden_states=cond).sample
    assert torch.allclose(out, ref, atol=1e-5)
    assert float((out - plain).abs().max()) > 1e-3  # the control speaks
    assert not unet.conv_in._forward_hooks and not unet.mid_block._forward_hooks  # hooks removed after the call
    with torch.no_grad():
        assert torch.equal(model.predict_noise(unet, z0, t, cond, c, scale=0.0), plain)
    with torch.no_grad():  # the content variables steer the output
        assert not torch.allclose(model.predict_noise(unet, z0, t, cond, c + 1), out)


def test_cddm_starts_from_the_unet_weights(tiny_backbone):
    """As the reference: every control block is the UNet's weight of the same name, cut to the control's width (the
    hint's input channels of conv_in copy the latent's); its time embedding is the UNet's, whole."""
    unet = tiny_backbone.unet
    ctrl = DiffEICModel.for_backbone(TINY, tiny_backbone, seed=0).control
    assert torch.equal(ctrl.time_embedding.linear_2.weight, unet.time_embedding.linear_2.weight)
    w0 = ctrl.widths[0]
    conv = unet.conv_in.weight[:w0]
    assert torch.equal(ctrl.conv_in.weight[:, :4], conv) and torch.equal(ctrl.conv_in.weight[:, 4:], conv)
    mine = ctrl.down_blocks[1].resnets[0].conv1.weight
    theirs = unet.down_blocks[1].resnets[0].conv1.weight
    assert mine.shape[0] < theirs.shape[0] and torch.equal(mine, theirs[: mine.shape[0], : mine.shape[1]])
    k = ctrl.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight  # cross-attention keys: full input width
    assert torch.equal(k, unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight[: k.shape[0]])


def test_config_control_field_and_old_configurations():
    """New models default to the reference's control; a configuration saved before the field means the narrow one."""
    assert DiffEICConfig().control == "cddm"
    old = {k: v for k, v in DiffEICConfig(N=8, M=8).to_dict().items() if k != "control"}
    assert DiffEICConfig.from_dict(old).control == "narrow"
    assert DiffEICConfig.from_dict(DiffEICConfig(N=8, M=8).to_dict()).control == "cddm"
    with pytest.raises(ParameterError, match="control"):
        DiffEICConfig(control="xs").validate()


def test_control_width_follows_the_ratio():
    unet_cfg = {"block_out_channels": [320, 640, 1280, 1280]}
    assert control_widths(unet_cfg, 0.2, 32) == [64, 128, 256, 256]
    assert control_widths({"block_out_channels": [16, 32]}, 0.2, 8) == [8, 8]
    assert control_widths(unet_cfg, 1.0, 32) == [320, 640, 1280, 1280]
    with pytest.raises(ParameterError, match="hint"):
        DiffEICConfig(hint_channels=(16, 32)).validate()


def test_compress_decompress_is_exact(model, batch):
    x, z0 = batch
    out = model.compressor.compress(x[:1], z0[:1])
    assert set(out["strings"]) == {"y", "z"} and out["shape"] == (1, 2)
    y = model.compressor.analysis(x[:1], z0[:1])
    assert float(y.detach().abs().max()) > 3  # non-trivial symbols
    c = model.compressor.decompress(out["strings"], out["shape"])
    assert torch.equal(c, out["c"])
    with torch.no_grad():
        c_fwd, lik = model.compressor(x[:1], z0[:1])  # eval mode: rounding instead of noise
    assert torch.allclose(c, c_fwd, atol=1e-5)
    coded = 8 * sum(len(s) for s in out["strings"].values())
    assert coded < 1.5 * float(likelihood_bits(lik)) + 64
    with pytest.raises(ParameterError, match="multiples of 64"):
        model.compressor.compress(x[:1, :, :48], z0[:1, :, :6])


def test_save_load_round_trip(tmp_path, model, batch, tiny_backbone):
    x, z0 = batch
    folder = save_diffeic(model, tmp_path / "q", tiny_backbone.backbone_id)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["backbone_id"] == tiny_backbone.backbone_id and meta["config"]["N"] == TINY.N
    assert meta["config"]["control"] == "cddm"
    loaded = load_diffeic(folder, tiny_backbone)
    assert loaded.fingerprint() == model.fingerprint() and loaded.config.control == "cddm"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    a = model.compressor.compress(x[:1], z0[:1])
    b = loaded.compressor.compress(x[:1], z0[:1])
    assert a["strings"] == b["strings"] and torch.equal(a["c"], b["c"])
    from egc_lite.backbone import tiny_random_backbone

    with pytest.raises(ModelNotFoundError, match="backbone"):
        load_diffeic(folder, tiny_random_backbone(seed=1))
    with pytest.raises(ModelNotFoundError, match="egc train diffeic"):
        load_diffeic(tmp_path / "nothing", tiny_backbone)


def test_train_resume_export_load_and_decode(tmp_path, photo_folder, tiny_backbone):
    from egc_lite.cli import main
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec

    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    common = dict(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0), batch_size=2,
                  crop=64, log_every=1, save_every=1)
    before = {k: v.clone() for k, v in tiny_backbone.unet.state_dict().items()}
    train_diffeic(DiffEICTrainConfig(steps=2, **common), tiny_backbone)
    assert torch.load(ckpt / "diffeic.pt", weights_only=False)["step"] == 2
    train_diffeic(DiffEICTrainConfig(steps=3, **common), tiny_backbone)  # resumes from step 2
    assert torch.load(ckpt / "diffeic.pt", weights_only=False)["step"] == 3
    log = [json.loads(line) for line in (ckpt / "diffeic_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["bpp"] > 0 and r["mse"] > 0 and r["align"] >= 0 and "aux" in r for r in log)
    assert all(torch.equal(before[k], v) for k, v in tiny_backbone.unet.state_dict().items())  # backbone frozen
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt), "--out", str(tmp_path / "q1")]) == 0
    training = json.loads((tmp_path / "q1" / "config.json").read_text())["training"]
    assert training["steps"] == 3 and training["minutes"] >= 0 and set(training["final_losses"]) >= {"loss", "bpp", "mse", "align"}
    loaded = load_diffeic(tmp_path / "q1", tiny_backbone)
    codec = DiffEICCodec(tiny_backbone, model=loaded)
    x = torch.rand(3, 64, 64)
    bs = codec.compress(x, CompressOptions(steps=2))
    y = codec.decompress(bs)
    assert y.shape == (3, 64, 64) and bool(torch.isfinite(y).all())
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt)]) == 2  # neither --out nor --quality
    with pytest.raises(ModelNotFoundError, match="checkpoint"):
        export_diffeic(tmp_path / "none", tmp_path / "out")


def test_init_from_another_rate_point(tmp_path, photo_folder, tiny_backbone):
    photos = photo_folder
    common = dict(data_dir=str(photos), batch_size=2, crop=64, steps=1, log_every=1)
    src = tmp_path / "lambda1"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(src), model=DiffEICConfig(N=8, M=8, lmbda=1.0), **common), tiny_backbone)
    dst = tmp_path / "lambda8"
    cfg = DiffEICTrainConfig(ckpt_dir=str(dst), model=DiffEICConfig(N=8, M=8, lmbda=8.0), init_from=str(src), **common)
    train_diffeic(replace(cfg, steps=0), tiny_backbone)  # zero steps: the source's weights under the new lambda
    a, b = (torch.load(p / "diffeic.pt", weights_only=False) for p in (src, dst))
    assert b["step"] == 0 and b["config"]["model"]["lmbda"] == 8.0
    assert all(torch.equal(a["model"][k], v) for k, v in b["model"].items())
    wider = DiffEICTrainConfig(ckpt_dir=str(tmp_path / "wider"), model=DiffEICConfig(N=8, M=16, lmbda=8.0), init_from=str(src), **common)
    with pytest.raises(ParameterError, match="only lmbda may differ"):
        train_diffeic(wider, tiny_backbone)
    with pytest.raises(ModelNotFoundError, match="no DiffEIC checkpoint"):
        train_diffeic(DiffEICTrainConfig(ckpt_dir=str(tmp_path / "x"), model=DiffEICConfig(N=8, M=8), init_from=str(tmp_path / "none"), **common), tiny_backbone)
    # a rate point carries over to a retrained backbone of the same architecture, not to another one
    retrained = dict(a, backbone_id="retrained")
    torch.save(retrained, tmp_path / "retrained.pt")
    moved = train_diffeic(replace(cfg, ckpt_dir=str(tmp_path / "moved"), init_from=str(tmp_path / "retrained.pt"), steps=0), tiny_backbone)
    moved_state = torch.load(moved, weights_only=False)
    assert moved_state["backbone_id"] == tiny_backbone.backbone_id
    assert all(torch.equal(a["model"][k], v) for k, v in moved_state["model"].items())
    torch.save(dict(a, unet={**a["unet"], "block_out_channels": [64, 128]}), tmp_path / "other_arch.pt")
    with pytest.raises(ParameterError, match="another UNet or VAE architecture"):
        train_diffeic(replace(cfg, ckpt_dir=str(tmp_path / "y"), init_from=str(tmp_path / "other_arch.pt")), tiny_backbone)


# ---------------------------------------------------------------------------------- compressor variants
@pytest.fixture(scope="module")
def variants(tiny_backbone):
    out = {}
    for name, cfg in VARIANTS.items():
        m = DiffEICModel.for_backbone(cfg, tiny_backbone, seed=1).eval()
        _spread(m.compressor)
        update_tables(m.compressor)
        out[name] = m
    return out


def test_compressor_options_are_checked():
    for bad, match in [(dict(z0_modulation="film"), "z0_modulation"), (dict(use_z0=False, z0_modulation="sft"), "use_z0"),
                       (dict(sft_channels=2), "sft_channels"), (dict(context="autoregressive"), "context"),
                       (dict(context="checkerboard", context_slices=(8, 8)), "sum to M"),
                       (dict(context_slices=(12, 12)), "checkerboard")]:
        with pytest.raises(ParameterError, match=match):
            replace(TINY, **bad).validate()
    # the compressor's appended fields default to the old design; the control module defaults to the new
    # one (a saved config without the field loads as "narrow": DiffEICConfig.from_dict)
    defaults = {f.name: f.default for f in fields(DiffEICConfig) if f.name in LEGACY_FIELDS}
    assert defaults == {**LEGACY_FIELDS, "control": "cddm"}
    assert DiffEICConfig.from_dict({"N": 16, "M": 24}).control == "narrow"
    assert TINY.identity_dict() == {k: v for k, v in TINY.to_dict().items() if k not in LEGACY_FIELDS or k == "control"}
    assert VARIANTS["checkerboard"].identity_dict()["context"] == "checkerboard"
    assert checkerboard(2, 3).tolist() == [[True, False, True], [False, True, False]]


def test_a_config_saved_before_the_appended_fields_loads_as_the_old_design():
    """A config.json written before ``control``, ``z0_modulation`` and ``context`` existed loads as the design it
    was trained with, and hashes (``identity_dict``, what the fingerprint files store covers) exactly its old keys."""
    meta = json.loads(LEGACY_CONFIG.read_text())
    cfg = DiffEICConfig.from_dict(meta["config"])
    assert all(getattr(cfg, k) == v for k, v in LEGACY_FIELDS.items())
    assert cfg.identity_dict() == {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}


def test_shipped_rate_points_are_the_reference_design_and_code_exactly(smooth_image):
    """egc-tiny v3's q1, q3, q5: the reference's control and compressor (SFT, checkerboard context), rates
    ordered by lambda, and the compressor decodes its own symbols exactly."""
    lambdas = []
    for q in ("q1", "q3", "q5"):
        meta = json.loads((SHIPPED / q / "config.json").read_text())
        cfg = DiffEICConfig.from_dict(meta["config"])
        assert (cfg.control, cfg.z0_modulation, cfg.context) == ("cddm", "sft", "checkerboard")
        lambdas.append(cfg.lmbda)
    assert lambdas == sorted(lambdas, reverse=True)  # q1 is the lowest rate: the largest lambda
    comp = load_compressor(SHIPPED / "q1")
    assert comp.context is not None and comp.g_a_sft is not None and isinstance(comp.h_a, HyperAnalysisSFT)
    x = smooth_image(64, 128, seed=5, batch=1)
    out = comp.compress(x, torch.randn(1, 8, 8, 16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(comp.decompress(out["strings"], out["shape"]), out["c"])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_training_forward_reaches_every_new_part(batch, name):
    torch.manual_seed(0)
    comp = LatentCompressor.from_config(VARIANTS[name]).train()
    x, z0 = batch
    c, lik = comp(x, z0)
    assert c.shape == z0.shape and lik["y"].shape == (2, TINY.M, 4, 8) and lik["z"].shape == (2, TINY.N, 1, 2)
    assert all(bool(((v > 0) & (v <= 1)).all()) for v in lik.values())
    (likelihood_bits(lik) / x[0].numel() + c.pow(2).mean()).backward()
    parts = [m for m in (comp.g_a_sft, comp.h_a, comp.context) if m is not None]
    assert all(p.grad is not None for m in parts for p in m.parameters())
    if comp.g_a_sft is not None:
        with pytest.raises(ParameterError, match="z0"):
            comp.hyper_analysis(comp.analysis(x, z0), None)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_compress_decompress_is_exact(variants, batch, name):
    comp = variants[name].compressor
    x, z0 = batch
    out = comp.compress(x[:1], z0[:1])
    assert set(out["strings"]) == {"y", "z"} and out["shape"] == (1, 2)
    assert float(comp.analysis(x[:1], z0[:1]).detach().abs().max()) > 3  # non-trivial symbols
    c = comp.decompress(out["strings"], out["shape"])
    assert torch.equal(c, out["c"])
    with torch.no_grad():
        c_fwd, lik = comp(x[:1], z0[:1])  # eval mode: rounding instead of noise, the same passes
    assert torch.allclose(c, c_fwd, atol=1e-5)
    coded = 8 * sum(len(s) for s in out["strings"].values())
    assert coded < 1.5 * float(likelihood_bits(lik)) + 64


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_files_of_odd_sizes_survive_save_and_load(tmp_path, variants, tiny_backbone, smooth_image, name):
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec

    model = variants[name]
    folder = save_diffeic(model, tmp_path / "q", tiny_backbone.backbone_id)
    meta = json.loads((folder / "config.json").read_text())["config"]
    assert (meta["z0_modulation"], meta["context"], tuple(meta["context_slices"])) == (
        model.config.z0_modulation, model.config.context, model.config.context_slices)
    loaded = load_diffeic(folder, tiny_backbone)
    assert loaded.config == model.config and loaded.fingerprint() == model.fingerprint()
    x = smooth_image(70, 130, seed=3)
    bs = DiffEICCodec(tiny_backbone, model=model).compress(x, CompressOptions(steps=2))
    codec = DiffEICCodec(tiny_backbone, model=loaded)
    c = codec.content_variables(bs)
    assert c.shape == (1, 4, 16, 24)
    assert torch.equal(load_compressor(folder).decompress(bs.sections, (2, 3)), c)
    assert codec.decompress(bs).shape == (3, 70, 130)


@pytest.mark.parametrize("name", ["checkerboard", "sft+slices"])
def test_variant_hostile_streams_decode_or_raise_bitstream_error(variants, batch, name):
    """Damaged ``y`` streams of a context model give finite content variables or a BitstreamError, never
    another error; a stream holding a symbol no encoder writes is refused."""
    import random

    from compressai.ans import RansEncoder

    comp = variants[name].compressor
    x, z0 = batch
    out = comp.compress(x[:1], z0[:1])
    y, z = out["strings"]["y"], out["strings"]["z"]
    rng = random.Random(7)
    cases = [b"", y[: len(y) // 2], y[1:], y * 50, z, b"\xff" * len(y), b"\x00" * 64]
    cases += [bytes(rng.randrange(256) for _ in range(rng.choice([1, 9, len(y), 400]))) for _ in range(12)]
    for data in cases:
        try:
            c = comp.decompress({"y": data, "z": z}, out["shape"])
        except BitstreamError:
            continue
        assert c.shape == out["c"].shape and bool(torch.isfinite(c).all())
    # the first pass (slice 0's anchors) with a symbol of 2**25, beyond MAX_ABS_SYMBOL
    psi = comp._hyper_features_cpu(comp._decode_w(z, out["shape"]))
    with torch.no_grad():
        scales = comp.context.anchor[0](psi).chunk(2, dim=1)[0][..., checkerboard(*psi.shape[-2:])]
    gc = comp.gaussian_conditional
    idx = gc.build_indexes(scales).reshape(-1).tolist()
    bad = RansEncoder().encode_with_indexes([2**25] + [0] * (len(idx) - 1), idx, gc._quantized_cdf.tolist(),
                                             gc._cdf_length.tolist(), gc._offset.tolist())
    with pytest.raises(BitstreamError, match="corrupt"):
        comp.decompress({"y": bytes(bad), "z": z}, out["shape"])


def _toy_latents(g: torch.Generator, batch: int = 8) -> torch.Tensor:
    """8 channels of 16x16 white noise box-filtered 3x3 (neighbours share 6 of 9 terms), scale about 4."""
    return F.avg_pool2d(torch.randn(batch, 8, 18, 18, generator=g), 3, stride=1) * 12


def _fit_entropy_model(context: str, steps: int) -> LatentCompressor:
    """The entropy part (h_a, h_s, bottleneck, context) fitted to toy latents for ``steps`` steps."""
    torch.manual_seed(0)
    comp = LatentCompressor(8, 8, use_z0=False, context=context)
    named = [(n, p) for n, p in comp.named_parameters() if not n.startswith(("g_a", "g_s"))]
    opt = torch.optim.Adam([p for n, p in named if not n.endswith("quantiles")], lr=3e-3)
    aux = torch.optim.Adam([comp.entropy_bottleneck.quantiles], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    comp.train()
    for _ in range(steps):
        y = _toy_latents(g)
        _, lik = comp.entropy_forward(y, comp.h_a(y))
        opt.zero_grad()
        (likelihood_bits(lik) / y.numel()).backward()
        opt.step()
        aux.zero_grad()
        comp.aux_loss().backward()
        aux.step()
    update_tables(comp.eval(), update_quantiles=True)
    return comp


def test_checkerboard_codes_spatially_correlated_latents_in_fewer_bytes():
    """He et al.'s point in small: on latents correlated between neighbours (finer than the hyperprior's
    stride-4 grid sees), the checkerboard context's real files are smaller than the hyperprior's after the
    same 300 fitting steps (measured: 4.15 -> 3.86 bits per element; about 10 s on one thread)."""
    g = torch.Generator().manual_seed(99)
    test = [_toy_latents(g, 1) for _ in range(8)]
    rate = {}
    for context in ("none", "checkerboard"):
        comp = _fit_entropy_model(context, 300)
        bits = 0
        for y in test:
            out = comp.compress_latents(y, comp.h_a(y))
            assert torch.equal(comp.decompress_latents(out["strings"], out["shape"]), out["y_hat"])
            assert float((out["y_hat"] - y).abs().max()) <= 0.5 + 1e-5
            bits += 8 * sum(len(s) for s in out["strings"].values())
        rate[context] = bits / sum(y.numel() for y in test)
    assert rate["checkerboard"] < 0.97 * rate["none"], rate


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shipped design", "sft+slices"])
def test_decode_in_another_process_is_bit_exact(tmp_path, model, variants, tiny_backbone, name):
    """A file made here decodes to the same content variables in a fresh process (compressor only:
    the subprocess imports neither diffusers nor the backbone, to stay cheap)."""
    from egc_lite.codecs import CompressOptions
    from egc_lite.codecs.diffeic import DiffEICCodec
    from egc_lite.coding.bitstream import write_bitstream

    model = variants.get(name, model)
    folder = save_diffeic(model, tmp_path / "q3", tiny_backbone.backbone_id)
    codec = DiffEICCodec(tiny_backbone, weights_dir=tmp_path)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 70, 90, generator=g)
    bs = codec.compress(x, CompressOptions(quality=3, steps=2))
    write_bitstream(tmp_path / "a.egc", bs)
    c_here = codec.content_variables(bs)
    code = f"""
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # float32 results depend on the thread count
        from egc_lite.coding.bitstream import read_bitstream
        from egc_lite.models.diffeic.model import load_compressor
        comp = load_compressor({str(folder)!r})
        bs = read_bitstream({str(tmp_path / 'a.egc')!r})
        shape = (-(-bs.height // 64), -(-bs.width // 64))
        torch.save(comp.decompress(bs.sections, shape), {str(tmp_path / 'c.pt')!r})
    """
    env = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin", "EGC_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "c.pt"), c_here)


def test_a_float16_unet_trains_with_loss_scaling(tmp_path, photo_folder, tiny_backbone):
    """Issue 11, fault 6: the control module learns through a float16 UNet even where its gradients
    are below float16's smallest number (they would flush to zero without loss scaling)."""
    import copy

    from egc_lite.precision import training_precision

    backbone = copy.deepcopy(tiny_backbone)
    backbone.unet.half()
    with torch.no_grad():  # a UNet whose output is tiny: every gradient behind it is below 6e-8 in float16
        backbone.unet.conv_out.weight.mul_(1e-4)
        backbone.unet.conv_norm_out.weight.mul_(1e-3)
        backbone.unet.conv_norm_out.bias.mul_(1e-3)
    assert training_precision("cpu", torch.float16) == "fp16" and training_precision("cpu", torch.float32, "fp32") == "fp32"
    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0),
                                     batch_size=2, crop=64, steps=2, lr=1e-3, log_every=1, save_every=1), backbone)
    trained = DiffEICModel.for_backbone(DiffEICConfig(N=8, M=8, lmbda=1.0), backbone)
    trained.load_state_dict(torch.load(ckpt / "diffeic.pt", weights_only=False)["model"])
    projections = [m.weight for m in trained.control.output_projections()]
    assert projections and any(bool(w.abs().sum() > 0) for w in projections)  # the zero-initialised projections moved
    assert next(backbone.unet.parameters()).dtype == torch.float16  # the frozen UNet stays as loaded


def test_bf16_training_keeps_the_rate_in_float32(tmp_path, photo_folder, tiny_backbone):
    photos = photo_folder
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(photos), model=DiffEICConfig(N=8, M=8, lmbda=1.0),
                                     batch_size=2, crop=64, steps=1, log_every=1, precision="bf16"), tiny_backbone)
    log = [json.loads(line) for line in (ckpt / "diffeic_log.jsonl").read_text().splitlines()]
    assert log[0]["bpp"] > 0 and log[0]["mse"] > 0


# ---------------------------------------------------------------- issue 11, faults 5 and 7
def test_export_by_quality_leaves_the_shipped_rate_points_alone(tmp_path, photo_folder, tiny_backbone, monkeypatch):
    """Fault 5: `egc train diffeic-export --quality N` overwrote the package's weights/diffeic/qN (egc-tiny's
    shipped points, whatever backbone the checkpoint was trained on); it now writes <root>/<backbone id>/qN."""
    import hashlib

    import egc_lite.weights as weights
    from egc_lite.cli import main

    monkeypatch.setenv("EGC_DIFFEIC_WEIGHTS", str(tmp_path / "points"))
    # a stand-in for the package's shipped points, so that a regression overwrites nothing in the checkout
    DIFFEIC_WEIGHTS = tmp_path / "shipped"
    for q in (1, 3, 5):
        (DIFFEIC_WEIGHTS / f"q{q}").mkdir(parents=True)
        (DIFFEIC_WEIGHTS / f"q{q}" / "config.json").write_text('{"backbone_id": "shipped"}')
        (DIFFEIC_WEIGHTS / f"q{q}" / "model.safetensors").write_bytes(b"shipped weights")
    monkeypatch.setattr(weights, "DIFFEIC_DIR", DIFFEIC_WEIGHTS)
    ckpt = tmp_path / "ckpt"
    train_diffeic(DiffEICTrainConfig(ckpt_dir=str(ckpt), data_dir=str(photo_folder),
                                     model=DiffEICConfig(N=8, M=8, lmbda=4.0), steps=1, batch_size=1, crop=64), tiny_backbone)

    def shipped() -> dict:
        return {str(p.relative_to(DIFFEIC_WEIGHTS)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(DIFFEIC_WEIGHTS.rglob("*")) if p.is_file()}

    before = shipped()
    assert main(["train", "diffeic-export", "--ckpt", str(ckpt), "--quality", "3"]) == 0
    assert shipped() == before
    assert (tmp_path / "points" / tiny_backbone.backbone_id / "q3" / "config.json").is_file()


def test_training_creates_the_accelerator_before_it_loads_the_backbone(tmp_path, monkeypatch):
    """Fault 7: the backbone was loaded (on `cuda`, i.e. cuda:0 on every rank) before the Accelerator existed;
    now the Accelerator comes first and the backbone is loaded on its device (this rank's GPU)."""
    import accelerate

    import egc_lite.backbone as backbone_module
    from egc_lite.cli import main

    events = []

    class Stop(Exception):
        pass

    class FakeAccelerator:
        device = torch.device("cpu")  # stands for this rank's device
        process_index = 0

        def __init__(self, *args, **kwargs):
            events.append("accelerator")

    def fake_load(spec, device="auto", dtype=None):
        events.append(("load", str(device)))
        raise Stop

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    monkeypatch.setattr(backbone_module, "load_backbone", fake_load)
    with pytest.raises(Stop):
        main(["train", "diffeic", "--lmbda", "1", "--backbone", "tiny-random", "--ckpt", str(tmp_path / "ckpt"),
              "--data", str(tmp_path), "--steps", "1"])
    assert events == ["accelerator", ("load", "cpu")]


# ---------------------------------------------------------------- issue 13: bf16 inference
@pytest.mark.parametrize("kind", ["cddm", "narrow"])
def test_denoiser_runs_control_and_unet_under_the_backbones_precision(kind, tiny_by_precision):
    """The control module (with non-zero outputs, so it steers) and the UNet compute in bf16 on a bf16
    backbone, in float32 on a float32 one; the float32 noise predictions agree to bf16's rounding."""
    b16, b32 = tiny_by_precision["bf16"], tiny_by_precision["fp32"]
    model = DiffEICModel.for_backbone(replace(TINY, control=kind), b32, seed=1).eval()
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
