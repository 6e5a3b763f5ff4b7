"""Codec B's control modules: the content variables ``c`` steering the frozen UNet.

Control module: what the reference does
    ``model/diffeic.py`` of ``huai-chang/DiffEIC`` (class ``CDDM``, configured in
    ``configs/model/diffeic.yaml``: ``control_model_ratio: 0.2`` on SD 2.1). The control network is a
    copy of the UNet's *encoder and middle block* at 0.2 of its width (SD 2.1: 64, 128, 256, 256
    channels, 16-channel attention heads), with its own full-width time embedding. Its first
    convolution reads the noisy latent and the content variables concatenated, :math:`[z_t, c]`
    (8 channels). It runs beside the frozen UNet's encoder, layer for layer, and never reads the
    UNet. Its feature :math:`f_k` after encoder layer :math:`k` (the first convolution, each ResNet +
    attention, each downsampler) goes through zero-initialised :math:`1\\times 1` convolutions
    three ways:

    * into the UNet's stream after the same layer, :math:`h_k \\leftarrow h_k + Z^{enc}_k(f_k)`, so
      into the skip connection stored there as well;
    * after the middle blocks, :math:`h \\leftarrow h + Z^{mid}(f_{mid})`;
    * mirrored into the decoder: before up layer :math:`j`, and before its skip is concatenated,
      :math:`h \\leftarrow h + Z^{dec}_j(f_{K-1-j})`.

    Its weights start from the UNet's checkpoint: each tensor is the UNet's tensor of the same name,
    cut to the narrower shape (the first convolution's extra input channels get a copy of the latent's
    weights); the projections start at zero. Only the control network and the compressor train
    (``sd_locked: True``).

Control module: what is built here
    ``control="cddm"`` (:class:`CDDMControl`, the default for new training) is that design, built
    from diffusers' blocks (``get_down_block`` / ``get_mid_block`` with the UNet's block types and
    layer counts, ``Timesteps`` / ``TimestepEmbedding``), so the same code serves the kit's UNets
    (``layers_per_block=1``) and SD 1.5 / 2.1. The frozen UNet runs its *own* forward; the residuals
    are added by forward hooks installed on its modules for one call (tested equal to the reference's
    loop written out, ``tests/models/diffeic/test_control.py``). Differences from the reference: control widths are
    ``control_ratio`` x the UNet's rounded to multiples of ``control_norm_groups`` (egc-tiny: 8, 16, 24
    instead of 6.4, 12.8, 25.6); GroupNorm groups divide every control width, at most the UNet's and
    with at least two channels each (SD: 32, as the reference); heads are the UNet's count per level
    lowered to divide the control width (SD 2.1: 16-channel heads, as the reference; SD 1.5: 8 heads);
    the control's time embedding leaves out the UNet's extra embeddings (egc-tiny's pooled-token path;
    SD has none); the reference's option of training the UNet's decoder is not offered.

    ``control="narrow"`` (:class:`NarrowControlNet`) is the first kit's module, kept because the
    shipped egc-tiny rate points ``q1``, ``q3``, ``q5`` were trained with it (a ``config.json``
    without the field means it). diffusers' ``ControlNetXSAdapter`` / ``UNetControlNetXSModel``
    (ControlNet-XS) fails on the kit's UNets (missing ``resnets.1`` keys with ``layers_per_block=1``),
    so it is diffusers' ``ControlNetModel``: a narrow copy of the UNet's encoder reading :math:`z_t`
    and, through ``ControlNetConditioningEmbedding`` (``conditioning_embedding_out_channels=(16,)``: no
    stride, the hint stays at the latent resolution), ``c``. Its outputs reach the UNet through
    zero-initialised :math:`1\\times 1` convolutions as ``down_block_additional_residuals`` /
    ``mid_block_additional_residual``: added to the *skip connections* only, nothing into the
    encoder's stream or the decoder, and its weights start random unless ``control_ratio=1``.

    Parameters (``DiffEICModel.parameter_counts()["control"]``, measured): egc-tiny (UNet 4,289,636)
    ``cddm`` 136,008 (20,736 of them the full-width time embedding), ``narrow`` 99,872; SD 2.1 layout
    ``cddm`` 24,410,240, ``narrow`` 18,301,200; SD 1.5 layout 23,820,416 and 17,711,376.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from ...errors import ParameterError
from .config import DiffEICConfig


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _per_level(value, n: int) -> list:
    """A UNet config entry given once or per level, as a list of ``n`` values."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _residual_widths(widths: list[int], layers_per_block: int | list[int]) -> list[int]:
    """Channels of the UNet's down-path features: conv_in, then each ResNet, then each downsampler."""
    lpb = _per_level(layers_per_block, len(widths))
    out = [widths[0]]
    for i, w in enumerate(widths):
        out += [w] * lpb[i]
        if i < len(widths) - 1:
            out.append(w)
    return out


def _decoder_widths(widths: list[int], layers_per_block: int | list[int]) -> list[int]:
    """Channels of the UNet's up-path stream entering each up ResNet (before its skip is concatenated):
    the previous block's width for a block's first ResNet (the middle block's for the first), else the block's."""
    lpb = _per_level(layers_per_block, len(widths))[::-1]
    rev = list(widths)[::-1]
    out: list[int] = []
    for b, w in enumerate(rev):
        out += [rev[b - 1] if b else rev[0]] + [w] * lpb[b]
    return out


def control_widths(unet_cfg: dict, ratio: float, groups: int) -> list[int]:
    """Block widths of the control module: ``ratio`` x the UNet's, multiples of ``groups``."""
    base = list(unet_cfg["block_out_channels"])
    if ratio >= 1:
        return base
    return [max(groups, int(round(ratio * w / groups)) * groups) for w in base]


def _heads(width: int, head_dim: int) -> int:
    """Largest head count ``<= width // head_dim`` (at least 1) that divides ``width``."""
    h = max(1, width // head_dim)
    while width % h:
        h -= 1
    return h


def _divisor_at_most(n: int, most: int) -> int:
    """Largest divisor of ``n`` that is at most ``most`` (at least 1)."""
    d = max(1, min(n, int(most)))
    while n % d:
        d -= 1
    return d


def _norm_groups(widths: list[int], base_groups: int) -> int:
    """GroupNorm groups of the control blocks: divide every width, at most the UNet's groups, and keep at
    least two channels per group (the reference's first level: 64 channels in 32 groups)."""
    return _divisor_at_most(math.gcd(*widths), min(base_groups, max(1, min(widths) // 2)))


def _tile_to(src: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``src`` tiled where it is smaller and cut where it is larger, to ``shape`` (how the reference
    initialises its narrow control blocks from the UNet's weights)."""
    out = src
    for d, n in enumerate(shape):
        if out.shape[d] < n:
            out = out.repeat(*[-(-n // out.shape[d]) if i == d else 1 for i in range(out.dim())])
        out = out.narrow(d, 0, n)
    return out


class NarrowControlNet(nn.Module):
    """``control="narrow"``: a ``ControlNetModel`` reading ``(z_t, t, c)`` whose outputs are added to the frozen
    UNet's skip features and middle block (module docstring; the shipped egc-tiny rate points).

    Built from the UNet's configuration only (:func:`~.config.unet_summary`), so a saved model loads
    without the backbone's weights; with ``unet`` given and ``control_ratio == 1`` it starts as
    a copy of the UNet's encoder.
    """

    def __init__(self, unet_cfg: dict, cfg: DiffEICConfig, latent_channels: int = 4, unet=None) -> None:
        super().__init__()
        from diffusers import ControlNetModel

        base = list(unet_cfg["block_out_channels"])
        widths = control_widths(unet_cfg, cfg.control_ratio, cfg.control_norm_groups)
        kw = dict(conditioning_channels=latent_channels, conditioning_embedding_out_channels=tuple(cfg.hint_channels))
        if cfg.control_ratio >= 1 and unet is not None:
            net = ControlNetModel.from_unet(unet, **kw)
        else:
            full = cfg.control_ratio >= 1
            heads = unet_cfg.get("num_attention_heads") or unet_cfg["attention_head_dim"]
            net = ControlNetModel(
                in_channels=unet_cfg["in_channels"],
                down_block_types=tuple(unet_cfg["down_block_types"]),
                mid_block_type=unet_cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn",
                only_cross_attention=unet_cfg.get("only_cross_attention", False),
                block_out_channels=tuple(widths),
                layers_per_block=unet_cfg["layers_per_block"],
                norm_num_groups=unet_cfg["norm_num_groups"] if full else cfg.control_norm_groups,
                cross_attention_dim=unet_cfg["cross_attention_dim"],
                transformer_layers_per_block=unet_cfg.get("transformer_layers_per_block", 1),
                attention_head_dim=heads if full else 8,
                num_attention_heads=heads if full else tuple(_heads(w, cfg.control_head_dim) for w in widths),
                use_linear_projection=unet_cfg.get("use_linear_projection", False),
                upcast_attention=unet_cfg.get("upcast_attention", False),
                flip_sin_to_cos=unet_cfg.get("flip_sin_to_cos", True),
                freq_shift=unet_cfg.get("freq_shift", 0),
                **kw,
            )
        lpb = unet_cfg["layers_per_block"]
        lpb = lpb if isinstance(lpb, int) else lpb[0]
        # Zero-initialised projections from the control widths to the UNet's (replacing ControlNet's own).
        net.controlnet_down_blocks = nn.ModuleList(
            _zero_conv(a, b) for a, b in zip(_residual_widths(widths, lpb), _residual_widths(base, lpb))
        )
        net.controlnet_mid_block = _zero_conv(widths[-1], base[-1])
        self.net = net

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor, scale: float = 1.0):
        """``(down_residuals, mid_residual)`` for ``UNet2DConditionModel.forward``."""
        down, mid = self.net(z_t, t, encoder_hidden_states=cond, controlnet_cond=c, conditioning_scale=scale, return_dict=False)
        return list(down), mid

    def steer(self, unet, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The frozen ``unet``'s output with the residuals added to its skip features and middle block."""
        dt = next(unet.parameters()).dtype
        down, mid = self(z_t, t, cond, c, scale)
        return unet(z_t.to(dt), t, encoder_hidden_states=cond.to(dt), down_block_additional_residuals=[d.to(dt) for d in down],
                    mid_block_additional_residual=mid.to(dt)).sample

    def output_projections(self) -> list[nn.Module]:
        """The zero-initialised convolutions whose outputs reach the UNet."""
        return [*self.net.controlnet_down_blocks, self.net.controlnet_mid_block]

    def budget_config(self) -> dict:
        """What :func:`~egc_lite.models.memory.unet_bytes` needs to bound this module's memory."""
        return dict(self.net.config)


def injection_points(unet) -> list[tuple[str, nn.Module]]:
    """The UNet's encoder modules after which the reference adds a control feature, in order, by name:
    ``conv_in``, ``down{i}.res{j}`` for each down layer (its attention if it has one, else its ResNet),
    ``down{i}.downsample`` for a block's downsampler. ``control="narrow"``'s residuals reach the skips
    stored at the same points (``down_block_additional_residuals``)."""
    points: list[tuple[str, nn.Module]] = [("conv_in", unet.conv_in)]
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            points.append((f"down{i}.res{j}", attentions[j] if attentions is not None and j < len(attentions) else resnet))
        if block.downsamplers is not None:
            single = len(block.downsamplers) == 1
            points += [(f"down{i}.downsample" + ("" if single else str(k)), m) for k, m in enumerate(block.downsamplers)]
    return points


def injection_names(unet) -> list[str]:
    """Names of the control module's encoder residuals (:func:`injection_points`), then ``"mid"`` for the one
    added after the middle block."""
    return [name for name, _ in injection_points(unet)] + ["mid"]


def _encoder_points(unet) -> list[nn.Module]:
    """The modules of :func:`injection_points`, in order."""
    return [module for _, module in injection_points(unet)]


def _add_to_output(residual: torch.Tensor):
    """Forward hook: the module's output (a tensor, or the first item of a tuple) plus ``residual``."""

    def hook(module, args, out):
        if isinstance(out, tuple):
            return (out[0] + residual.to(out[0].dtype), *out[1:])
        return out + residual.to(out.dtype)

    return hook


def _add_to_stream(residual: torch.Tensor):
    """Forward pre-hook of an up ResNet: ``residual`` joins the stream part of its input ``cat([h, skip])``
    (the reference adds to ``h`` before the concatenation)."""

    def hook(module, args):
        if not args:
            raise ParameterError("the UNet's up ResNets must get their input positionally for the control module")
        x, *rest = args
        k = residual.shape[1]
        return (torch.cat([x[:, :k] + residual.to(x.dtype), x[:, k:]], dim=1), *rest)

    return hook


@contextmanager
def _injected(unet, enc: list[torch.Tensor], mid: torch.Tensor, dec: list[torch.Tensor]):
    """Within the block, a forward of ``unet`` adds ``enc`` after each encoder point, ``mid`` after the
    middle block and ``dec`` to the stream entering each up ResNet (hooks, removed on exit)."""
    points = _encoder_points(unet)
    ups = [resnet for block in unet.up_blocks for resnet in block.resnets]
    if len(points) != len(enc) or len(ups) != len(dec) or unet.mid_block is None:
        raise ParameterError(
            f"this UNet's layout ({len(points)} encoder layers, {len(ups)} decoder layers) does not match the "
            f"control module ({len(enc)}, {len(dec)}): build the DiffEIC model for this backbone"
        )
    handles = [m.register_forward_hook(_add_to_output(r)) for m, r in zip(points, enc)]
    handles.append(unet.mid_block.register_forward_hook(_add_to_output(mid)))
    handles += [m.register_forward_pre_hook(_add_to_stream(r)) for m, r in zip(ups, dec)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class CDDMControl(nn.Module):
    """``control="cddm"``: the reference's control module (its ``CDDM`` class; module docstring).

    A copy of the UNet's encoder and middle block at ``control_ratio`` of its width, built from
    diffusers' blocks (``get_down_block``, ``get_mid_block``) with the UNet's block types and layer
    counts, reading :math:`[z_t, c]` (concatenated) with its own full-width time embedding. Each of
    its encoder features :math:`f_k` reaches the frozen UNet three ways, through zero-initialised
    :math:`1\\times 1` convolutions: added to the UNet's stream after encoder layer :math:`k`
    (so also to that skip), its middle output after the UNet's middle block, and, mirrored,
    to the stream entering each decoder layer. Built from the UNet's configuration only; with
    ``unet`` given, every block starts from the UNet's own weights (:func:`_tile_to`).
    """

    def __init__(self, unet_cfg: dict, cfg: DiffEICConfig, latent_channels: int = 4, unet=None) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block

        base = list(unet_cfg["block_out_channels"])
        n = len(base)
        widths = control_widths(unet_cfg, cfg.control_ratio, cfg.control_norm_groups)
        lpb = _per_level(unet_cfg["layers_per_block"], n)
        # the UNet's heads per level (diffusers reads attention_head_dim as heads when num_attention_heads is
        # unset), lowered to divide the narrower widths: 16-channel heads on SD 2.1 at ratio 0.2, as the reference
        base_heads = _per_level(unet_cfg.get("num_attention_heads") or unet_cfg["attention_head_dim"], n)
        heads = [_divisor_at_most(w, h) for w, h in zip(widths, base_heads)]
        groups = _norm_groups(widths, unet_cfg["norm_num_groups"])
        cross = _per_level(unet_cfg["cross_attention_dim"], n)
        layers = _per_level(unet_cfg.get("transformer_layers_per_block") or 1, n)
        only_cross = _per_level(unet_cfg.get("only_cross_attention") or False, n)
        attn = dict(use_linear_projection=bool(unet_cfg.get("use_linear_projection")),
                    upcast_attention=bool(unet_cfg.get("upcast_attention")))
        temb = 4 * base[0]
        self.widths, self.heads, self.down_block_types = widths, heads, list(unet_cfg["down_block_types"])
        self.time_proj = Timesteps(base[0], unet_cfg.get("flip_sin_to_cos", True), unet_cfg.get("freq_shift", 0))
        self.time_embedding = TimestepEmbedding(base[0], temb)
        self.conv_in = nn.Conv2d(unet_cfg["in_channels"] + latent_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(self.down_block_types):
            self.down_blocks.append(get_down_block(
                kind, num_layers=lpb[i], transformer_layers_per_block=layers[i], in_channels=widths[max(i - 1, 0)],
                out_channels=widths[i], temb_channels=temb, add_downsample=i < n - 1, resnet_eps=1e-5, resnet_act_fn="silu",
                resnet_groups=groups, cross_attention_dim=cross[i], num_attention_heads=heads[i], downsample_padding=1,
                only_cross_attention=only_cross[i], attention_head_dim=widths[i] // heads[i], **attn,
            ))
        self.mid_block = get_mid_block(
            unet_cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn", temb_channels=temb, in_channels=widths[-1],
            resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=groups, transformer_layers_per_block=layers[-1],
            num_attention_heads=heads[-1], cross_attention_dim=cross[-1], attention_head_dim=widths[-1] // heads[-1], **attn,
        )
        ctrl = _residual_widths(widths, lpb)
        self.enc_out = nn.ModuleList(_zero_conv(a, b) for a, b in zip(ctrl, _residual_widths(base, lpb)))
        self.mid_out = _zero_conv(widths[-1], base[-1])
        self.dec_out = nn.ModuleList(_zero_conv(ctrl[-1 - k], b) for k, b in enumerate(_decoder_widths(base, lpb)))
        if unet is not None:
            self._init_from(unet)

    @torch.no_grad()
    def _init_from(self, unet) -> None:
        """Every block from the UNet's weight of the same name, tiled or cut to size (:func:`_tile_to`); the
        hint's input channels of ``conv_in`` get a copy of the latent's. The projections stay zero."""
        src = unet.state_dict()
        for name, p in self.named_parameters():
            if not name.startswith(("enc_out.", "mid_out.", "dec_out.")) and name in src:
                p.copy_(_tile_to(src[name].to(p.dtype), p.shape))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor,
                scale: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """``(encoder, middle, decoder)`` residuals: one per UNet encoder layer, one for its middle block,
        one per UNet decoder ResNet (first decoder layer first), each times ``scale``."""
        t = t.reshape(-1)
        if t.numel() == 1:
            t = t.expand(z_t.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(z_t.dtype))
        h = self.conv_in(torch.cat([z_t, c.to(z_t.dtype)], dim=1))
        feats = [h]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(h, temb=emb, encoder_hidden_states=cond)
            else:
                h, res = block(h, temb=emb)
            feats.extend(res)
        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, encoder_hidden_states=cond)
        else:
            h = self.mid_block(h, emb)
        enc = [zc(f) * scale for zc, f in zip(self.enc_out, feats)]
        dec = [zc(feats[-1 - k]) * scale for k, zc in enumerate(self.dec_out)]
        return enc, self.mid_out(h) * scale, dec

    def steer(self, unet, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The frozen ``unet``'s own forward, with the residuals added where the reference adds them."""
        dt = next(unet.parameters()).dtype
        enc, mid, dec = self(z_t, t, cond, c, scale)
        with _injected(unet, enc, mid, dec):
            return unet(z_t.to(dt), t, encoder_hidden_states=cond.to(dt)).sample

    def output_projections(self) -> list[nn.Module]:
        """The zero-initialised convolutions whose outputs reach the UNet."""
        return [*self.enc_out, self.mid_out, *self.dec_out]

    def budget_config(self) -> dict:
        """What :func:`~egc_lite.models.memory.unet_bytes` needs to bound this module's memory."""
        return {"block_out_channels": list(self.widths), "down_block_types": self.down_block_types,
                "num_attention_heads": list(self.heads)}


#: The control module class of each ``DiffEICConfig.control``.
CONTROL_CLASSES: dict[str, type[nn.Module]] = {"cddm": CDDMControl, "narrow": NarrowControlNet}
