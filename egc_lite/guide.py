"""The guide image: a small, heavily compressed copy of the input.

The text-embedding codec (DESIGN.md, codec A) sends a guide ``x_g`` next to the
learned embedding, and its decoder steers sampling towards it (compression
guidance). On its own the guide is also the simplest codec of the kit: downsample,
code with a classic codec, upsample.

* :func:`degrade` is **the** degradation: replicate-pad bottom/right to a multiple of
  ``factor``, then average each ``factor x factor`` block. It is differentiable, and
  the same function makes the guide and, inside compression guidance, degrades the
  decoder's estimate, so the two match exactly.
* The small image is quantized to 8 bits and coded with JPEG, WebP or AVIF
  (:mod:`egc_lite.coding.classic`); the guide's bytes are that file alone (its size is known
  to the decoder from the image size and ``factor``).
* :func:`upsample` is bicubic (``align_corners=False``) and clamped to ``[0, 1]``.
  Given ``factor``, it enlarges the small image to the *padded* size
  ``(h * factor, w * factor)`` and crops the top-left ``(H, W)``, so every pixel lands
  where its block came from (without ``factor`` it resizes straight to ``size``, which
  shifts content slightly when ``H`` or ``W`` is not a multiple of the factor).
  :func:`decode_guide` uses the exact form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .coding.classic import (
    QUALITY_RANGE,
    check_codec,
    classic_unavailable_reason,
    decode_classic,
    encode_classic,
    highest_quality_under,
)
from .data import pil_to_tensor, tensor_to_pil
from .errors import BitstreamError, ParameterError
from .metrics import bpp as _bpp

__all__ = [
    "MAX_FACTOR",
    "GuideConfig",
    "decode_guide",
    "degrade",
    "encode_guide",
    "guide_quality_for_bpp",
    "guide_size",
    "upsample",
]

#: Largest downsampling factor accepted.
MAX_FACTOR = 64


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or int(factor) != factor or not 1 <= int(factor) <= MAX_FACTOR:
        raise ParameterError(f"guide factor must be an integer in 1..{MAX_FACTOR}, got {factor!r}")
    return int(factor)


@dataclass(frozen=True)
class GuideConfig:
    """How the guide is made: downsampling ``factor``, classic ``codec`` and its ``quality``."""

    factor: int = 8
    codec: str = "webp"
    quality: int = 10

    def __post_init__(self) -> None:
        _check_factor(self.factor)
        key = check_codec(self.codec)
        reason = classic_unavailable_reason(key)
        if reason is not None:
            raise ParameterError(reason)
        if key != self.codec:
            object.__setattr__(self, "codec", key)
        q = self.quality
        if isinstance(q, bool) or int(q) != q or not 0 <= int(q) <= 100:
            raise ParameterError(f"guide quality must be an integer in 0..100, got {q!r}")


def guide_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """Size ``(ceil(H / factor), ceil(W / factor))`` of the guide of an ``H x W`` image."""
    f = _check_factor(factor)
    if height <= 0 or width <= 0:
        raise ParameterError(f"image size must be positive, got {height}x{width}")
    return math.ceil(height / f), math.ceil(width / f)


def degrade(x: Tensor, factor: int) -> Tensor:
    """Downsample ``(B, 3, H, W)`` (or ``(3, H, W)``) to ``ceil(H/f) x ceil(W/f)`` by block averaging.

    The bottom and right edges are first padded by replication to a multiple of
    ``factor``. Differentiable; keeps dtype and device.
    """
    f = _check_factor(factor)
    if x.dim() not in (3, 4):
        raise ParameterError(f"expected (3, H, W) or (B, 3, H, W), got shape {tuple(x.shape)}")
    squeeze = x.dim() == 3
    xb = x.unsqueeze(0) if squeeze else x
    h, w = xb.shape[-2:]
    if h == 0 or w == 0:
        raise ParameterError(f"cannot degrade an empty image of shape {tuple(x.shape)}")
    if f == 1:
        out = xb
    else:
        ph, pw = (-h) % f, (-w) % f
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode="replicate")
        out = F.avg_pool2d(xb, kernel_size=f, stride=f)
    return out.squeeze(0) if squeeze else out


def upsample(x_small: Tensor, size: tuple[int, int], factor: int | None = None) -> Tensor:
    """Bicubic enlargement (``align_corners=False``) to ``size = (H, W)``, clamped to ``[0, 1]``.

    With ``factor``, enlarge to ``(h * factor, w * factor)`` and crop the top-left
    ``(H, W)``: the exact inverse geometry of :func:`degrade`. Accepts ``(3, h, w)``
    or ``(B, 3, h, w)``.
    """
    if x_small.dim() not in (3, 4):
        raise ParameterError(f"expected (3, h, w) or (B, 3, h, w), got shape {tuple(x_small.shape)}")
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise ParameterError(f"target size must be positive, got {H}x{W}")
    squeeze = x_small.dim() == 3
    xb = x_small.unsqueeze(0) if squeeze else x_small
    if factor is None:
        out = F.interpolate(xb, size=(H, W), mode="bicubic", align_corners=False)
    else:
        f = _check_factor(factor)
        h, w = xb.shape[-2:]
        if (h, w) != guide_size(H, W, f):
            raise ParameterError(
                f"a {h}x{w} guide does not belong to a {H}x{W} image with factor {f} "
                f"(expected {guide_size(H, W, f)[0]}x{guide_size(H, W, f)[1]})"
            )
        out = F.interpolate(xb, scale_factor=f, mode="bicubic", align_corners=False)[..., :H, :W]
    out = out.clamp(0.0, 1.0)
    return out.squeeze(0) if squeeze else out


def _single(x: Tensor) -> Tensor:
    """(3, H, W) from (3, H, W) or (1, 3, H, W)."""
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ParameterError(f"expected one image of shape (3, H, W), got {tuple(x.shape)}")
    return x


def _small_pil(x: Tensor, factor: int):
    with torch.no_grad():
        small = degrade(_single(x).detach().float().cpu(), factor)
    return tensor_to_pil(small)


def encode_guide(x: Tensor, cfg: GuideConfig) -> bytes:
    """Code the guide of ``x`` (``(3, H, W)`` in ``[0, 1]``): degrade, quantize to 8 bit, encode."""
    return encode_classic(_small_pil(x, cfg.factor), cfg.codec, cfg.quality)


def decode_guide(data: bytes, size: tuple[int, int], factor: int) -> tuple[Tensor, Tensor]:
    """Decode guide bytes for an image of ``size = (H, W)`` made with ``factor``.

    Returns ``(small, large)``: the small guide ``(3, ceil(H/f), ceil(W/f))`` and its
    upsampling to ``(3, H, W)``, both float32 in ``[0, 1]``. Garbage bytes or a guide of
    the wrong size raise :class:`BitstreamError`.
    """
    H, W = int(size[0]), int(size[1])
    h, w = guide_size(H, W, factor)
    img = decode_classic(data)
    if img.size != (w, h):
        raise BitstreamError(
            f"guide image is {img.size[0]}x{img.size[1]} (WxH) but a {W}x{H} image with factor {factor} "
            f"needs a {w}x{h} guide"
        )
    small = pil_to_tensor(img)
    return small, upsample(small, (H, W), factor=factor)


def guide_quality_for_bpp(x: Tensor, target_bpp: float, factor: int, codec: str = "webp") -> tuple[int, bytes]:
    """Highest quality whose guide costs at most ``target_bpp`` of ``x``'s area.

    Returns ``(quality, data)``; when no quality fits, the lowest quality and its bytes
    (compare ``8 * len(data) / (H * W)`` with the target to tell).
    """
    if not target_bpp > 0:
        raise ParameterError(f"target_bpp must be positive, got {target_bpp!r}")
    key = check_codec(codec)
    GuideConfig(factor=factor, codec=key)  # validates factor and availability
    x = _single(x)
    H, W = x.shape[-2:]
    img = _small_pil(x, factor)
    q_min, q_max = QUALITY_RANGE[key]
    q, data, _ = highest_quality_under(
        lambda q: encode_classic(img, key, q),
        lambda d: _bpp(len(d), H, W) <= target_bpp,
        q_min,
        q_max,
    )
    return q, data
