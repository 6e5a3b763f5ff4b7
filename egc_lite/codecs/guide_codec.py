"""The guide codec: a downsampled image coded by a classic codec, upsampled on decoding.

It is the guide ``x_g`` of the text-embedding codec and the kit's simplest whole codec.
With a target rate it tries several downsampling factors and, for each, the highest quality
that fits (header included), and keeps the one with the best PSNR.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..bitstream import Bitstream, encode_bitstream
from ..errors import BitstreamError, ParameterError
from ..guide import GuideConfig, decode_guide, encode_guide, guide_quality_for_bpp, guide_size
from ..metrics import psnr
from .base import Codec, CompressOptions

#: Factors tried when a target rate is given.
SEARCH_FACTORS = (2, 4, 8, 16)


class GuideCodec(Codec):
    """Downsample by ``factor``, code with WebP/AVIF/JPEG, upsample bicubically."""

    name: ClassVar[str] = "guide"
    uses_backbone: ClassVar[bool] = False

    def __init__(self, backbone=None, config: GuideConfig = GuideConfig(factor=4, codec="webp", quality=10)) -> None:
        super().__init__(None)
        self.config = config

    def _stream(self, x: torch.Tensor, cfg: GuideConfig, data: bytes) -> Bitstream:
        h, w = x.shape[1:]
        return Bitstream(codec=self.name, backbone_id="", height=h, width=w,
                         params={"factor": cfg.factor}, sections={"guide": data})

    def compress(self, x: torch.Tensor, options: CompressOptions = CompressOptions()) -> Bitstream:
        x = self.check_image(x)
        if options.quality is not None and options.bpp is not None:
            raise ParameterError("give either --bpp or --quality, not both")
        if options.bpp is None:
            cfg = self.config if options.quality is None else GuideConfig(self.config.factor, self.config.codec, options.quality)
            return self._stream(x, cfg, encode_guide(x, cfg))
        h, w = x.shape[1:]
        header = len(encode_bitstream(self._stream(x, self.config, b"")))
        budget_bpp = options.bpp - 8 * header / (h * w)
        best: tuple[float, Bitstream] | None = None
        smallest: Bitstream | None = None
        for f in SEARCH_FACTORS:
            if min(guide_size(h, w, f)) < 2 and f != SEARCH_FACTORS[0]:
                continue
            q, data = guide_quality_for_bpp(x, max(budget_bpp, 1e-9), f, self.config.codec)
            bs = self._stream(x, GuideConfig(f, self.config.codec, q), data)
            if smallest is None or len(data) < len(smallest.sections["guide"]):
                smallest = bs
            if bs.bpp() > options.bpp:
                continue
            score = psnr(self.decompress(bs), x)
            if best is None or score > best[0]:
                best = (score, bs)
        if best is None:  # nothing fits: the smallest file we can make, the caller reports its rate
            assert smallest is not None
            return smallest
        return best[1]

    def decompress(self, bs: Bitstream, sample: int = 0) -> torch.Tensor:
        self.check_stream(bs)
        factor = self.param(bs, "factor", int)
        if not 1 <= factor <= 64:
            raise BitstreamError(f"guide factor {factor} out of range")
        _, large = decode_guide(self.section(bs, "guide"), (bs.height, bs.width), factor)
        return large
