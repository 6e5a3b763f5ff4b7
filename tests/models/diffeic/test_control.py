"""Codec B's control modules: zero-initialised, trainable, adding their residuals where the reference does."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from egc_lite.errors import ParameterError
from egc_lite.models.diffeic.config import DiffEICConfig
from egc_lite.models.diffeic.control import control_widths, injection_names, injection_points
from egc_lite.models.diffeic.model import DiffEICModel

from .conftest import TINY


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


def test_control_width_follows_the_ratio():
    unet_cfg = {"block_out_channels": [320, 640, 1280, 1280]}
    assert control_widths(unet_cfg, 0.2, 32) == [64, 128, 256, 256]
    assert control_widths({"block_out_channels": [16, 32]}, 0.2, 8) == [8, 8]
    assert control_widths(unet_cfg, 1.0, 32) == [320, 640, 1280, 1280]
    with pytest.raises(ParameterError, match="hint"):
        DiffEICConfig(hint_channels=(16, 32)).validate()


@pytest.mark.parametrize("kind", ["cddm", "narrow"])
def test_injection_points_name_every_residual_of_the_control_module(kind, batch, tiny_backbone):
    """One name per encoder residual the control module returns (conv_in, each down layer, each downsampler,
    in order), then the middle block's."""
    unet = tiny_backbone.unet
    names = injection_names(unet)
    points = injection_points(unet)
    assert names[0] == "conv_in" and names[-1] == "mid" and len(set(names)) == len(names)
    assert [n for n, _ in points] == names[:-1] and points[0][1] is unet.conv_in
    n_down = len(unet.down_blocks)
    assert [n for n in names if n.endswith("downsample")] == [f"down{i}.downsample" for i in range(n_down - 1)]
    model = DiffEICModel.for_backbone(replace(TINY, control=kind), tiny_backbone, seed=0)
    x, z0 = batch
    t = torch.full((z0.shape[0],), 500)
    with torch.no_grad():
        residuals = model.control(z0, t, tiny_backbone.null_cond.expand(z0.shape[0], -1, -1), z0)
    assert len(residuals[0]) + 1 == len(names)

