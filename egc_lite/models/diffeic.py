"""Codec B's learned parts: DiffEIC (Li et al., "Towards Extreme Image Compression with Latent
Feature Guidance and Diffusion Prior", arXiv:2404.18820; public code ``huai-chang/DiffEIC``).

Two stages, both trained here on top of a *frozen* backbone:

1. :class:`LatentCompressor` (the paper's latent feature-guided compression module). With
   :math:`z_0 = s\\,\\mathcal{E}(x)` the backbone's scaled VAE latent,

   .. math::
       y = g_a(x, z_0),\\quad w = h_a(y),\\quad \\hat w = \\lfloor w - \\mu_w \\rceil + \\mu_w,\\quad
       (\\sigma, \\mu) = h_s(\\hat w),\\quad \\hat y = \\lfloor y - \\mu \\rceil + \\mu,\\quad c = g_s(\\hat y).

   ``y`` has stride 16, the hyper-latent ``w`` (called ``z`` in CompressAI and in the file's
   section names) stride 64. ``w`` is coded with a factorized prior (``EntropyBottleneck``),
   ``y`` with a Gaussian conditional :math:`\\mathcal{N}(\\mu, \\sigma^2)` convolved with
   :math:`\\mathcal{U}(-\\frac12, \\frac12)` (the mean-scale hyperprior of Minnen et al. 2018). The
   *content variables* ``c`` have the shape of the backbone latent (``latent_channels x H/8 x W/8``).
   The VAE latent :math:`z_0` modulates the *encoder* only (the decoder never has it), in one of
   two ways (``DiffEICConfig.z0_modulation``): ``"concat"`` joins it to the stride-8 features of
   :math:`g_a` (the shipped rate points); ``"sft"`` follows the reference: spatial feature transforms
   (:class:`SFT`, a per-pixel scale and shift :math:`x(1+\\gamma(f))+\\beta(f)` computed from
   :math:`z_0`'s features) at strides 8 and 16 of :math:`g_a` and at every stage of the
   hyper-analysis, :math:`w = h_a(y, z_0)`.

   Entropy model of ``y`` (``DiffEICConfig.context``): ``"none"`` is the mean-scale hyperprior above;
   ``"checkerboard"`` adds He et al.'s two-pass checkerboard context (anchors from the hyperprior,
   non-anchors also from the decoded anchors), over ELIC-style channel slices when
   ``context_slices`` is given (:class:`CheckerboardContext`). Both are in one rANS stream ``y``.

   Not done (kept simple on purpose): the reference's SFT modulation of :math:`g_s` by the extra
   :math:`\\hat w \\to g_s` branch. Which options pay for themselves is measured by training rate
   points (the defaults are the shipped design until then).

2. A control module (``DiffEICConfig.control``; :class:`CDDMControl` by default) that injects ``c``
   into the frozen UNet through zero-initialised connections, so that training starts from the
   unchanged backbone:
   :math:`\\hat\\epsilon = \\epsilon_\\theta(z_t, t, \\varnothing;\\ \\mathrm{ctrl}_\\phi(z_t, t, c))`. The prompt is
   always empty (``backbone.null_cond``).

Training objective (the paper's total loss; :func:`train_diffeic`)

.. math::
    \\mathcal{L} = \\mathbb{E}_{t,\\epsilon}\\,\\|\\epsilon - \\hat\\epsilon\\|_2^2
    + \\lambda_a\\,\\|c - z_0\\|_2^2 + \\lambda\\,R,\\qquad
    R = \\frac{-\\log_2 p(\\tilde y\\mid\\hat w) - \\log_2 p(\\tilde w)}{H W},

with the space-alignment weight :math:`\\lambda_a = 2` and :math:`t` uniform over the 1000
training steps. :math:`R` divides by the pixels of the training crops (the codec's file rate
divides by the true image area). As in the reference, the rate uses the noisy proxy
:math:`\\tilde y = y + u` while :math:`g_s` and :math:`h_s` see straight-through rounded values,
and the ``EntropyBottleneck``'s quantiles are fitted by CompressAI's auxiliary loss with a
separate optimizer.

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
    loop written out, ``tests/test_diffeic.py``). Differences from the reference: control widths are
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

Bit-exact decoding
    Everything that decides the bits (``w``'s medians, the hyper-synthesis :math:`h_s` and the
    context model that give the scales and means of ``y``) runs on the CPU in float32 at both ends,
    and the encoder rebuilds :math:`\\hat w, \\hat y` by *decoding its own bytes*, so the content
    variables it reports are exactly the decoder's (with a context model it also checks that its own
    pass-by-pass values equal the decoded ones). The probability tables are saved in ``model.safetensors`` and loaded
    (never rebuilt) by :func:`load_diffeic`. What remains is the usual learned-codec caveat: a CPU
    whose float32 convolution differs in the last bit could move a scale across a table boundary.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from torch import nn

from ..errors import BitstreamError, ModelNotFoundError, ParameterError
from ..precision import autocast, training_precision
from ..progress import progress

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Image sides are padded to a multiple of this (y at stride 16, w at stride 64).
COMPRESSOR_STRIDE = 64
#: Control module variants (``DiffEICConfig.control``; module docstring).
CONTROL_KINDS = ("cddm", "narrow")
#: UNet configuration fields the control module is built from (stored in ``config.json``).
UNET_KEYS = (
    "in_channels", "block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim",
    "transformer_layers_per_block", "attention_head_dim", "num_attention_heads", "use_linear_projection",
    "upcast_attention", "norm_num_groups", "only_cross_attention", "mid_block_type", "flip_sin_to_cos", "freq_shift",
)


# ---------------------------------------------------------------------------------- configuration
#: Fields appended to :class:`DiffEICConfig` after rate points were shipped, with the value that means
#: the design those points were trained with (an absent field in ``config.json`` takes it).
LEGACY_FIELDS: dict[str, Any] = {"control": "narrow", "z0_modulation": "concat", "sft_channels": 32, "context": "none", "context_slices": ()}


@dataclass(frozen=True)
class DiffEICConfig:
    """Architecture and loss weights of one DiffEIC rate point.

    ``N``/``M``: channel widths of the hyper-latent / latent (the reference uses N=192, M=320 for
    Stable Diffusion; the defaults suit egc-tiny). ``lmbda``: the rate weight :math:`\\lambda`
    (larger = fewer bits; the reference trains 1, 2, 4, 8, 16).
    """

    N: int = 64
    M: int = 96
    use_z0: bool = True  # feed the VAE latent into g_a (encoder side only)
    control: str = "cddm"  # "cddm": the reference's control module; "narrow": the first kit's ControlNetModel (module docstring)
    control_ratio: float = 0.2
    control_norm_groups: int = 8  # control widths are multiples of this
    control_head_dim: int = 64  # "narrow" only
    hint_channels: tuple[int, ...] = (16,)  # "narrow" only; one entry: no downsampling of the hint
    lmbda: float = 4.0
    alignment_weight: float = 2.0  # lambda_a of the space alignment loss
    # Appended after the first shipped rate points; their defaults are the design those were trained with
    # (LEGACY_FIELDS), so a config.json without them loads as before and hashes as before.
    z0_modulation: str = "concat"  # "concat" (z0 joins g_a at stride 8) or "sft" (SFT layers in g_a and h_a, the reference's)
    sft_channels: int = 32  # width of the z0 condition maps and SFT hidden layers
    context: str = "none"  # "none" (mean-scale hyperprior) or "checkerboard" (He et al. 2021)
    context_slices: tuple[int, ...] = ()  # channel slices of the checkerboard context (ELIC); () = one slice of M

    def validate(self) -> None:
        if self.N < 4 or self.M < 4:
            raise ParameterError(f"N and M must be at least 4, got N={self.N}, M={self.M}")
        if self.control not in CONTROL_KINDS:
            raise ParameterError(f"control must be one of {CONTROL_KINDS}, got {self.control!r}")
        if not 0 < self.control_ratio <= 1:
            raise ParameterError(f"control_ratio must be in (0, 1], got {self.control_ratio}")
        if len(self.hint_channels) != 1:
            raise ParameterError("hint_channels must have one entry: more would downsample the latent-space hint")
        if self.lmbda < 0 or self.alignment_weight < 0:
            raise ParameterError("lmbda and alignment_weight must not be negative")
        check_compressor_options(self.M, self.use_z0, self.z0_modulation, self.sft_channels, self.context,
                                 tuple(self.context_slices))

    def to_dict(self) -> dict:
        return asdict(self)

    def identity_dict(self) -> dict:
        """:meth:`to_dict` without the appended fields that hold their legacy value: what
        :meth:`DiffEICModel.fingerprint` hashes, so rate points saved before those fields existed keep
        their fingerprint (and the files made with them keep decoding)."""
        return {k: v for k, v in self.to_dict().items() if k not in LEGACY_FIELDS or v != LEGACY_FIELDS[k]}

    @classmethod
    def from_dict(cls, d: dict) -> DiffEICConfig:
        """From a saved configuration; one saved before the ``control`` field existed is a ``"narrow"`` model."""
        names = {f.name for f in fields(cls)}
        d = {"control": "narrow", **d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def unet_summary(unet) -> dict:
    """The UNet configuration fields the control module depends on (JSON-friendly)."""
    out = {}
    for k in UNET_KEYS:
        v = unet.config.get(k) if hasattr(unet.config, "get") else getattr(unet.config, k, None)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


# ---------------------------------------------------------------------------------- compressor
#: How the VAE latent enters the encoder: concatenated to g_a's stride-8 features, or SFT layers in g_a and h_a.
Z0_MODULATIONS = ("concat", "sft")
#: Entropy models of y: the mean-scale hyperprior alone, or with a checkerboard (+ channel-slice) context.
CONTEXTS = ("none", "checkerboard")


def check_compressor_options(M: int, use_z0: bool, z0_modulation: str, sft_channels: int, context: str,
                             context_slices: tuple[int, ...]) -> None:
    """Raise :class:`ParameterError` for compressor options that do not fit together."""
    if z0_modulation not in Z0_MODULATIONS:
        raise ParameterError(f"z0_modulation must be one of {Z0_MODULATIONS}, got {z0_modulation!r}")
    if z0_modulation == "sft" and not use_z0:
        raise ParameterError("z0_modulation='sft' modulates the encoder by z0: it needs use_z0=True")
    if sft_channels < 4:
        raise ParameterError(f"sft_channels must be at least 4, got {sft_channels}")
    if context not in CONTEXTS:
        raise ParameterError(f"context must be one of {CONTEXTS}, got {context!r}")
    if context_slices:
        if context != "checkerboard":
            raise ParameterError("context_slices (channel slices) need context='checkerboard'")
        if min(context_slices) < 1 or sum(context_slices) != M:
            raise ParameterError(f"context_slices must be positive and sum to M={M}, got {tuple(context_slices)}")


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


def _fit(f: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """``f`` at spatial ``size``: average-pooled when larger, bilinearly upsampled when smaller."""
    size = tuple(size)
    if tuple(f.shape[-2:]) == size:
        return f
    if f.shape[-2] >= size[0] and f.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(f, size)
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


def _feature(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """A condition branch: 3x3 convolution (``stride``), GELU, 1x1 convolution."""
    return nn.Sequential(_conv(cin, cout, 3, stride), nn.GELU(), _conv(cout, cout, 1, 1))


class SFT(nn.Module):
    """Spatial feature transform (Wang et al. 2018, "Recovering Realistic Texture in Image
    Super-resolution by Deep Spatial Feature Transform", eq. 2): :math:`x \\odot (1 + \\gamma(f)) + \\beta(f)`,
    a per-pixel, per-channel scale and shift computed from a condition map ``f`` (resized to ``x``)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(_conv(cond_channels, hidden, 3, 1), nn.LeakyReLU(0.2))
        self.gamma = _conv(hidden, channels, 3, 1)
        self.beta = _conv(hidden, channels, 3, 1)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.shared(_fit(f.to(x.dtype), x.shape[-2:]))
        return x * (1 + self.gamma(h)) + self.beta(h)


class SFTResBlock(nn.Module):
    """Residual block whose two 3x3 convolutions are each preceded by an :class:`SFT` and a leaky ReLU."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.sft0, self.sft1 = SFT(channels, cond_channels, hidden), SFT(channels, cond_channels, hidden)
        self.conv0, self.conv1 = _conv(channels, channels, 3, 1), _conv(channels, channels, 3, 1)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.leaky_relu(self.sft0(x, f), 0.2))
        return x + self.conv1(F.leaky_relu(self.sft1(h, f), 0.2))


class AnalysisSFT(nn.Module):
    """The z0-modulated part of :math:`g_a` (DiffEIC's encoder, encoder side only).

    ``before(h, z0)`` modulates g_a's stride-8 features by an SFT whose condition ``f8`` comes from
    :math:`z_0`; ``after(y, f8)`` modulates the stride-16 output by a stride-2 condition ``f16``
    (an SFT, an SFT residual block) and ends with a 3x3 convolution.
    """

    def __init__(self, N: int, M: int, latent_channels: int, P: int) -> None:
        super().__init__()
        self.feat8, self.sft8 = _feature(latent_channels, P), SFT(N, P, P)
        self.feat16, self.sft16 = _feature(P, P, 2), SFT(M, P, P)
        self.res = SFTResBlock(M, P, P)
        self.out = _conv(M, M, 3, 1)

    def before(self, h: torch.Tensor, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = _fit(self.feat8(z0.to(h.dtype)), h.shape[-2:])
        return self.sft8(h, f8), f8

    def after(self, y: torch.Tensor, f8: torch.Tensor) -> torch.Tensor:
        f16 = _fit(self.feat16(f8), y.shape[-2:])
        return self.out(self.res(self.sft16(y, f16), f16))


class HyperAnalysisSFT(nn.Module):
    """:math:`w = h_a(y, z_0)`, DiffEIC's latent-modulated hyper-analysis (stride 4 from ``y``).

    The condition starts from :math:`z_0`'s features pooled to ``y``'s grid and fused with ``y``; each
    of the three stages (stride 1, 2, 2) is a convolution followed by an :class:`SFT` under the
    condition brought to its resolution; a 3x3 convolution ends it.
    """

    def __init__(self, M: int, N: int, latent_channels: int, P: int) -> None:
        super().__init__()
        self.feat = _feature(latent_channels, P)
        self.fuse = nn.Sequential(_conv(M + P, P, 3, 1), nn.GELU(), _conv(P, P, 3, 1))
        self.convs = nn.ModuleList([_conv(M, N, 3, 1), _conv(N, N), _conv(N, N)])
        self.downs = nn.ModuleList([_feature(P, P, 2), _feature(P, P, 2)])
        self.sfts = nn.ModuleList(SFT(N, P, P) for _ in range(3))
        self.out = _conv(N, N, 3, 1)

    def forward(self, y: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        f = self.fuse(torch.cat([y, _fit(self.feat(z0.to(y.dtype)), y.shape[-2:])], dim=1))
        h = y
        for i, (conv, sft) in enumerate(zip(self.convs, self.sfts)):
            if i:
                f = self.downs[i - 1](f)
                h = F.leaky_relu(h)
            h = sft(conv(h), f)
        return self.out(h)


def _entropy_parameters(cin: int, cout: int) -> nn.Sequential:
    """1x1 convolutions from context + hyper features to (scales, means) (Minnen et al. 2018, fig. 4)."""
    a, b = cout * 5 // 3, cout * 4 // 3
    return nn.Sequential(_conv(cin, a, 1, 1), nn.GELU(), _conv(a, b, 1, 1), nn.GELU(), _conv(b, cout, 1, 1))


def checkerboard(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The anchor mask of a ``h x w`` grid: True where ``i + j`` is even (He et al. 2021, fig. 3)."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return (i + j) % 2 == 0


class CheckerboardContext(nn.Module):
    """Checkerboard context (He et al. 2021, "Checkerboard Context Model for Efficient Learned Image
    Compression"), optionally over channel slices (He et al. 2022, ELIC).

    ``y``'s channels are split into ``slices`` (one slice of ``M`` = plain checkerboard). Slice ``k``
    is coded in two passes: the anchors (``i + j`` even) with parameters from the hyper features
    :math:`\\psi = h_s(\\hat w)` and the channel context :math:`g_{ch}(\\hat y_{<k})`, then the
    non-anchors with, in addition, the spatial context :math:`g_{sp}(\\hat y_k^{anchor})` (a 5x5
    convolution of the decoded anchors, zero elsewhere; He et al. eq. 6-7):

    .. math::
        (\\sigma, \\mu)_k^{a} = e^a_k(\\psi, g_{ch}(\\hat y_{<k})),\\qquad
        (\\sigma, \\mu)_k^{n} = e^n_k(\\psi, g_{ch}(\\hat y_{<k}), g_{sp}(\\hat y_k^{a})).
    """

    def __init__(self, M: int, slices: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.slices = tuple(slices) or (M,)
        self.spatial = nn.ModuleList(_conv(s, 2 * s, 5, 1) for s in self.slices)
        self.channel = nn.ModuleList(
            nn.Sequential(_conv(sum(self.slices[:k]), 2 * s, 5, 1), nn.GELU(), _conv(2 * s, 2 * s, 5, 1))
            for k, s in enumerate(self.slices) if k
        )
        self.anchor = nn.ModuleList(_entropy_parameters(2 * M + (2 * s if k else 0), 2 * s) for k, s in enumerate(self.slices))
        self.nonanchor = nn.ModuleList(_entropy_parameters(2 * M + (4 * s if k else 2 * s), 2 * s) for k, s in enumerate(self.slices))

    def run(self, psi: torch.Tensor, code) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The passes in coding order; returns :math:`(\\hat y, \\sigma, \\mu)` over all channels.

        ``code(lo, hi, mask, scales, means)`` quantises channels ``lo:hi`` at the positions of the
        boolean ``mask`` (H, W) under the given parameters (of shape (B, hi - lo, H, W)) and returns
        those values with zeros elsewhere: a straight-through rounding when training, the range coder's
        encoder or decoder when coding.
        """
        anchors = checkerboard(*psi.shape[-2:], device=psi.device)
        done: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        means: list[torch.Tensor] = []
        lo = 0
        for k, s in enumerate(self.slices):
            extra = [self.channel[k - 1](torch.cat(done, dim=1))] if k else []
            s_a, m_a = self.anchor[k](torch.cat([psi, *extra], dim=1)).chunk(2, dim=1)
            y_a = code(lo, lo + s, anchors, s_a, m_a)
            s_n, m_n = self.nonanchor[k](torch.cat([psi, *extra, self.spatial[k](y_a)], dim=1)).chunk(2, dim=1)
            y_n = code(lo, lo + s, ~anchors, s_n, m_n)
            done.append(y_a + y_n)
            scales.append(torch.where(anchors, s_a, s_n))
            means.append(torch.where(anchors, m_a, m_n))
            lo += s
        return torch.cat(done, dim=1), torch.cat(scales, dim=1), torch.cat(means, dim=1)


def _cpu_float32(module: nn.Module) -> nn.Module:
    """``module`` itself when it lives on the CPU in float32, else such a copy (what both coder ends run)."""
    p = next(module.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        module = copy.deepcopy(module).to("cpu", torch.float32)
    return module


class LatentCompressor(nn.Module):
    """Hyperprior compressor from image (+ VAE latent) to content variables (module docstring).

    ``forward(x, z0)`` (training): ``c`` and the likelihoods ``{"y", "z"}``. :meth:`compress` /
    :meth:`decompress`: real bytes through :mod:`egc_lite.coding.entropy` (one item at a time).
    ``x`` is ``(B, 3, H, W)`` in [0, 1] with H, W multiples of 64; ``z0`` is the backbone's
    scaled latent of ``x``. ``z0_modulation``: ``"concat"`` (z0 joins g_a's stride-8 features) or
    ``"sft"`` (SFT layers in :math:`g_a` and :math:`h_a`, :class:`AnalysisSFT`, :class:`HyperAnalysisSFT`,
    ``sft_channels`` wide); ``context``: ``"none"`` (mean-scale hyperprior) or ``"checkerboard"``
    (:class:`CheckerboardContext` over ``context_slices``).
    """

    def __init__(self, N: int, M: int, latent_channels: int = 4, vae_factor: int = 8, use_z0: bool = True,
                 z0_modulation: str = "concat", sft_channels: int = 32, context: str = "none",
                 context_slices: tuple[int, ...] = ()) -> None:
        super().__init__()
        if vae_factor not in (1, 2, 4, 8, 16):
            raise ParameterError(f"the VAE factor must be a power of two up to 16, got {vae_factor}")
        check_compressor_options(M, use_z0, z0_modulation, sft_channels, context, tuple(context_slices))
        self.N, self.M, self.latent_channels, self.vae_factor, self.use_z0 = N, M, latent_channels, vae_factor, use_z0
        self.z0_modulation, self.context_kind = z0_modulation, context
        sft = use_z0 and z0_modulation == "sft"
        # g_a: three stride-2 stages to stride 8, the VAE latent joins there, one more to stride 16.
        self.g_a1 = nn.Sequential(_conv(3, N), GDN(N), _conv(N, N), GDN(N), _conv(N, N), GDN(N))
        concat = latent_channels if use_z0 and not sft else 0
        self.g_a2 = nn.Sequential(_conv(N + concat, N, 3, 1), GDN(N), _conv(N, M))
        self.g_a_sft = AnalysisSFT(N, M, latent_channels, sft_channels) if sft else None
        if sft:
            self.h_a: nn.Module = HyperAnalysisSFT(M, N, latent_channels, sft_channels)
        else:
            self.h_a = nn.Sequential(_conv(M, N, 3, 1), nn.LeakyReLU(inplace=True), _conv(N, N), nn.LeakyReLU(inplace=True), _conv(N, N))
        self.h_s = nn.Sequential(
            _deconv(N, M), nn.LeakyReLU(inplace=True), _deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            _conv(M * 3 // 2, 2 * M, 3, 1),
        )
        self.context = CheckerboardContext(M, tuple(context_slices)) if context == "checkerboard" else None
        ups = int(math.log2(16 // vae_factor))
        layers: list[nn.Module] = [_conv(M, N, 3, 1)]
        for _ in range(ups):
            layers += [GDN(N, inverse=True), _deconv(N, N)]
        layers += [nn.LeakyReLU(inplace=True), _conv(N, N, 3, 1), nn.LeakyReLU(inplace=True), _conv(N, latent_channels, 3, 1)]
        self.g_s = nn.Sequential(*layers)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    @classmethod
    def from_config(cls, cfg: DiffEICConfig, latent_channels: int = 4, vae_factor: int = 8) -> LatentCompressor:
        """The compressor that ``cfg`` describes."""
        return cls(cfg.N, cfg.M, latent_channels, vae_factor, cfg.use_z0, cfg.z0_modulation, cfg.sft_channels,
                   cfg.context, tuple(cfg.context_slices))

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; ``encoder_only`` are those the decoder never runs (:math:`g_a`, :math:`h_a`)."""
        n = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
        parts = {"g_a": n(self.g_a1) + n(self.g_a2) + n(self.g_a_sft), "h_a": n(self.h_a), "h_s": n(self.h_s),
                 "context": n(self.context), "g_s": n(self.g_s), "entropy_bottleneck": n(self.entropy_bottleneck)}
        return {**parts, "encoder_only": parts["g_a"] + parts["h_a"], "total": n(self)}

    # -- pieces
    def analysis(self, x: torch.Tensor, z0: torch.Tensor | None) -> torch.Tensor:
        """:math:`y = g_a(x, z_0)` (stride 16)."""
        h = self.g_a1(x * 2 - 1)
        if not self.use_z0:
            return self.g_a2(h)
        if z0 is None:
            raise ParameterError("this compressor reads the VAE latent z0: pass it")
        if self.g_a_sft is not None:
            h, f8 = self.g_a_sft.before(h, z0)
            return self.g_a_sft.after(self.g_a2(h), f8)
        z0 = z0.to(h.dtype)
        if z0.shape[-2:] != h.shape[-2:]:
            z0 = F.interpolate(z0, size=h.shape[-2:], mode="bilinear", align_corners=False)
        return self.g_a2(torch.cat([h, z0], dim=1))

    def hyper_analysis(self, y: torch.Tensor, z0: torch.Tensor | None) -> torch.Tensor:
        """:math:`w = h_a(y)`, or :math:`h_a(y, z_0)` with SFT modulation (stride 64)."""
        if isinstance(self.h_a, HyperAnalysisSFT):
            if z0 is None:
                raise ParameterError("this compressor reads the VAE latent z0: pass it")
            return self.h_a(y, z0)
        return self.h_a(y)

    def hyper_parameters(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales, means) of ``y`` from :math:`\\hat w` (differentiable, on the module's device; no context)."""
        scales, means = self.h_s(w_hat).chunk(2, dim=1)
        return scales, means

    def _hyper_features_cpu(self, w_hat: torch.Tensor) -> torch.Tensor:
        """:math:`\\psi = h_s(\\hat w)` on the CPU in float32: what both ends of the coder use."""
        with torch.no_grad():
            return _cpu_float32(self.h_s)(w_hat.detach().to("cpu", torch.float32)).contiguous()

    def hyper_parameters_cpu(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales, means) computed on the CPU in float32: what both ends of the coder use (no context)."""
        scales, means = self._hyper_features_cpu(w_hat).chunk(2, dim=1)
        return scales.contiguous(), means.contiguous()

    def synthesis(self, y_hat: torch.Tensor) -> torch.Tensor:
        """:math:`c = g_s(\\hat y)`: content variables at the latent resolution."""
        return self.g_s(y_hat)

    # -- training
    def entropy_forward(self, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:math:`\\hat y` (straight-through rounding) and the likelihoods ``{"y", "z"}`` of ``y`` and
        ``w`` (noisy proxies in training mode, rounded values in eval mode)."""
        from ..coding.entropy import quantize

        _, w_lik = self.entropy_bottleneck(w)
        med = self.entropy_bottleneck._get_medians()
        w_hat = quantize(w, "ste", med)
        if self.context is None:
            scales, means = self.hyper_parameters(w_hat)
            y_hat = quantize(y, "ste", means)
        else:
            def ste(lo: int, hi: int, mask: torch.Tensor, _scales: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
                return quantize(y[:, lo:hi], "ste", m) * mask.to(y.dtype)

            y_hat, scales, means = self.context.run(self.h_s(w_hat), ste)
        _, y_lik = self.gaussian_conditional(y, scales, means)
        return y_hat, {"y": y_lik, "z": w_lik}

    def forward(self, x: torch.Tensor, z0: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = self.analysis(x, z0)
        y_hat, lik = self.entropy_forward(y, self.hyper_analysis(y, z0))
        return self.synthesis(y_hat), lik

    def aux_loss(self) -> torch.Tensor:
        """CompressAI's auxiliary loss that fits the ``EntropyBottleneck``'s quantiles."""
        return self.entropy_bottleneck.loss()

    # -- coding
    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ParameterError(f"compress codes one image of shape (1, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % COMPRESSOR_STRIDE or w % COMPRESSOR_STRIDE:
            raise ParameterError(f"image sides must be multiples of {COMPRESSOR_STRIDE} (pad first), got {w}x{h}")

    @torch.no_grad()
    def compress(self, x: torch.Tensor, z0: torch.Tensor | None) -> dict[str, Any]:
        """Code one image: ``{"strings": {"y": bytes, "z": bytes}, "shape": (h_w, w_w), "c": c}``.

        ``shape`` is the spatial shape of the hyper-latent (``H/64 x W/64``), which the decoder
        needs; ``c`` is rebuilt from the decoded bytes, i.e. exactly what :meth:`decompress` returns.
        """
        self._check_x(x)
        y = self.analysis(x, z0).float()
        out = self.compress_latents(y, self.hyper_analysis(y, z0).float())
        out["c"] = self._synthesize(out.pop("y_hat"))
        return out

    @torch.no_grad()
    def compress_latents(self, y: torch.Tensor, w: torch.Tensor) -> dict[str, Any]:
        """Code ``y`` (1, M, h, w) and its hyper-latent ``w`` (1, N, h/4, w/4):
        ``{"strings": {"y", "z"}, "shape": w's spatial shape, "y_hat": the decoder's}``.

        :math:`\\hat y` is decoded from the bytes just written (with a context model, the encoder's own
        quantised values must equal them, or a :class:`RuntimeError` says this machine's float32
        convolutions are not deterministic).
        """
        from ..coding.entropy import GaussianStreamEncoder, compress_factorized, compress_gaussian

        z_bytes = compress_factorized(self.entropy_bottleneck, w)
        shape = tuple(int(s) for s in w.shape[-2:])
        w_hat = self._decode_w(z_bytes, shape)
        if self.context is None:
            scales, means = self.hyper_parameters_cpu(w_hat)
            y_bytes = compress_gaussian(self.gaussian_conditional, y, scales, means)
            return {"strings": {"y": y_bytes, "z": z_bytes}, "shape": shape, "y_hat": self._decode_y(y_bytes, w_hat)}
        psi = self._hyper_features_cpu(w_hat)
        y = y.detach().to("cpu", torch.float32)
        if y.shape[-2:] != psi.shape[-2:] or y.shape[:2] != (1, self.M):
            raise ParameterError(f"y of shape {tuple(y.shape)} does not fit its hyper-latent of shape {tuple(w.shape)}")
        enc = GaussianStreamEncoder(self.gaussian_conditional)

        def encode(lo: int, hi: int, mask: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(means)
            out[..., mask] = enc.add(y[:, lo:hi][..., mask], scales[..., mask], means[..., mask])
            return out

        y_mine, _, _ = _cpu_float32(self.context).run(psi, encode)
        y_bytes = enc.finish()
        y_hat = self._decode_y(y_bytes, w_hat)
        if not torch.equal(y_hat, y_mine):
            raise RuntimeError("the context model gave other parameters when decoding than when encoding: "
                               "this CPU's float32 convolutions are not deterministic")
        return {"strings": {"y": y_bytes, "z": z_bytes}, "shape": shape, "y_hat": y_hat}

    def _decode_w(self, data: bytes, shape: tuple[int, int]) -> torch.Tensor:
        from ..coding.entropy import decompress_factorized

        return decompress_factorized(self.entropy_bottleneck, data, shape)

    def _decode_y(self, data: bytes, w_hat: torch.Tensor) -> torch.Tensor:
        """:math:`\\hat y` (CPU float32) from its bytes and the decoded hyper-latent."""
        from ..coding.entropy import GaussianStreamDecoder, decompress_gaussian

        if self.context is None:
            scales, means = self.hyper_parameters_cpu(w_hat)
            return decompress_gaussian(self.gaussian_conditional, data, scales, means)
        psi = self._hyper_features_cpu(w_hat)
        dec = GaussianStreamDecoder(self.gaussian_conditional, data, self.M * psi.shape[-2] * psi.shape[-1])

        def decode(lo: int, hi: int, mask: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(means)
            try:
                out[..., mask] = dec.read(scales[..., mask], means[..., mask])
            except ParameterError as exc:  # non-finite parameters: only decoded garbage leads there
                raise BitstreamError(f"the y stream is corrupt ({exc})") from None
            return out

        with torch.no_grad():
            y_hat, _, _ = _cpu_float32(self.context).run(psi, decode)
        return y_hat

    def _synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        p = next(self.g_s.parameters())
        return self.synthesis(y_hat.to(p.device, p.dtype)).float()

    @torch.no_grad()
    def decompress_latents(self, strings: dict[str, bytes], shape: tuple[int, int]) -> torch.Tensor:
        """:math:`\\hat y` (CPU float32) from the two streams; ``shape``: the hyper-latent's."""
        if set(strings) < {"y", "z"}:
            raise ParameterError(f"decompress needs the 'y' and 'z' streams, got {sorted(strings)}")
        return self._decode_y(strings["y"], self._decode_w(strings["z"], shape))

    @torch.no_grad()
    def decompress(self, strings: dict[str, bytes], shape: tuple[int, int]) -> torch.Tensor:
        """Content variables ``c`` (1, latent_channels, 4*h_w*16/vae_factor, ...) from the two streams."""
        return self._synthesize(self.decompress_latents(strings, shape))


# ---------------------------------------------------------------------------------- control
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

    Built from the UNet's configuration only (:func:`unet_summary`), so a saved model loads
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
        """What :func:`~egc_lite.coding.budget.unet_bytes` needs to bound this module's memory."""
        return dict(self.net.config)


def _encoder_points(unet) -> list[nn.Module]:
    """The UNet's modules after which the reference adds a control feature, in order: ``conv_in``, each
    down layer (its attention if it has one, else its ResNet), each downsampler."""
    points: list[nn.Module] = [unet.conv_in]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            points.append(attentions[j] if attentions is not None and j < len(attentions) else resnet)
        if block.downsamplers is not None:
            points.extend(block.downsamplers)
    return points


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
    ``unet`` given, every block starts from the UNet's own weights (:func:`_fit`).
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
        """Every block from the UNet's weight of the same name, tiled or cut to size (:func:`_fit`); the
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
        """What :func:`~egc_lite.coding.budget.unet_bytes` needs to bound this module's memory."""
        return {"block_out_channels": list(self.widths), "down_block_types": self.down_block_types,
                "num_attention_heads": list(self.heads)}


#: The control module class of each ``DiffEICConfig.control``.
CONTROL_CLASSES: dict[str, type[nn.Module]] = {"cddm": CDDMControl, "narrow": NarrowControlNet}


# ---------------------------------------------------------------------------------- model
class DiffEICModel(nn.Module):
    """Compressor + control module of one rate point (float32; the backbone stays frozen and apart)."""

    def __init__(self, cfg: DiffEICConfig, unet_cfg: dict, latent_channels: int = 4, vae_factor: int = 8, unet=None) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.unet_cfg = dict(unet_cfg)
        self.latent_channels, self.vae_factor = latent_channels, vae_factor
        self.compressor = LatentCompressor.from_config(cfg, latent_channels, vae_factor)
        self.control = CONTROL_CLASSES[cfg.control](self.unet_cfg, cfg, latent_channels, unet=unet)

    @classmethod
    def for_backbone(cls, cfg: DiffEICConfig, backbone, seed: int = 0) -> DiffEICModel:
        """A freshly initialised model (seeded) for ``backbone``."""
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = cls(cfg, unet_summary(backbone.unet), backbone.latent_channels, backbone.vae_factor, unet=backbone.unet)
        finally:
            torch.random.set_rng_state(state)
        return model.float().to(backbone.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the compressor and the control module."""
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"compressor": n(self.compressor), "control": n(self.control)}

    def predict_noise(self, unet, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor,
                      scale: float = 1.0) -> torch.Tensor:
        """:math:`\\hat\\epsilon` of the frozen ``unet`` steered by ``c`` (differentiable w.r.t. this model), float32;
        ``scale`` multiplies every control residual (0: the plain UNet). The control module and the UNet run
        under the caller's autocast: training's (:class:`DiffEICLoss`), or the backbone's inference precision
        (:meth:`denoiser`)."""
        dev = self.device
        b = z_t.shape[0]
        c = c.to(dev, torch.float32)
        if c.shape[0] != b:
            c = c.expand(b, -1, -1, -1)
        return self.control.steer(unet, z_t.to(dev, torch.float32), t.to(dev), cond.to(dev, torch.float32), c, scale).float()

    def denoiser(self, backbone, c: torch.Tensor):
        """A :class:`~egc_lite.sampling.ddim.Denoiser` for :func:`~egc_lite.sampling.ddim.ddim_sample` steered by ``c``: the
        control module and the UNet under the backbone's inference precision
        (:meth:`~egc_lite.backbone.Backbone.inference_autocast`); ``c`` itself was decoded in float32."""

        from ..sampling.ddim import output_to_epsilon

        def denoise(z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                with backbone.inference_autocast():
                    eps = self.predict_noise(backbone.unet, z_t, t, cond, c)
                return output_to_epsilon(backbone, eps, z_t.float(), t)

        return denoise

    def fingerprint(self) -> int:
        """A 32-bit hash of the configuration and every weight and table (files store it)."""
        h = hashlib.sha256(json.dumps({"cfg": self.config.identity_dict(), "unet": self.unet_cfg}, sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            v = v.detach().cpu()
            v = v.float() if v.is_floating_point() else v
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.contiguous().numpy().tobytes())
        return int.from_bytes(h.digest()[:4], "little")

    def check_backbone(self, backbone) -> None:
        """Raise :class:`ModelNotFoundError` when ``backbone``'s UNet or latent space differ from this model's."""
        if unet_summary(backbone.unet) != self.unet_cfg or backbone.latent_channels != self.latent_channels \
                or backbone.vae_factor != self.vae_factor:
            raise ModelNotFoundError(
                f"this DiffEIC model was trained for another backbone than {backbone.backbone_id!r} "
                "(UNet or latent shape differ): train one for it with `egc train diffeic --backbone ...`"
            )


# ---------------------------------------------------------------------------------- save / load
def save_diffeic(model: DiffEICModel, out_dir: str | Path, backbone_id: str, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors``.

    The ``EntropyBottleneck``'s quantiles are refitted by bisection and the probability tables
    built once, here (in ``model`` too), so every decoder loads the same tables.
    """
    from safetensors.torch import save_file

    from ..coding.entropy import update_tables

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    update_tables(model.compressor, force=True, update_quantiles=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, out / WEIGHTS_FILE)
    meta = {"_class_name": "egc_lite.DiffEICModel", "backbone_id": backbone_id, "config": model.config.to_dict(),
            "unet": model.unet_cfg, "latent_channels": model.latent_channels, "vae_factor": model.vae_factor,
            "parameters": model.parameter_counts(), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    return out


def load_diffeic(folder: str | Path, backbone=None, device: str | torch.device | None = None) -> DiffEICModel:
    """Load a folder written by :func:`export_diffeic` / :func:`save_diffeic` (tables loaded, not rebuilt).

    With ``backbone``, the model goes to its device and must match its UNet and backbone id.
    """
    from safetensors.torch import load_file

    from ..coding.entropy import fit_table_buffers

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ModelNotFoundError(
            f"no DiffEIC model in {folder} (looked for {CONFIG_FILE} and {WEIGHTS_FILE}): train one with "
            "`egc train diffeic --lmbda L --ckpt DIR` and write it there with `egc train diffeic-export --ckpt DIR --out FOLDER`"
        )
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        cfg = DiffEICConfig.from_dict(meta["config"])
        model = DiffEICModel(cfg, meta["unet"], int(meta["latent_channels"]), int(meta["vae_factor"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{folder / CONFIG_FILE} is not a DiffEIC configuration ({exc})") from None
    model.backbone_id = meta.get("backbone_id", "")
    state = load_file(folder / WEIGHTS_FILE)
    fit_table_buffers(model, state)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    if backbone is not None:
        if model.backbone_id and model.backbone_id != backbone.backbone_id:
            raise ModelNotFoundError(
                f"the DiffEIC model in {folder} was trained for backbone {model.backbone_id!r}, not "
                f"{backbone.backbone_id!r}: train one for this backbone with `egc train diffeic --backbone ...`"
            )
        model.check_backbone(backbone)
        device = device or backbone.device
    return model.to(device or "cpu")


def load_compressor(folder: str | Path) -> LatentCompressor:
    """Only the compressor of a saved model (CPU, eval): enough to decode content variables, and
    it needs neither diffusers nor the backbone."""
    from safetensors.torch import load_file

    from ..coding.entropy import fit_table_buffers

    folder = Path(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    cfg = DiffEICConfig.from_dict(meta["config"])
    comp = LatentCompressor.from_config(cfg, int(meta["latent_channels"]), int(meta["vae_factor"]))
    prefix = "compressor."
    state = {k[len(prefix):]: v for k, v in load_file(folder / WEIGHTS_FILE).items() if k.startswith(prefix)}
    fit_table_buffers(comp, state)
    comp.load_state_dict(state)
    return comp.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------- training
@dataclass
class DiffEICTrainConfig:
    """Options of one DiffEIC training run (one rate point)."""

    ckpt_dir: str = "checkpoints/diffeic"
    data_dir: str | None = None  # one folder or several joined by os.pathsep; None: the training photos folder
    model: DiffEICConfig = field(default_factory=DiffEICConfig)
    steps: int = 20000
    batch_size: int = 8
    crop: int = 128  # a multiple of 64
    lr: float = 1e-4
    aux_lr: float = 1e-3
    seed: int = 0
    log_every: int = 25
    save_every: int = 200
    threads: int | None = None
    max_minutes: float | None = None
    init_from: str | None = None  # another rate point's checkpoint (folder or .pt) to start from: same architecture, fresh optimizers
    precision: str = "auto"  # of the UNet + control prediction (egc_lite.precision.training_precision); the rate stays float32

    def validate(self) -> None:
        self.model.validate()
        if self.crop % COMPRESSOR_STRIDE or self.crop < COMPRESSOR_STRIDE:
            raise ParameterError(f"crop must be a positive multiple of {COMPRESSOR_STRIDE}, got {self.crop}")
        if self.steps < 0 or self.batch_size < 1:
            raise ParameterError("steps must be >= 0 and batch_size >= 1")


class DiffEICLoss(nn.Module):
    """:math:`\\|\\epsilon-\\hat\\epsilon\\|^2 + \\lambda_a\\|c-z_0\\|^2 + \\lambda R` (module docstring); the UNet is frozen."""

    def __init__(self, model: DiffEICModel, unet, null_cond: torch.Tensor, alphas: torch.Tensor,
                 prediction_type: str = "epsilon", precision: str = "fp32") -> None:
        super().__init__()
        self.model, self.precision = model, precision
        self.unet = unet  # frozen; its parameters have requires_grad False
        self.prediction_type = prediction_type  # the UNet's output: epsilon, or v (then the loss is on v)
        self.register_buffer("null_cond", null_cond.detach().float().clone())
        self.register_buffer("alphas", alphas.detach().float().clone())

    def forward(self, x: torch.Tensor, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        from ..coding.entropy import likelihood_bits

        cfg = self.model.config
        c, lik = self.model.compressor(x, z0)
        a = self.alphas[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        cond = self.null_cond.expand(x.shape[0], -1, -1)
        with autocast(x.device, self.precision):  # the denoiser only: the rate above stays float32
            out = self.model.predict_noise(self.unet, z_t, t, cond, c).float()
        target = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        mse = F.mse_loss(out, target)
        align = F.mse_loss(c, z0)
        bpp = likelihood_bits(lik) / (x.shape[0] * x.shape[2] * x.shape[3])
        loss = mse + cfg.alignment_weight * align + cfg.lmbda * bpp
        return {"loss": loss, "mse": mse, "align": align, "bpp": bpp, "aux": self.model.compressor.aux_loss()}


def _log(ckpt: Path, record: dict) -> None:
    with open(ckpt / "diffeic_log.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _place_backbone(backbone, dev: torch.device):
    """Move a float32 backbone's UNet, VAE and null embedding to this process's device."""
    backbone.unet.to(dev)
    backbone.vae.to(dev)
    backbone.null_cond = backbone.null_cond.to(dev)
    backbone.device = dev
    return backbone


def train_diffeic(cfg: DiffEICTrainConfig, backbone, device: str = "auto") -> Path:
    """Train (or resume) one rate point on random crops of the training photos; returns the checkpoint.

    ``backbone`` is a loaded :class:`~egc_lite.backbone.Backbone` or a spec for
    :func:`~egc_lite.backbone.load_backbone`. The Accelerator is created first and the backbone
    (UNet and VAE) is placed on ``accelerator.device``, so under ``accelerate launch`` every rank
    holds its own copy on its own GPU. The checkpoint ``<ckpt_dir>/diffeic.pt`` holds the model,
    both optimizers, the step, the configuration, the backbone id and the UNet summary (so
    :func:`export_diffeic` needs no backbone). Losses go to ``<ckpt_dir>/diffeic_log.jsonl``;
    ``<ckpt_dir>/ranks.json`` says whether all ranks ended with equal weights (``ranks_equal``). Each process
    draws its own seeded crops; the main process saves.
    """
    from accelerate import Accelerator

    from ..backbone import load_backbone
    from ..training.backbone import CropSampler, _save, data_folders

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if isinstance(backbone, str):
        acc = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        backbone = load_backbone(backbone, device=acc.device, dtype=torch.float32)
    else:
        acc = Accelerator(cpu=backbone.device.type == "cpu")
        backbone = _place_backbone(backbone, acc.device)
    dev = acc.device
    ckpt = Path(cfg.ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / "diffeic.pt"
    state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    if state is not None and state.get("backbone_id") != backbone.backbone_id:
        raise ParameterError(
            f"{path} was trained on backbone {state.get('backbone_id')!r}, not {backbone.backbone_id!r}: "
            "use another --ckpt folder"
        )
    if state is not None:
        cfg.model = DiffEICConfig.from_dict(state["config"]["model"])
    sampler = CropSampler(data_folders(cfg.data_dir), seed=cfg.seed + acc.process_index)
    first = state["step"] if state is not None else 0
    sampler.rng.seed(cfg.seed * 1_000_003 + acc.process_index * 7919 + first)  # resumable stream
    torch.manual_seed(cfg.seed * 7919 + acc.process_index + first)

    model = DiffEICModel.for_backbone(cfg.model, backbone, seed=cfg.seed)
    if state is not None:
        model.load_state_dict(state["model"])
    elif cfg.init_from:
        model.load_state_dict(_init_weights(Path(cfg.init_from), model))
    model.train()
    precision = training_precision(dev, next(backbone.unet.parameters()).dtype, cfg.precision)
    # fp16 (a float16 UNet): its backward underflows without loss scaling; bf16 and fp32 need none
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    loss_mod = DiffEICLoss(model, backbone.unet, backbone.null_cond, backbone.scheduler.alphas_cumprod,
                           backbone.prediction_type, precision).to(dev)
    named = list(model.named_parameters())
    main_params = [p for n, p in named if not n.endswith("quantiles")]
    aux_params = [p for n, p in named if n.endswith("quantiles")]
    opt = torch.optim.AdamW(main_params, lr=cfg.lr, weight_decay=0.0)
    aux_opt = torch.optim.AdamW(aux_params, lr=cfg.aux_lr, weight_decay=0.0)
    if state is not None:
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
    loss_mod, opt, aux_opt = acc.prepare(loss_mod, opt, aux_opt)
    n_train = backbone.scheduler.config.num_train_timesteps
    start = time.time()
    sums: dict[str, float] = {}
    done = first
    for step in progress(range(first, cfg.steps), desc=f"diffeic lambda={cfg.model.lmbda}", total=max(cfg.steps - first, 0)):
        x = sampler.batch(cfg.batch_size, cfg.crop).to(dev)
        with torch.no_grad():
            z0 = backbone.encode(x).float()
        t = torch.randint(0, n_train, (x.shape[0],), device=dev)
        out = loss_mod(x, z0, t, torch.randn_like(z0))
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        # One backward (one DDP pass): the aux loss only reaches the quantiles, which only aux_opt steps
        # (as CompressAI's example, where the quantiles also see the main loss's gradient).
        acc.backward(scaler.scale(out["loss"] + out["aux"]))
        scaler.unscale_(opt)
        scaler.unscale_(aux_opt)
        acc.clip_grad_norm_(main_params, 1.0)
        scaler.step(opt)  # skipped (and the scale lowered) when an fp16 gradient overflowed
        scaler.step(aux_opt)
        scaler.update()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        done = step + 1
        if done % cfg.log_every == 0:
            if acc.is_main_process:
                rec = {"step": done, "minutes": (time.time() - start) / 60}
                rec.update({k: v / cfg.log_every for k, v in sums.items()})
                _log(ckpt, rec)
            sums = {}
        timeout = cfg.max_minutes is not None and (time.time() - start) / 60 > cfg.max_minutes
        if (done % cfg.save_every == 0 or done == cfg.steps or timeout) and acc.is_main_process:
            _save(path, _blob(acc.unwrap_model(loss_mod).model, opt, aux_opt, done, cfg, backbone.backbone_id))
        if timeout:
            break
    if state is None and done == first and acc.is_main_process:  # zero steps asked: still leave a checkpoint
        _save(path, _blob(model, opt, aux_opt, done, cfg, backbone.backbone_id))
    prints = acc.gather(torch.tensor([acc.unwrap_model(loss_mod).model.fingerprint()], dtype=torch.int64, device=dev))
    if acc.is_main_process:
        record = {"step": done, "processes": acc.num_processes, "ranks_equal": bool((prints == prints[0]).all())}
        (ckpt / "ranks.json").write_text(json.dumps(record))
    return path


def _init_weights(src: Path, model: DiffEICModel) -> dict:
    """Weights of another rate point's checkpoint, to fine-tune at a new :math:`\\lambda` (the usual way
    to get several rate points for the price of one long run), or to carry a rate point over to a
    retrained backbone of the same architecture. Everything but ``lmbda`` must match."""
    src = src / "diffeic.pt" if src.is_dir() else src
    if not src.is_file():
        raise ModelNotFoundError(f"--init-from {src}: no DiffEIC checkpoint there (train one rate point first)")
    other = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(other, dict) or not {"config", "model", "unet"} <= other.keys():
        raise ParameterError(f"--init-from {src} is not a DiffEIC training checkpoint (diffeic.pt of `egc train diffeic`)")
    theirs = DiffEICConfig.from_dict(other["config"]["model"])
    if {**theirs.to_dict(), "lmbda": model.config.lmbda} != model.config.to_dict():
        raise ParameterError(f"--init-from {src} has another architecture ({theirs}); only lmbda may differ")
    if (other["unet"], other.get("latent_channels"), other.get("vae_factor")) != (model.unet_cfg, model.latent_channels, model.vae_factor):
        raise ParameterError(f"--init-from {src} was trained for a backbone of another UNet or VAE architecture; "
                             "train this rate point from scratch (no --init-from)")
    return other["model"]


def _blob(model: DiffEICModel, opt, aux_opt, step: int, cfg: DiffEICTrainConfig, backbone_id: str) -> dict:
    """A training checkpoint: enough to resume, and to export without the backbone."""
    return {"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(), "step": step,
            "config": asdict(cfg), "backbone_id": backbone_id, "unet": model.unet_cfg,
            "latent_channels": model.latent_channels, "vae_factor": model.vae_factor}


def checkpoint_backbone_id(ckpt: str | Path) -> str:
    """The backbone id a training checkpoint (folder or ``diffeic.pt``) was trained for."""
    p = Path(ckpt)
    p = p / "diffeic.pt" if p.is_dir() else p
    if not p.is_file():
        raise ModelNotFoundError(f"no DiffEIC checkpoint at {p}: train one with `egc train diffeic --ckpt {p.parent}`")
    return str(torch.load(p, map_location="cpu", weights_only=False)["backbone_id"])


def export_diffeic(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write a trained checkpoint as ``config.json`` + ``model.safetensors`` for :func:`load_diffeic`.

    ``ckpt`` is the checkpoint folder (or its ``diffeic.pt``); see :func:`save_diffeic`.
    """
    p = Path(ckpt)
    p = p / "diffeic.pt" if p.is_dir() else p
    if not p.is_file():
        raise ModelNotFoundError(f"no DiffEIC checkpoint at {p}: train one with `egc train diffeic --ckpt {p.parent}`")
    state = torch.load(p, map_location="cpu", weights_only=False)
    cfg = DiffEICConfig.from_dict(state["config"]["model"])
    model = DiffEICModel(cfg, state["unet"], state["latent_channels"], state["vae_factor"])
    model.load_state_dict(state["model"])
    model.eval()
    source = state["config"].get("init_from")
    training = {"steps": state["step"], "lmbda": cfg.lmbda, "init_from": Path(source).name if source else None,
                **_log_summary(p.parent / "diffeic_log.jsonl")}
    return save_diffeic(model, out_dir, state["backbone_id"], extra={"steps": state["step"], "lmbda": cfg.lmbda, "training": training})


def _log_summary(log: Path, last: int = 8) -> dict:
    """Training minutes and the mean of the last ``last`` logged losses (for the model card)."""
    if not log.is_file():
        return {}
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        return {}
    tail = records[-last:]
    keys = [k for k in tail[-1] if k not in ("step", "minutes")]
    return {"minutes": round(sum(r["minutes"] for r in _run_ends(records)), 1),
            "final_losses": {k: sum(r[k] for r in tail) / len(tail) for k in keys}}


def _run_ends(records: list[dict]) -> list[dict]:
    """The last record of each training run in a log (``minutes`` restarts when a run resumes)."""
    ends = [a for a, b in zip(records, records[1:]) if b["minutes"] < a["minutes"]]
    return ends + records[-1:]
