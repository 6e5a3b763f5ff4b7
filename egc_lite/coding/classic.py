"""Classic codecs (JPEG, WebP, AVIF through Pillow) at extreme rates, as baselines.

Every file is written with as little overhead as Pillow allows: no EXIF, ICC profile
or XMP (the pixels are copied into a fresh image first); JPEG with optimized Huffman
tables, baseline (non-progressive, which is smaller at these rates), Pillow's default
4:2:0 chroma subsampling; WebP lossy with ``method=6`` (slowest, smallest); AVIF with
libavif's default ``speed=6`` (a speed of 4 saves a few percent more and is about five
times slower), 4:2:0, one thread (so that the output does not depend on the machine).

Rates are ``8 * len(file) / (H * W)``: the whole file, headers included.

:func:`compress_at_bpp` finds, by bisection over the quality setting, the highest
quality whose rate is at or below the target. File size grows with quality almost
everywhere but not strictly everywhere, so bisection returns a quality ``q`` that fits
while ``q + 1`` does not, which in rare cases is not the global highest.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError, features

from ..errors import BitstreamError, ParameterError
from ..metrics import bpp as _bpp

__all__ = [
    "AVIF_SPEED",
    "CLASSIC_CODECS",
    "QUALITY_RANGE",
    "BaselineResult",
    "check_codec",
    "classic_available",
    "classic_unavailable_reason",
    "compress_at_bpp",
    "decode_classic",
    "encode_classic",
    "highest_quality_under",
]

CLASSIC_CODECS = ("jpeg", "webp", "avif")
#: (lowest, highest) quality setting searched per codec (JPEG quality 0 is the same as 1).
QUALITY_RANGE = {"jpeg": (1, 100), "webp": (0, 100), "avif": (0, 100)}
#: libavif speed (0 slowest/smallest .. 10 fastest) used by :func:`encode_classic` by default.
AVIF_SPEED = 6

_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
_PIL_FEATURE = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}


def check_codec(codec: str) -> str:
    """Return the codec's canonical name, or raise :class:`ParameterError` for an unknown one."""
    key = str(codec).strip().lower()
    if key == "jpg":
        key = "jpeg"
    if key not in CLASSIC_CODECS:
        raise ParameterError(f"unknown classic codec {codec!r}; choose one of {', '.join(CLASSIC_CODECS)}")
    return key


def classic_available(codec: str) -> bool:
    """Whether the installed Pillow can encode and decode ``codec``."""
    key = check_codec(codec)
    try:
        return bool(features.check(_PIL_FEATURE[key]))
    except (ValueError, KeyError):  # an old Pillow that does not know the feature name
        return False


def classic_unavailable_reason(codec: str) -> str | None:
    """Why ``codec`` cannot be used here and how to fix it, or None when it can."""
    key = check_codec(codec)
    if classic_available(key):
        return None
    import PIL

    return (
        f"{key} is not supported by the installed Pillow {PIL.__version__} "
        f"(PIL.features.check({_PIL_FEATURE[key]!r}) is False): install a Pillow wheel built with it, "
        "e.g. `pip install -U 'pillow>=11.3'` (AVIF is built into the PyPI wheels from 11.3 on)"
    )


def _require(codec: str) -> str:
    key = check_codec(codec)
    reason = classic_unavailable_reason(key)
    if reason is not None:
        raise ParameterError(reason)
    return key


def _clean_rgb(img: Image.Image) -> Image.Image:
    """A fresh RGB image with the same pixels and no metadata (EXIF, ICC, XMP)."""
    if not isinstance(img, Image.Image):
        raise ParameterError(f"expected a PIL image, got {type(img).__name__}")
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return Image.fromarray(np.asarray(rgb, dtype=np.uint8))


def encode_classic(img: Image.Image, codec: str, quality: int, *, avif_speed: int | None = None) -> bytes:
    """Encode an RGB image with ``codec`` at ``quality`` (0..100) and return the file's bytes."""
    key = _require(codec)
    q = int(quality)
    if q != quality or not 0 <= q <= 100:
        raise ParameterError(f"quality must be an integer in 0..100, got {quality!r}")
    img = _clean_rgb(img)
    buf = io.BytesIO()
    if key == "jpeg":
        img.save(buf, format="JPEG", quality=max(q, 1), optimize=True, progressive=False)
    elif key == "webp":
        img.save(buf, format="WEBP", quality=q, method=6, lossless=False, exif=b"", icc_profile=None)
    else:
        speed = AVIF_SPEED if avif_speed is None else int(avif_speed)
        if not 0 <= speed <= 10:
            raise ParameterError(f"avif_speed must be in 0..10, got {avif_speed!r}")
        img.save(buf, format="AVIF", quality=q, speed=speed, max_threads=1, exif=b"", icc_profile=None, xmp=None)
    return buf.getvalue()


def decode_classic(data: bytes) -> Image.Image:
    """Decode a JPEG, WebP or AVIF file to an RGB image.

    Anything else (garbage, truncated data, another format) raises :class:`BitstreamError`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParameterError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise BitstreamError("empty image data: nothing to decode")
    formats = [_PIL_FORMAT[c] for c in CLASSIC_CODECS if classic_available(c)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=formats) as img:
                img.load()
                return img.convert("RGB")
    except UnidentifiedImageError as exc:
        raise BitstreamError(
            f"the data is not a {'/'.join(formats)} image ({len(data)} bytes starting {data[:8]!r})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BitstreamError(f"the image declares too many pixels to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as exc:
        raise BitstreamError(f"the image data is truncated or corrupt ({type(exc).__name__}: {exc})") from exc


@dataclass
class BaselineResult:
    """One classic-codec encode at a target rate (``image`` is the decoded result)."""

    codec: str
    quality: int
    num_bytes: int
    bpp: float
    target_bpp: float
    reached_target: bool
    note: str
    image: Image.Image = field(repr=False)


def highest_quality_under(
    encode: Callable[[int], bytes],
    fits: Callable[[bytes], bool],
    q_min: int,
    q_max: int,
) -> tuple[int, bytes, bool]:
    """Bisect ``q_min..q_max`` for the highest quality whose encoding ``fits``.

    Returns ``(quality, data, reached)``; when not even ``q_min`` fits, ``(q_min, its
    data, False)``. Assumes the size grows with quality (see the module notes).
    """
    cache: dict[int, bytes] = {}

    def enc(q: int) -> bytes:
        if q not in cache:
            cache[q] = encode(q)
        return cache[q]

    if not fits(enc(q_min)):
        return q_min, enc(q_min), False
    if fits(enc(q_max)):
        return q_max, enc(q_max), True
    lo, hi = q_min, q_max  # lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(enc(mid)):
            lo = mid
        else:
            hi = mid
    return lo, enc(lo), True


def compress_at_bpp(
    img: Image.Image, codec: str, target_bpp: float, *, avif_speed: int | None = None
) -> BaselineResult:
    """Encode ``img`` with the highest quality of ``codec`` whose rate is <= ``target_bpp``.

    If even the lowest quality is above the target, returns that lowest-quality encode
    with ``reached_target=False`` and a note saying how low the codec can go.
    """
    key = _require(codec)
    if not target_bpp > 0:
        raise ParameterError(f"target_bpp must be positive, got {target_bpp!r}")
    img = _clean_rgb(img)
    w, h = img.size
    q_min, q_max = QUALITY_RANGE[key]
    q, data, reached = highest_quality_under(
        lambda qq: encode_classic(img, key, qq, avif_speed=avif_speed),
        lambda d: _bpp(len(d), h, w) <= target_bpp,
        q_min,
        q_max,
    )
    rate = _bpp(len(data), h, w)
    if reached:
        note = f"{key} quality {q}: {rate:.4f} bpp <= target {target_bpp:g}"
    else:
        note = f"{key} cannot go below {rate:.3f} bpp on this {w}x{h} image (quality {q}); target {target_bpp:g}"
    return BaselineResult(key, q, len(data), rate, float(target_bpp), reached, note, decode_classic(data))
