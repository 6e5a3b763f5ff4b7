"""Codec B's compressor (:class:`LatentCompressor`, the paper's latent feature-guided compression module;
:mod:`egc_lite.models.diffeic` gives the equations): training forward, and real bytes both ways.

Bit-exact decoding
    Everything that decides the bits (``w``'s medians, the hyper-synthesis :math:`h_s` and the
    context model that give the scales and means of ``y``) runs on the CPU in float32 at both ends,
    and the encoder rebuilds :math:`\\hat w, \\hat y` by *decoding its own bytes*, so the content
    variables it reports are exactly the decoder's (with a context model it also checks that its own
    pass-by-pass values equal the decoded ones). The probability tables are saved in ``model.safetensors`` and loaded
    (never rebuilt) by :func:`~.model.load_diffeic`. What remains is the usual learned-codec caveat: a CPU
    whose float32 convolution differs in the last bit could move a scale across a table boundary.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from torch import nn

from ...errors import BitstreamError, ParameterError
from ..tiling import receptive_radius, run_tiled
from .config import COMPRESSOR_STRIDE, DiffEICConfig, check_compressor_options
from .layers import AnalysisSFT, CheckerboardContext, HyperAnalysisSFT, _conv, _deconv


def _cpu_float32(module: nn.Module) -> nn.Module:
    """``module`` itself when it lives on the CPU in float32, else such a copy (what both coder ends run)."""
    p = next(module.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        module = copy.deepcopy(module).to("cpu", torch.float32)
    return module


class LatentCompressor(nn.Module):
    """Hyperprior compressor from image (+ VAE latent) to content variables (:mod:`egc_lite.models.diffeic`).

    ``forward(x, z0)`` (training): ``c`` and the likelihoods ``{"y", "z"}``. :meth:`compress` /
    :meth:`decompress`: real bytes through :mod:`egc_lite.coding.range_coding` (one item at a time).
    ``x`` is ``(B, 3, H, W)`` in [0, 1] with H, W multiples of 64; ``z0`` is the backbone's
    scaled latent of ``x``. ``z0_modulation``: ``"concat"`` (z0 joins g_a's stride-8 features) or
    ``"sft"`` (SFT layers in :math:`g_a` and :math:`h_a`, :class:`~.layers.AnalysisSFT`, :class:`~.layers.HyperAnalysisSFT`,
    ``sft_channels`` wide); ``context``: ``"none"`` (mean-scale hyperprior) or ``"checkerboard"``
    (:class:`~.layers.CheckerboardContext` over ``context_slices``).
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
        """:math:`y = g_a(x, z_0)` (stride 16); its full-resolution part window by window on a large image
        (exact: :mod:`egc_lite.models.tiling`)."""
        h = run_tiled(self.g_a1, x * 2 - 1, receptive_radius(self.g_a1)[0], 1 / 8, 8, desc="analysis tiles")
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
        from ...coding.entropy import quantize

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
        from ...coding.range_coding import GaussianStreamEncoder, compress_factorized, compress_gaussian

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
        from ...coding.range_coding import decompress_factorized

        return decompress_factorized(self.entropy_bottleneck, data, shape)

    def _decode_y(self, data: bytes, w_hat: torch.Tensor) -> torch.Tensor:
        """:math:`\\hat y` (CPU float32) from its bytes and the decoded hyper-latent."""
        from ...coding.range_coding import GaussianStreamDecoder, decompress_gaussian

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
