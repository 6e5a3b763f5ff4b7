"""Codec A: the text-embedding codec (Pan, Zhou, Tian) with compression guidance.

Encoder: textual inversion of a per-image embedding with a rate term
(:mod:`egc_lite.codecs.textual_inversion`), its symbols entropy-coded under the backbone's fixed
prior, plus a guide image ``x_g`` (:mod:`egc_lite.guide`). Decoder: seeded DDIM from noise with
classifier-free guidance (scale :math:`s_f`) and compression guidance (scale :math:`s_c`,
:mod:`egc_lite.sampling.guidance`), then the VAE decoder. Beyond the paper, and off unless a file asks for it
(``consistency: ilvr``, header fields ``cm``/``cu``/``ck``), the decoder can also keep the output's low
frequencies on the guide by ILVR's low-pass replacement (:mod:`egc_lite.sampling.consistency`).

Rate control: the file is ``header + embedding + guide``. Given a target, the embedding's
quantization step :math:`\\Delta` is the finest on a ladder whose symbols fit ``embedding_share``
of the budget, and the guide (factor and quality) takes what is left with the best PSNR. The
step is snapped to the header's fixed point (:data:`FIXED`) *before* quantizing, so encoder and
decoder use the same :math:`\\Delta` and the same symbol scales.

Entropy coding: the symbols' probability tables are the shipped :data:`~egc_lite.weights.TEXTINV_TABLES` (built once
with CompressAI's default scale table), loaded, never rebuilt at run time, so a file decodes
bit-exactly across torch / compressai versions. The header also stores ``pf``, the prior's
32-bit fingerprint: a file made under another prior is refused, not decoded into garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import torch
from compressai.entropy_models import GaussianConditional

from ..coding.bitstream import Bitstream, encode_bitstream
from ..coding.budget import check_decode, check_encode, check_payload_bytes
from ..coding.range_coding import compress_gaussian, decompress_gaussian
from ..data import crop_to, pad_to_multiple
from ..errors import BitstreamError, ParameterError
from ..guide import decode_guide
from ..models.memory import backbone_decode_bytes, backbone_encode_bytes
from ..sampling.consistency import CONSISTENCY_MODES, MAX_BLOCK, ConsistencyConfig, ilvr_hook, pixel_projection
from ..sampling.ddim import SamplerConfig, check_steps, ddim_sample
from ..sampling.guidance import GUIDANCE_MODES, CompressionGuidanceConfig, compression_guidance, guide_latent
from ..sampling.tiled import tiled_unet_denoiser
from ..weights import TEXTINV_TABLES
from .base import Codec, CompressOptions
from .guide_codec import best_guide
from .textual_inversion import (
    EmbeddingPrior,
    InversionConfig,
    dequantize_embedding,
    invert_embedding,
    quantize_embedding,
)

#: ``--quality N`` of this codec means a target rate (bpp).
QUALITY_BPP = {1: 0.03, 2: 0.05, 3: 0.07, 4: 0.1, 5: 0.15}
#: Multiples of the base quantization step tried by rate control.
STEP_LADDER = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
def load_tables(path: Path = TEXTINV_TABLES) -> GaussianConditional:
    """A ``GaussianConditional`` carrying the shipped tables (CPU, float32 scales)."""
    from safetensors.torch import load_file

    t = load_file(path)
    lengths = t["cdf_length"].to(torch.int32)
    cdf = torch.zeros(len(lengths), int(lengths.max()), dtype=torch.int32)
    pos = 0
    for i, n in enumerate(lengths.tolist()):
        cdf[i, :n] = t["cdf_flat"][pos : pos + n]
        pos += n
    gc = GaussianConditional(None)
    gc.scale_table = t["scale_table"].float()
    gc._quantized_cdf, gc._cdf_length, gc._offset = cdf, lengths, t["offset"].to(torch.int32)
    return gc


@dataclass(frozen=True)
class TextInvConfig:
    """Everything codec A needs besides the image; the decoding part goes into the header."""

    inversion: InversionConfig = field(default_factory=InversionConfig)
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=50, guidance_scale=3.0))
    guidance: CompressionGuidanceConfig = field(default_factory=CompressionGuidanceConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)  # beyond the paper; "none" = the paper
    guide_codec: str = "webp"
    guide_factors: tuple[int, ...] = (4, 8, 16)
    embedding_share: float = 0.15  # the embedding's share of the byte budget (the rest goes to the guide)
    default_bpp: float = 0.07
    prior_path: str | None = None  # an embedding prior file (None: the one found for the backbone)


#: Fixed-point unit of the scales and the quantization step in the header.
FIXED = 10_000


def _fix(value: float) -> int:
    """A scale or step as a fixed-point integer (the header stores these)."""
    return int(round(float(value) * FIXED))


def fixed_step(value: float) -> float:
    """The quantization step as the decoder will read it from the header (at least one unit)."""
    return max(1, _fix(value)) / FIXED


class TextInvCodec(Codec):
    """The text-embedding codec (see the module docstring)."""

    name: ClassVar[str] = "textinv"

    def __init__(self, backbone=None, config: TextInvConfig | None = None) -> None:
        super().__init__(backbone)
        self.config = config or TextInvConfig()
        if not 0 < self.config.embedding_share < 1:
            raise ParameterError(f"embedding share must be in (0, 1), got {self.config.embedding_share}")
        self.prior = EmbeddingPrior.for_backbone(self.backbone, self.config.prior_path)
        self._conditional = load_tables()

    # ------------------------------------------------------------------ pieces
    def _config_for(self, options: CompressOptions) -> TextInvConfig:
        cfg = self.config
        s = cfg.sampler
        s = replace(s, seed=options.seed, steps=options.steps or s.steps,
                    guidance_scale=s.guidance_scale if options.guidance_scale is None else options.guidance_scale)
        s.validate()
        check_steps(self.backbone, s.steps)
        g = cfg.guidance if options.compression_guidance is None else replace(cfg.guidance, scale=options.compression_guidance)
        if options.guidance_mode is not None:
            g = replace(g, mode=options.guidance_mode)
        g.validate()
        c = cfg.consistency
        if options.consistency is not None:
            c = replace(c, mode=options.consistency)
        if options.consistency_until is not None:
            c = replace(c, until=options.consistency_until)
        c.validate()
        return replace(cfg, sampler=s, guidance=g, consistency=c)

    def _target_bpp(self, options: CompressOptions) -> float:
        if options.bpp is not None and options.quality is not None:
            raise ParameterError("give either --bpp or --quality, not both")
        if options.quality is not None:
            if options.quality not in QUALITY_BPP:
                raise ParameterError(f"--quality for textinv must be one of {sorted(QUALITY_BPP)}, got {options.quality}")
            return QUALITY_BPP[options.quality]
        return options.bpp if options.bpp is not None else self.config.default_bpp

    def encode_embedding(self, symbols: torch.Tensor, step_size: float) -> bytes:
        """Range-code the symbols (1, n, d) under the prior (CPU, float32)."""
        scales = self.prior.symbol_scales(tuple(symbols.shape), step_size)
        return compress_gaussian(self._conditional, symbols.permute(0, 2, 1)[..., None], scales.permute(0, 2, 1)[..., None])

    def decode_embedding(self, data: bytes, n: int, step_size: float) -> torch.Tensor:
        scales = self.prior.symbol_scales((1, n, self.backbone.cond_dim), step_size)
        sym = decompress_gaussian(self._conditional, data, scales.permute(0, 2, 1)[..., None])
        return sym[..., 0].permute(0, 2, 1)

    def _stream(self, h: int, w: int, cfg: TextInvConfig, step: float, n_tok: int, factor: int, emb: bytes, guide: bytes) -> Bitstream:
        s, g = cfg.sampler, cfg.guidance
        # scales and the step are stored in fixed point (FIXED units per 1) as small integers: every
        # header byte counts at 0.05 bpp; the decoder uses exactly the stored values
        params = {"seed": s.seed, "steps": s.steps, "sf": _fix(s.guidance_scale), "sc": _fix(g.scale),
                  "gm": GUIDANCE_MODES.index(g.mode), "ge": g.every, "gu": _fix(g.until), "dq": _fix(step),
                  "t0": cfg.inversion.token_slice(self.backbone).start, "nt": n_tok, "f": factor,
                  "pf": self.prior.fingerprint()}
        c = cfg.consistency
        if c.mode != "none":  # beyond the paper; absent = "none", so the paper's files keep their bytes
            params.update(cm=CONSISTENCY_MODES.index(c.mode), cu=_fix(c.until), ck=c.block)
        return Bitstream(codec=self.name, backbone_id=self.backbone_id, height=h, width=w, params=params,
                         sections={"emb": emb, "guide": guide})

    def invert(self, x: torch.Tensor, cfg: TextInvConfig | None = None):
        """Textual inversion of image ``x`` (3, H, W); returns the :class:`InversionResult`."""
        cfg = cfg or self.config
        xp, _ = pad_to_multiple(x[None], self.backbone.size_multiple)
        with torch.no_grad():
            z0 = self.backbone.encode(xp.to(self.backbone.device))
        return invert_embedding(self.backbone, z0, cfg.inversion, self.prior)

    # ------------------------------------------------------------------ codec
    def _decode_bytes(self, height: int, width: int, guidance_scale: float, guidance: CompressionGuidanceConfig,
                      consistency: ConsistencyConfig) -> int:
        """Computed peak of decoding: the UNet's batch doubles under classifier-free guidance, and compression
        guidance keeps the decoder's (mode ``fast``) or also the UNet's (``full``) maps for its backward pass; mode ``latent``
        and ILVR encode the enlarged guide once."""
        batch = 2 if guidance_scale != 1.0 else 1
        grad = guidance.backward if guidance.scale > 0 else "none"
        encodes_guide = (guidance.mode == "latent" and guidance.scale > 0) or consistency.latent
        return backbone_decode_bytes(self.backbone, height, width, batch, grad=grad, unet_window=self.unet_window(height, width),
                                     encoder_pass=encodes_guide)

    def memory_estimate(self, height: int, width: int, stage: str, bs: Bitstream | None = None) -> int:
        if stage == "encode":
            return backbone_encode_bytes(self.backbone, height, width)
        if bs is not None:
            cfg = self.decode_parameters(bs)[0]
            return self._decode_bytes(height, width, cfg.sampler.guidance_scale, cfg.guidance, cfg.consistency)
        return self._decode_bytes(height, width, self.config.sampler.guidance_scale, self.config.guidance, self.config.consistency)

    def compress(self, x: torch.Tensor, options: CompressOptions = CompressOptions()) -> Bitstream:
        x = self.check_image(x, min_side=self.min_side)
        cfg = self._config_for(options)
        check_encode(lambda hh, ww: self._decode_bytes(hh, ww, cfg.sampler.guidance_scale, cfg.guidance, cfg.consistency),
                     *x.shape[1:], "codec A (textinv)")
        inv = replace(cfg.inversion, seed=options.seed)
        if options.inversion_steps is not None:
            inv = replace(inv, steps=options.inversion_steps)
        cfg = replace(cfg, inversion=inv)
        target = self._target_bpp(options)
        h, w = x.shape[1:]
        budget_bytes = target * h * w / 8
        inv = self.invert(x, cfg)
        base = cfg.inversion.step_size
        sl = cfg.inversion.token_slice(self.backbone)
        n_tok = sl.stop - sl.start
        # finest step whose symbols fit the embedding's share of the budget (snapped to the header's
        # fixed point first: the decoder quantizes and scales with exactly this value)
        chosen = None
        for mult in STEP_LADDER:
            step = fixed_step(base * mult)
            data = self.encode_embedding(quantize_embedding(self.backbone, inv.embedding, cfg.inversion, step), step)
            chosen = (step, data)
            if len(data) <= cfg.embedding_share * budget_bytes:
                break
        step, emb = chosen
        room = max(int(budget_bytes) - len(emb), 0)  # header sized with a guide as long as it can be
        header = len(encode_bitstream(self._stream(h, w, cfg, step, n_tok, 8, emb, bytes(room)))) - room
        guide_budget_bpp = 8 * (budget_bytes - header) / (h * w)
        gcfg, guide = best_guide(x, guide_budget_bpp, cfg.guide_factors, cfg.guide_codec)
        return self._stream(h, w, cfg, step, n_tok, gcfg.factor, emb, guide)

    def decode_parameters(self, bs: Bitstream) -> tuple[TextInvConfig, float, int, int]:
        """The decoding configuration stored in a file: (config, Delta, n tokens, guide factor)."""
        self.check_stream(bs)
        p = lambda k, t: self.param(bs, k, t)  # noqa: E731
        gm = p("gm", int)
        if not 0 <= gm < len(GUIDANCE_MODES):
            raise BitstreamError(f"unknown guidance mode {gm} in the header")
        try:
            sampler = SamplerConfig(steps=p("steps", int), guidance_scale=p("sf", int) / FIXED, seed=p("seed", int))
            sampler.validate()
            check_steps(self.backbone, sampler.steps)
            guidance = CompressionGuidanceConfig(scale=p("sc", int) / FIXED, mode=GUIDANCE_MODES[gm], every=p("ge", int),
                                                 until=p("gu", int) / FIXED)
            guidance.validate()
            inversion = replace(self.config.inversion, token_start=p("t0", int), n_tokens=p("nt", int))
            inversion.token_slice(self.backbone)
        except ParameterError as exc:
            raise BitstreamError(f"bad decoding parameters in the header: {exc}") from None
        consistency = self._consistency_parameters(bs)
        delta, factor = p("dq", int) / FIXED, p("f", int)
        if not 0 < delta < 1e6 or not 1 <= factor <= 64:
            raise BitstreamError("bad quantization step or guide factor in the header")
        if p("pf", int) != self.prior.fingerprint():
            raise BitstreamError(
                f"this file was coded under another embedding prior than the loaded one ({self.prior.source}): "
                "decode with the prior that made it (TextInvConfig.prior_path / --prior)"
            )
        check_payload_bytes(len(self.section(bs, "emb")), p("nt", int) * self.backbone.cond_dim, "embedding")
        check_decode(self._decode_bytes(bs.height, bs.width, sampler.guidance_scale, guidance, consistency),
                     f"this {bs.width}x{bs.height} textinv file")
        return (replace(self.config, sampler=sampler, guidance=guidance, inversion=inversion, consistency=consistency),
                delta, p("nt", int), factor)

    def _consistency_parameters(self, bs: Bitstream) -> ConsistencyConfig:
        """The consistency fields ``cm``/``cu``/``ck`` (absent: ``none``, the paper's decoder)."""
        if "cm" not in bs.params:
            return ConsistencyConfig()
        cm, cu, ck = self.param(bs, "cm", int), self.param(bs, "cu", int), self.param(bs, "ck", int)
        if not 0 <= cm < len(CONSISTENCY_MODES):
            raise BitstreamError(f"unknown consistency mode {cm} in the header")
        if not 0 <= cu <= FIXED or not 0 <= ck <= MAX_BLOCK:
            raise BitstreamError(f"bad consistency schedule in the header (until {cu}/{FIXED}, block {ck})")
        return ConsistencyConfig(mode=CONSISTENCY_MODES[cm], until=cu / FIXED, block=ck)

    def decompress(self, bs: Bitstream, sample: int = 0, guidance: CompressionGuidanceConfig | None = None,
                   guidance_scale: float | None = None, consistency: ConsistencyConfig | None = None) -> torch.Tensor:
        """Decode; ``sample`` shifts the seed (diversity); ``guidance``/``guidance_scale``/``consistency`` override
        the file's :math:`s_c` schedule, :math:`s_f` and consistency mechanism (for sweeps and ablations)."""
        cfg, delta, n_tok, factor = self.decode_parameters(bs)
        b = self.backbone
        symbols = self.decode_embedding(self.section(bs, "emb"), n_tok, delta)
        cond = dequantize_embedding(b, symbols, cfg.inversion.token_start, delta)
        guide_small, _ = decode_guide(self.section(bs, "guide"), (bs.height, bs.width), factor)
        m = b.size_multiple
        hp, wp = -(-bs.height // m) * m, -(-bs.width // m) * m
        sampler = replace(cfg.sampler, seed=cfg.sampler.seed + sample)
        if guidance_scale is not None:
            sampler = replace(sampler, guidance_scale=guidance_scale)
        gcfg = guidance or cfg.guidance
        denoiser = tiled_unet_denoiser(b)  # windows of a large latent (egc_lite.sampling.tiled)
        hook = compression_guidance(b, guide_small, (bs.height, bs.width), factor, gcfg, sampler.steps, denoiser)
        hook = hook if gcfg.scale > 0 else None
        ccfg = consistency or cfg.consistency
        if ccfg.latent:  # beyond the paper (egc_lite.sampling.consistency)
            ref = guide_latent(b, guide_small, (bs.height, bs.width), factor)
            hook = ilvr_hook(ref, ccfg.block_for(factor, b.vae_factor), ccfg, sampler.steps, hook)
        z0 = ddim_sample(b, cond, (hp // b.vae_factor, wp // b.vae_factor), sampler, denoiser, hook)
        with torch.no_grad():
            x = crop_to(b.decode(z0).float(), (bs.height, bs.width)).clamp(0, 1)
            if ccfg.pixel:  # beyond the paper (egc_lite.sampling.consistency)
                x = pixel_projection(x, guide_small, factor)
        return x[0].cpu()
