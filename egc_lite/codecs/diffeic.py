"""Codec B: DiffEIC (Li et al., arXiv:2404.18820), latent feature guidance + a frozen diffusion prior.

Encoder: pad the image to a multiple of 64, :math:`z_0 = s\\,\\mathcal{E}(x)`, then the learned
compressor (:class:`~egc_lite.models.diffeic.compressor.LatentCompressor`) codes ``y`` (section ``"y"``) and the
hyper-latent (section ``"z"``). Decoder: the content variables ``c`` are decoded bit-exactly, then
a seeded DDIM run of the frozen UNet steered by ``c`` through the control module (prompt always
empty, :math:`s_f = 1`) gives :math:`\\hat z_0`, and the VAE decoder the image. With
``start_step > 0`` sampling starts from ``c`` noised to that step (:math:`c \\approx z_0` by the
space alignment loss),

.. math::
    z_{t_k} = \\sqrt{\\bar\\alpha_{t_k}}\\,c + \\sqrt{1-\\bar\\alpha_{t_k}}\\,\\epsilon,

and runs only the remaining steps. By default it does: ``start_step`` is
:data:`DEFAULT_START_FRACTION` (0.6) of the steps, rounded, so 30 of 50 are skipped and 20 (40%) run.
That value is a starting point, to be tuned on the *training* photos (never on Kodak, the test set);
``--start-step 0`` decodes from pure noise, as the paper's sampler does. ``eta`` (``--eta``, default 0)
makes the steps stochastic: 0 is DDIM, 1 the ancestral DDPM-like sampler (:mod:`egc_lite.sampling.ddim`),
its noise drawn from the file's seed.

Rate points: ``--quality N`` loads a folder ``q{N}`` (``config.json`` + ``model.safetensors``)
trained for the loaded backbone with ``egc train diffeic --lmbda L`` (:data:`QUALITY_LAMBDA` lists
the suggested :math:`\\lambda`; 1 = lowest rate). Rate points are kept per backbone id: without
``weights_dir`` (``--weights DIR`` on the command line) the codec looks in
``<egc_lite.weights.rate_points_root()>/<backbone id>/q{N}`` (where ``egc train diffeic-export --quality N`` writes),
then in the package's ``egc_lite/weights/diffeic/q{N}`` when that point was trained for this backbone
(the shipped egc-tiny points). ``--bpp T`` picks
the highest shipped quality whose file fits ``T`` (the compressor is cheap; sampling is not run).
A model object can be given instead (``DiffEICCodec(backbone, model=...)``): the file then stores
quality 0, decodes only with that model, and ``--bpp`` has no other rate point to choose.

Header: ``seed``, ``steps``, ``q`` (quality, 0 = a model given in code), ``start`` (start step),
``model`` (a 32-bit fingerprint of the weights, so a file never decodes silently with other
weights), ``yh``/``yw`` (the coded latent's height and width, which fix the hyper-latent's too: a header whose
image size asks for more symbols than were coded is refused instead of decoded into garbage; files written
before these fields existed lack them) and, only when it is not 0, ``eta`` in thousandths (:data:`ETA_UNIT`; absent, as in files
written before it existed, means DDIM). Padded sizes follow from the image size in the container.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch

from ..coding.bitstream import Bitstream
from ..coding.budget import check_decode, check_encode, check_payload_bytes
from ..data import MAX_PIXELS, crop_to, pad_to_multiple
from ..errors import BitstreamError, ModelNotFoundError, ParameterError
from ..models.diffeic.config import COMPRESSOR_STRIDE
from ..models.diffeic.model import DiffEICModel, load_diffeic
from ..models.memory import backbone_decode_bytes, backbone_encode_bytes, conv_pass_bytes
from ..sampling.ddim import Denoiser, SamplerConfig, check_steps, ddim_sample, output_to_epsilon
from ..sampling.tiled import Window, latent_multiple, tiled_denoiser
from ..weights import rate_point_folder, shipped_rate_point_lambdas
from .base import Codec, CompressOptions

#: The qualities ``--quality`` takes (1 = lowest rate).
QUALITIES = (1, 2, 3, 4, 5)


def suggested_lambdas(shipped: dict[int, float]) -> dict[int, float]:
    """The rate weight to train each quality with: the shipped point's own :math:`\\lambda` where one is shipped,
    elsewhere log-linear in the quality between (or beyond) the two nearest shipped points; with nothing shipped,
    the reference's five points (16 ... 1)."""
    if not shipped:
        return {q: 2.0 ** (len(QUALITIES) - 1 - i) for i, q in enumerate(QUALITIES)}
    known = sorted(shipped)
    if len(known) == 1:
        return dict.fromkeys(QUALITIES, shipped[known[0]])
    out = {}
    for q in QUALITIES:
        a = max([k for k in known[:-1] if k <= q] or [known[0]])
        b = known[known.index(a) + 1]
        out[q] = shipped[a] * (shipped[b] / shipped[a]) ** ((q - a) / (b - a))
    return out


#: Rate weight per quality (:func:`suggested_lambdas` of the shipped rate points' ``config.json``: 4 / 0.25 / 0.03
#: for q1 / q3 / q5 of egc-tiny v3).
QUALITY_LAMBDA = suggested_lambdas(shipped_rate_point_lambdas())
DEFAULT_QUALITY = 3
DEFAULT_STEPS = 50
#: Default start step as a fraction of the steps (module docstring): 30 of 50 skipped. Tune on training photos.
DEFAULT_START_FRACTION = 0.6
#: ``eta`` is stored in the header as an integer number of these units per 1.
ETA_UNIT = 1000


def default_start_step(steps: int) -> int:
    """:data:`DEFAULT_START_FRACTION` of ``steps``, rounded, and at most ``steps - 1``."""
    return min(steps - 1, int(round(DEFAULT_START_FRACTION * steps)))


def steered_denoiser(model: DiffEICModel, backbone, c: torch.Tensor) -> Denoiser:
    """A :class:`~egc_lite.sampling.ddim.Denoiser` for :func:`~egc_lite.sampling.ddim.ddim_sample`: the frozen UNet
    steered by ``c`` through ``model``'s control module, both under the backbone's inference precision
    (:meth:`~egc_lite.backbone.Backbone.inference_autocast`); ``c`` itself was decoded in float32. A large latent is
    denoised in tiles (:mod:`egc_lite.sampling.tiled`), the control module reading the same window of ``c``."""

    def denoise(z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, window: Window) -> torch.Tensor:
        y0, y1, x0, x1 = window
        with torch.no_grad():
            with backbone.inference_autocast():
                eps = model.predict_noise(backbone.unet, z_t, t, cond, c[..., y0:y1, x0:x1])
            return output_to_epsilon(backbone, eps, z_t.float(), t)

    return tiled_denoiser(denoise, latent_multiple(backbone))


def image_multiple(backbone) -> int:
    """Image sides are padded to a multiple of this (compressor stride and the UNet's downsampling)."""
    unet = backbone.size_multiple
    m = COMPRESSOR_STRIDE
    while m % unet:
        m *= 2
    return m


class DiffEICCodec(Codec):
    """The latent-feature-guidance codec (see the module docstring)."""

    name: ClassVar[str] = "diffeic"

    def __init__(self, backbone=None, model: DiffEICModel | None = None, weights_dir: str | Path | None = None) -> None:
        super().__init__(backbone)
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self._models: dict[int, DiffEICModel] = {}
        self._fingerprints: dict[int, int] = {}
        self.explicit = model is not None
        if model is not None:
            model.check_backbone(self.backbone)
            self._add(0, model.to(self.backbone.device).eval())

    # ------------------------------------------------------------------ models
    def _add(self, quality: int, model: DiffEICModel) -> DiffEICModel:
        self._models[quality] = model
        self._fingerprints[quality] = model.fingerprint()
        return model

    def folder(self, quality: int) -> Path:
        """The rate point's folder: in ``weights_dir`` if given, else the first of the user's folder for
        this backbone id and the package's shipped point trained for it (:func:`~egc_lite.weights.rate_point_folder`)."""
        if self.weights_dir is not None:
            return self.weights_dir / f"q{quality}"
        return rate_point_folder(self.backbone_id, quality)

    def available_qualities(self) -> list[int]:
        """Qualities with weights in ``weights_dir`` (not checked against the backbone)."""
        if self.explicit:
            return [0]
        return [q for q in QUALITY_LAMBDA if (self.folder(q) / "config.json").is_file()]

    def model(self, quality: int) -> DiffEICModel:
        """The model of rate point ``quality`` (0 = the model given in code), loaded once."""
        if quality in self._models:
            return self._models[quality]
        if quality == 0:
            raise ModelNotFoundError(
                "this file was made with a DiffEIC model passed in code (quality 0): decode it with "
                "DiffEICCodec(backbone, model=the same model)"
            )
        if quality not in QUALITY_LAMBDA:
            raise ParameterError(f"--quality for diffeic must be one of {sorted(QUALITY_LAMBDA)}, got {quality}")
        folder = self.folder(quality)
        if not (folder / "config.json").is_file():
            raise ModelNotFoundError(
                f"no DiffEIC weights for quality {quality} in {folder}: train them with "
                f"`egc train diffeic --lmbda {QUALITY_LAMBDA[quality]:g} --backbone {self.backbone.name} --ckpt DIR`, then "
                f"`egc train diffeic-export --ckpt DIR --quality {quality}` (or name a folder of rate points with --weights)"
            )
        return self._add(quality, load_diffeic(folder, self.backbone))

    # ------------------------------------------------------------------ codec
    def _quality(self, options: CompressOptions) -> int | None:
        if options.bpp is not None and options.quality is not None:
            raise ParameterError("give either --bpp or --quality, not both")
        if self.explicit:
            return 0
        if options.quality is not None:
            if options.quality not in QUALITY_LAMBDA:
                raise ParameterError(f"--quality for diffeic must be one of {sorted(QUALITY_LAMBDA)}, got {options.quality}")
            return options.quality
        return None if options.bpp is not None else DEFAULT_QUALITY

    def _sampler(self, options: CompressOptions) -> SamplerConfig:
        steps = options.steps or DEFAULT_STEPS
        start = default_start_step(steps) if options.start_step is None else options.start_step
        eta = round((options.eta or 0.0) * ETA_UNIT) / ETA_UNIT  # what the decoder will read from the header
        s = SamplerConfig(steps=steps, guidance_scale=1.0, seed=options.seed, start_step=start, eta=eta)
        s.validate()
        check_steps(self.backbone, s.steps)
        return s

    def memory_estimate(self, height: int, width: int, stage: str, bs: Bitstream | None = None) -> int:
        quality = self._key(self.param(bs, "q", int)) if bs is not None else (0 if self.explicit else self._estimate_quality())
        return self._memory(height, width, stage, quality)

    def _memory(self, height: int, width: int, stage: str, quality: int) -> int:
        model, b = self.model(quality), self.backbone
        m = image_multiple(b)
        hp, wp = -(-height // m) * m, -(-width // m) * m
        if stage == "encode":
            return backbone_encode_bytes(b, hp, wp, (model,), conv_pass_bytes(model.compressor.g_a1, hp, wp))
        return backbone_decode_bytes(b, hp, wp, batch=1, extra_unet_cfg=model.control.budget_config(), extra_modules=(model,),
                                     unet_window=self.unet_window(hp, wp))

    def _estimate_quality(self) -> int:
        """A rate point to size memory with (they share one architecture): the default if shipped, else any."""
        available = self.available_qualities()
        return DEFAULT_QUALITY if DEFAULT_QUALITY in available or not available else available[0]

    def compress(self, x: torch.Tensor, options: CompressOptions = CompressOptions()) -> Bitstream:
        x = self.check_image(x, min_side=self.min_side)
        sampler = self._sampler(options)
        quality = self._quality(options)
        b = self.backbone
        h, w = x.shape[1:]
        sized = quality if quality is not None else self._estimate_quality()  # rate points share one architecture
        check_encode(lambda hh, ww: self._memory(hh, ww, "decode", sized), h, w, "codec B (diffeic)")
        xp, _ = pad_to_multiple(x[None], image_multiple(b))
        with torch.no_grad():
            z0 = b.encode(xp.to(b.device)).float()
        if quality is not None:
            return self._stream(quality, xp, z0, h, w, sampler)
        qualities = sorted(self.available_qualities(), reverse=True)
        if not qualities:
            self.model(DEFAULT_QUALITY)  # raises the missing-weights error
        best = None
        for q in qualities:  # highest quality that fits the target, else the lowest rate
            best = self._stream(q, xp, z0, h, w, sampler)
            if best.bpp() <= options.bpp:
                break
        return best

    def _stream(self, quality: int, xp: torch.Tensor, z0: torch.Tensor, h: int, w: int, sampler: SamplerConfig) -> Bitstream:
        model = self.model(quality)
        out = model.compressor.compress(xp.to(model.device), z0.to(model.device))
        y_h, y_w = (int(n) for n in xp.shape[-2:])
        params = {"seed": sampler.seed, "steps": sampler.steps, "q": quality, "start": sampler.start_step,
                  "model": self._fingerprints[quality], "yh": y_h // COMPRESSOR_STRIDE * 4, "yw": y_w // COMPRESSOR_STRIDE * 4}
        if sampler.eta:  # absent = DDIM, so such files keep the bytes of files made before eta existed
            params["eta"] = round(sampler.eta * ETA_UNIT)
        return Bitstream(codec=self.name, backbone_id=self.backbone_id, height=h, width=w, params=params,
                         sections={"y": out["strings"]["y"], "z": out["strings"]["z"]})

    def decode_parameters(self, bs: Bitstream) -> tuple[SamplerConfig, int]:
        """The sampler configuration and quality stored in a file."""
        self.check_stream(bs)
        try:
            eta = self.param(bs, "eta", int) / ETA_UNIT if "eta" in bs.params else 0.0
            sampler = SamplerConfig(steps=self.param(bs, "steps", int), guidance_scale=1.0, seed=self.param(bs, "seed", int),
                                    start_step=self.param(bs, "start", int), eta=eta)
            sampler.validate()
            check_steps(self.backbone, sampler.steps)
        except ParameterError as exc:
            raise BitstreamError(f"bad decoding parameters in the header: {exc}") from None
        quality = self.param(bs, "q", int)
        if quality != 0 and quality not in QUALITY_LAMBDA:
            raise BitstreamError(f"bad quality {quality} in the header")
        if bs.height * bs.width > MAX_PIXELS:
            raise BitstreamError(f"the header claims a {bs.width}x{bs.height} image, more pixels than egc_lite codes ({MAX_PIXELS:,})")
        return sampler, quality

    def _key(self, quality: int) -> int:
        return 0 if self.explicit else quality

    def content_variables(self, bs: Bitstream) -> torch.Tensor:
        """Decode the content variables ``c`` (1, C, Hp/8, Wp/8) of a file (no sampling)."""
        sampler, quality = self.decode_parameters(bs)
        y, z = self.section(bs, "y"), self.section(bs, "z")
        model = self.model(self._key(quality))
        if self._fingerprints[self._key(quality)] != self.param(bs, "model", int):
            raise BitstreamError(
                "this file was made with other DiffEIC weights than the loaded ones (model fingerprint differs): "
                "decode with the model that made it"
            )
        m = image_multiple(self.backbone)
        hp, wp = -(-bs.height // m) * m, -(-bs.width // m) * m
        y_shape = (hp * 4 // COMPRESSOR_STRIDE, wp * 4 // COMPRESSOR_STRIDE)  # stride 16; z's follows at stride 64
        if "yh" in bs.params and (self.param(bs, "yh", int), self.param(bs, "yw", int)) != y_shape:
            raise BitstreamError(
                f"the header's {bs.width}x{bs.height} image needs a {y_shape[0]}x{y_shape[1]} latent, but the file's payload "
                f"holds {self.param(bs, 'yh', int)}x{self.param(bs, 'yw', int)}: the header does not match its payloads"
            )
        cfg = model.config
        check_payload_bytes(len(y), cfg.M * (hp * 4 // COMPRESSOR_STRIDE) * (wp * 4 // COMPRESSOR_STRIDE), "y")  # stride 16
        check_payload_bytes(len(z), cfg.N * (hp // COMPRESSOR_STRIDE) * (wp // COMPRESSOR_STRIDE), "z")  # stride 64
        check_decode(self.memory_estimate(bs.height, bs.width, "decode", bs), f"this {bs.width}x{bs.height} diffeic file")
        return model.compressor.decompress({"y": y, "z": z}, (hp // COMPRESSOR_STRIDE, wp // COMPRESSOR_STRIDE))

    def decompress(self, bs: Bitstream, sample: int = 0) -> torch.Tensor:
        sampler, quality = self.decode_parameters(bs)
        c = self.content_variables(bs)
        b = self.backbone
        model = self.model(self._key(quality))
        s = replace(sampler, seed=sampler.seed + sample)
        c = c.to(b.device)
        z0 = ddim_sample(b, b.null_cond, tuple(c.shape[-2:]), s, steered_denoiser(model, b, c), init_latent=c if s.start_step else None)
        with torch.no_grad():
            x = b.decode(z0)
        return crop_to(x, (bs.height, bs.width))[0].clamp(0, 1).cpu()
