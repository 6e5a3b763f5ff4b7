"""Codec B's control module taken apart, for notebook 04: what it adds to the frozen UNet, block by
block, and decodings with the control scaled and the start step moved (with an ipywidgets panel).

:func:`residual_norms` runs the control module once on a noised latent and measures, at every place
where it adds to the UNet (after each encoder layer, after the middle block, before each decoder
ResNet for ``control="cddm"``; the encoder skips and the middle for ``"narrow"``), the RMS of the
residual and of the frozen UNet's own feature there. :func:`decode_scaled` decodes a file with every
residual multiplied by ``scale`` (0: the plain UNet) and from any start step. :class:`ControlPanel`
puts both knobs on sliders; :meth:`ControlPanel.render` runs without a browser.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..data import png_bytes
from ..metrics import compute_metrics
from ..models.diffeic.control import injection_names, injection_points
from ..sampling.ddim import ddim_sample, output_to_epsilon

__all__ = ["ControlPanel", "decode_scaled", "residual_norms", "scaled_denoiser"]


def _rms(v: torch.Tensor) -> float:
    return float(v.float().pow(2).mean().sqrt())


def _decoder_names(unet) -> list[str]:
    return [f"up{i}.res{j}" for i, block in enumerate(unet.up_blocks) for j, _ in enumerate(block.resnets)]


@torch.no_grad()
def _unet_features(backbone, z_t: torch.Tensor, t: torch.Tensor) -> tuple[list, torch.Tensor, list]:
    """The frozen UNet's own features where the control adds (no control): after each encoder point,
    after the middle block, and the stream part entering each up ResNet."""
    unet = backbone.unet
    enc, mid, dec = [], [], []
    first = lambda o: o[0] if isinstance(o, tuple) else o  # noqa: E731
    hooks = [m.register_forward_hook(lambda m_, a, o: enc.append(first(o))) for _, m in injection_points(unet)]
    hooks.append(unet.mid_block.register_forward_hook(lambda m_, a, o: mid.append(first(o))))
    hooks += [r.register_forward_pre_hook(lambda m_, a: dec.append(a[0])) for block in unet.up_blocks for r in block.resnets]
    try:
        dt = next(unet.parameters()).dtype
        unet(z_t.to(dt), t, encoder_hidden_states=backbone.null_cond.to(z_t.device, dt))
    finally:
        for h in hooks:
            h.remove()
    return enc, mid[0], dec


@torch.no_grad()
def residual_norms(model, backbone, z0: torch.Tensor, c: torch.Tensor, t: int, noise: torch.Tensor) -> list[dict]:
    """One row per injection point at training timestep ``t`` (``z_t`` from ``z0`` and ``noise``):
    ``part`` (encoder, middle, decoder), ``block``, ``residual_rms``, ``unet_rms`` (the frozen UNet's own
    feature there; for a decoder point, the stream entering the ResNet, before its skip is joined) and
    their ``ratio``; plus ``eps_change``, the relative change of the noise prediction, on every row."""
    dev = backbone.device
    a = float(backbone.scheduler.alphas_cumprod[t])
    z_t = (a**0.5 * z0.to(dev) + (1 - a) ** 0.5 * noise.to(dev)).float()
    tt = torch.full((1,), int(t), device=dev, dtype=torch.long)
    null = backbone.null_cond.to(dev).float()
    out = model.control(z_t, tt, null, c.to(dev).float())
    enc, mid = out[0], out[1]
    dec = out[2] if len(out) > 2 else []
    f_enc, f_mid, f_dec = _unet_features(backbone, z_t, tt)
    eps_c = model.predict_noise(backbone.unet, z_t, tt, null, c)
    eps_0 = model.predict_noise(backbone.unet, z_t, tt, null, c, scale=0.0)
    change = _rms(eps_c - eps_0) / max(_rms(eps_0), 1e-12)
    names = injection_names(backbone.unet)
    rows = []
    for part, names_, res, feats in [("encoder", names[:-1], enc, f_enc), ("middle", ["mid"], [mid], [f_mid]),
                                     ("decoder", _decoder_names(backbone.unet), dec, f_dec)]:
        for name, r, f in zip(names_, res, feats):
            f = f[:, : r.shape[1]] if part == "decoder" else f
            rows.append(dict(t=int(t), part=part, block=name, residual_rms=_rms(r), unet_rms=_rms(f),
                             ratio=_rms(r) / max(_rms(f), 1e-12), eps_change=change))
    return rows


def scaled_denoiser(model, backbone, c: torch.Tensor, scale: float):
    """:func:`egc_lite.codecs.diffeic.steered_denoiser` with every control residual times ``scale``."""

    def denoise(z_t, t, cond):
        with torch.no_grad():
            with backbone.inference_autocast():
                eps = model.predict_noise(backbone.unet, z_t, t, cond, c, scale=float(scale))
            return output_to_epsilon(backbone, eps, z_t.float(), t)

    return denoise


@torch.no_grad()
def decode_scaled(codec, bs, scale: float = 1.0, start_step: int | None = None, sample: int = 0) -> torch.Tensor:
    """Decode a codec-B file with the control scaled by ``scale`` and, if given, another start step
    (0: from pure noise); ``scale=1`` and ``start_step=None`` give :meth:`DiffEICCodec.decompress`'s pixels."""
    from ..data import crop_to

    sampler, quality = codec.decode_parameters(bs)
    s = replace(sampler, seed=sampler.seed + sample, start_step=sampler.start_step if start_step is None else int(start_step))
    b = codec.backbone
    model = codec.model(0 if codec.explicit else quality)  # the model the file names (0: the one given in code)
    c = codec.content_variables(bs).to(b.device)
    z0 = ddim_sample(b, b.null_cond, tuple(c.shape[-2:]), s, scaled_denoiser(model, b, c, scale),
                     init_latent=c if s.start_step else None)
    x = b.decode(z0)
    return crop_to(x, (bs.height, bs.width))[0].clamp(0, 1).cpu()


class ControlPanel:
    """Start step and control scale of one codec-B file: the decoding, its PSNR against ``original``
    (3, H, W) and its time."""

    def __init__(self, codec, bs, original: torch.Tensor) -> None:
        self.codec, self.bs, self.x = codec, bs, original.detach().float().cpu()
        sampler, _ = codec.decode_parameters(bs)
        self.steps, self.start = sampler.steps, sampler.start_step

    def render(self, start_step: int, scale: float) -> dict:
        """``{"image", "psnr", "seconds", "start_step", "scale"}``."""
        t0 = time.perf_counter()
        img = decode_scaled(self.codec, self.bs, scale, start_step)
        sec = time.perf_counter() - t0
        img8 = torch.round(img * 255) / 255
        psnr = float(compute_metrics(self.x, img8, ["psnr"])["psnr"])
        return dict(image=img8, psnr=psnr, seconds=sec, start_step=int(start_step), scale=float(scale))

    def widget(self, scale_range=(0.0, 1.5, 0.25)):
        """Two sliders (start step, control scale), a line of numbers and the image."""
        import ipywidgets as W

        k = W.IntSlider(value=self.start, min=0, max=self.steps - 1, description="start step", continuous_update=False)
        s = W.FloatSlider(value=1.0, min=scale_range[0], max=scale_range[1], step=scale_range[2], description="control",
                          continuous_update=False)
        img = W.Image(format="png")
        line = W.Label()

        def redraw(_=None):
            r = self.render(k.value, s.value)
            img.value = png_bytes(r["image"])
            line.value = (f"start={r['start_step']} of {self.steps} ({self.steps - r['start_step']} run), control={r['scale']:g}: "
                          f"PSNR {r['psnr']:.2f} dB, decoded in {r['seconds']:.1f} s")

        k.observe(redraw, names="value")
        s.observe(redraw, names="value")
        redraw()
        return W.VBox([W.HBox([k, s]), line, img])
