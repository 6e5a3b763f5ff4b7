"""Codec B's compressor taken apart, for notebook 03: its latents, its rate piece by piece, and a
quantisation-step panel.

:func:`compressor_latents` runs a :class:`~egc_lite.models.diffeic.LatentCompressor` on one image the
way its coder does (CPU float32 where the bits are decided) and keeps every intermediate: ``y``, the
hyper-latent ``w`` and the decoder's :math:`\\hat w`, the hyper features :math:`\\psi = h_s(\\hat w)`, the
scales and means of ``y`` (after the checkerboard context when the model has one), :math:`\\hat y` and
the real bytes of both sections. :func:`rate_breakdown` measures what each part of the entropy model
buys, in estimated bits, by taking it away: a single Gaussian per channel instead of the hyperprior,
the anchors' parameters everywhere instead of the checkerboard's second pass, a zero latent instead of
``z0`` in the SFT layers. :class:`StepPanel` re-quantises ``y`` with a coarser or finer step and
shows the image :math:`\\mathcal{D}(c)` and the bits (ipywidgets; :meth:`StepPanel.render` runs
without a browser).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..coding.entropy import estimate_bits_factorized, estimate_bits_gaussian
from ..coding.range_coding import decompress_factorized
from ..data import png_bytes
from ..metrics import compute_metrics

__all__ = ["CompressorLatents", "StepPanel", "compressor_latents", "quantise_with_step", "rate_breakdown"]


@dataclass
class CompressorLatents:
    """Everything between an image and its two byte sections (CPU float32, batch of one)."""

    y: torch.Tensor  # (1, M, h, w): g_a(x, z0)
    w: torch.Tensor  # (1, N, h/4, w/4): h_a(y, z0) (or h_a(y))
    w_hat: torch.Tensor  # the decoder's hyper-latent, decoded from z_bytes
    psi: torch.Tensor  # h_s(w_hat), (1, 2M, h, w)
    scales: torch.Tensor  # of y, as coded (after the context model's passes when there is one)
    means: torch.Tensor
    y_hat: torch.Tensor  # decoded from y_bytes
    anchors: torch.Tensor | None  # (h, w) bool: the checkerboard's first pass; None without a context model
    y_bytes: bytes
    z_bytes: bytes


def _cpu(module):
    return copy.deepcopy(module).to("cpu", torch.float32).eval()


def _context_pass(context, psi: torch.Tensor, y: torch.Tensor, step: float = 1.0):
    """Run the checkerboard passes with rounding at ``step`` (the encoder's values, no coder)."""

    def code(lo, hi, mask, scales, means):
        q = torch.round((y[:, lo:hi] - means) / step) * step + means
        return q * mask.to(y.dtype)

    return context.run(psi, code)


@torch.no_grad()
def compressor_latents(compressor, x: torch.Tensor, z0: torch.Tensor | None) -> CompressorLatents:
    """Run ``compressor`` on ``x`` (1, 3, H, W), sides multiples of 64, with its backbone latent ``z0``."""
    comp = _cpu(compressor)
    x = x.detach().to("cpu", torch.float32)
    z0 = None if z0 is None else z0.detach().to("cpu", torch.float32)
    y = comp.analysis(x, z0)
    w = comp.hyper_analysis(y, z0)
    out = compressor.compress_latents(y, w)  # the package's own coder: the real bytes and the decoder's y_hat
    z_bytes, y_bytes = out["strings"]["z"], out["strings"]["y"]
    w_hat = decompress_factorized(comp.entropy_bottleneck, z_bytes, out["shape"])
    psi = comp.h_s(w_hat)
    if comp.context is None:
        scales, means = psi.chunk(2, dim=1)
        anchors = None
    else:
        _, scales, means = _context_pass(comp.context, psi, y)
        from ..models.diffeic.layers import checkerboard

        anchors = checkerboard(*psi.shape[-2:])
    return CompressorLatents(y, w, w_hat, psi, scales, means, out["y_hat"], anchors, y_bytes, z_bytes)


def _bits_map(gc, y, scales, means) -> torch.Tensor:
    """Bits of every element of ``y`` under the coder's Gaussian conditional (eval mode)."""
    with torch.no_grad():
        _, lik = _cpu(gc)(y, scales, means, training=False)
    return -torch.log2(lik.double())


@torch.no_grad()
def rate_breakdown(compressor, lat: CompressorLatents, x: torch.Tensor | None = None,
                   z0: torch.Tensor | None = None) -> list[dict]:
    """Estimated bits of one image under the shipped entropy model and with one part taken away.

    Rows (``model``, ``y_bits``, ``w_bits``, ``total_bits``, plus ``anchor_bits`` and ``nonanchor_bits``
    where a checkerboard splits them, and with ``z0`` ``c_mse``, the mean squared distance of the content
    variables :math:`g_s(\\hat y)` to ``z0`` where the row changes them): a Gaussian per channel of ``y`` fitted to this very ``y`` (no
    hyperprior; the fit is in its favour and its 2M parameters are not counted); the hyperprior alone
    (with a checkerboard model: the anchors' parameters, computed from :math:`\\psi` only, used at every
    position); the shipped model. With ``x`` and ``z0`` and SFT modulation, a last row runs the encoder
    with ``z0`` set to zero in the SFT layers (the decoder never sees ``z0``; the row shows how much
    the analysis leans on it, not what a model trained without it would do).
    """
    comp = _cpu(compressor)
    gc, eb = comp.gaussian_conditional, comp.entropy_bottleneck
    y = lat.y
    w_bits = estimate_bits_factorized(eb, lat.w)

    def row(model, scales, means, w_bits_row, y_in=y, c_from=None):
        bmap = _bits_map(gc, y_in, scales, means)
        r = dict(model=model, y_bits=float(bmap.sum()), w_bits=w_bits_row)
        if z0 is not None:  # how far the content variables g_s(y_hat) are from z0 (the training's alignment term)
            r["c_mse"] = float(((comp.synthesis(c_from) - z0.cpu().float()) ** 2).mean()) if c_from is not None else None
        if lat.anchors is not None:
            r["anchor_bits"] = float(bmap[..., lat.anchors].sum())
            r["nonanchor_bits"] = float(bmap[..., ~lat.anchors].sum())
        r["total_bits"] = r["y_bits"] + w_bits_row
        return r

    mu = y.mean(dim=(2, 3), keepdim=True).expand_as(y)
    sd = y.std(dim=(2, 3), keepdim=True).expand_as(y)
    rows = [row("one Gaussian per channel (no hyperprior)", sd, mu, 0.0)]
    if comp.context is not None and len(comp.context.slices) == 1:
        s_a, m_a = comp.context.anchor[0](lat.psi).chunk(2, dim=1)
        rows.append(row("hyperprior only (anchor parameters everywhere)", s_a, m_a, w_bits))
        rows.append(row("hyperprior + checkerboard context (shipped)", lat.scales, lat.means, w_bits, c_from=lat.y_hat))
    else:
        rows.append(row("hyperprior (shipped)", lat.scales, lat.means, w_bits, c_from=lat.y_hat))
    sft = getattr(comp, "g_a_sft", None) is not None
    if sft and x is not None and z0 is not None:
        lat0 = compressor_latents(compressor, x, torch.zeros_like(z0))
        rows.append(row("shipped, encoder run with z0 = 0 in its SFT layers", lat0.scales, lat0.means,
                        estimate_bits_factorized(eb, lat0.w), y_in=lat0.y, c_from=lat0.y_hat))
    return rows


@torch.no_grad()
def quantise_with_step(compressor, lat: CompressorLatents, step: float) -> tuple[torch.Tensor, float]:
    """:math:`\\hat y_\\Delta = \\Delta \\lfloor (y - \\mu)/\\Delta \\rceil + \\mu` (the context model's
    passes rerun on the coarser values) and its estimated bits, side information included: the
    symbols :math:`\\lfloor (y-\\mu)/\\Delta \\rceil` under Gaussians of scale :math:`\\sigma/\\Delta`.
    ``step = 1`` is the codec's own quantisation."""
    comp = _cpu(compressor)
    if comp.context is None:
        scales, means = lat.scales, lat.means
        y_hat = torch.round((lat.y - means) / step) * step + means
    else:
        y_hat, scales, means = _context_pass(comp.context, lat.psi, lat.y, step)
    bits = estimate_bits_gaussian(comp.gaussian_conditional, lat.y / step, scales / step, means / step)
    return y_hat, bits + estimate_bits_factorized(comp.entropy_bottleneck, lat.w)


class StepPanel:
    """Rate point and quantisation step of codec B's compressor: :math:`\\mathcal{D}(g_s(\\hat y_\\Delta))`,
    its bits and PSNR. ``models``: ``{quality: DiffEICModel}``; ``x``: (3, H, W) in [0, 1]."""

    def __init__(self, backbone, models: dict, x: torch.Tensor, pad_multiple: int = 64) -> None:
        from ..data import pad_to_multiple

        self.backbone, self.models, self.x = backbone, dict(models), x.detach().float().cpu()
        self.xp, _ = pad_to_multiple(self.x[None], pad_multiple)
        with torch.no_grad():
            self.z0 = backbone.encode(self.xp.to(backbone.device)).float().cpu()
        self._latents: dict = {}

    def latents(self, quality) -> CompressorLatents:
        if quality not in self._latents:
            self._latents[quality] = compressor_latents(self.models[quality].compressor, self.xp, self.z0)
        return self._latents[quality]

    @torch.no_grad()
    def render(self, quality, step: float) -> dict:
        """``{"image": (3, H, W), "bits", "bpp", "psnr", "quality", "step"}`` for one setting."""
        comp = self.models[quality].compressor
        y_hat, bits = quantise_with_step(comp, self.latents(quality), float(step))
        p = next(comp.g_s.parameters())
        c = comp.synthesis(y_hat.to(p.device, p.dtype)).float()
        img = self.backbone.decode(c.to(self.backbone.device)).float().cpu().clamp(0, 1)[0]
        H, W = self.x.shape[-2:]
        img = img[:, :H, :W]
        img8 = torch.round(img * 255) / 255
        psnr = float(compute_metrics(self.x, img8, ["psnr"])["psnr"])
        return dict(image=img8, bits=bits, bpp=bits / (H * W), psnr=psnr, quality=quality, step=float(step))

    def widget(self, steps=(0.5, 4.0, 0.25)):
        """The ipywidgets panel: a rate-point dropdown, a step slider, a line of numbers and the image."""

        import ipywidgets as W

        q = W.Dropdown(options=sorted(self.models), value=sorted(self.models)[len(self.models) // 2],
                       description="rate point")
        s = W.FloatSlider(value=1.0, min=steps[0], max=steps[1], step=steps[2], description="step",
                          continuous_update=False)
        img = W.Image(format="png")
        line = W.Label()

        def redraw(_=None):
            r = self.render(q.value, s.value)
            img.value = png_bytes(r["image"])
            line.value = (f"q{r['quality']}, step={r['step']:g}: {r['bits']:,.0f} bits = {r['bpp']:.4f} bpp "
                          f"(estimated, side information included), PSNR of D(c) {r['psnr']:.2f} dB")

        q.observe(redraw, names="value")
        s.observe(redraw, names="value")
        redraw()
        return W.VBox([W.HBox([q, s]), line, img])
