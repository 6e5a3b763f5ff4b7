"""Memory budget: encoding and decoding are checked against it before anything is allocated.

A header names the image size, and every tensor a decoder builds follows from it. A hostile file with a
valid checksum can claim a size its payloads were never made for (say 8 x 65535 beside the payloads of a
64 x 64 image) and make a decoder ask for gigabytes. Decoders therefore call :func:`check_decode` with
the computed peak of their decoding (:mod:`egc_lite.models.memory`) before they decode a single symbol,
and refuse above :func:`decode_budget_bytes`; encoders call :func:`check_encode` with the *decoder's*
estimate before writing, so that the kit never writes a file its own machine would refuse to open.
"""

from __future__ import annotations

import os

from ..errors import BitstreamError, ImageError

GIB = 2**30
#: Default budget when ``EGC_DECODE_BUDGET_GB`` is not set (also capped at half the machine's memory).
DEFAULT_BUDGET_GB = 12.0


def _machine_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def decode_budget_bytes() -> int:
    """``$EGC_DECODE_BUDGET_GB`` GiB if set, else :data:`DEFAULT_BUDGET_GB` GiB capped at half the RAM."""
    env = os.environ.get("EGC_DECODE_BUDGET_GB", "").strip()
    if env:
        try:
            return int(float(env) * GIB)
        except ValueError:
            pass
    budget = int(DEFAULT_BUDGET_GB * GIB)
    ram = _machine_bytes()
    return min(budget, ram // 2) if ram else budget


def check_decode(estimate: int, what: str) -> None:
    """Refuse a file whose decoding would need more than the budget (before allocating anything)."""
    budget = decode_budget_bytes()
    if estimate > budget:
        raise BitstreamError(
            f"{what} would need about {estimate / GIB:.1f} GiB to decode (computed), more than the "
            f"{budget / GIB:.1f} GiB budget: the header's image size does not fit this file or this machine "
            "(set EGC_DECODE_BUDGET_GB to allow more)"
        )


def largest_fitting_megapixels(estimate_for, height: int, width: int) -> float:
    """The largest image of ``height x width``'s aspect whose ``estimate_for(h, w)`` fits the budget (megapixels)."""
    budget, lo, hi = decode_budget_bytes(), 0.0, 1.0
    for _ in range(30):  # bisect on the scale of the sides
        mid = (lo + hi) / 2
        h, w = max(1, int(height * mid)), max(1, int(width * mid))
        lo, hi = (mid, hi) if estimate_for(h, w) <= budget else (lo, mid)
    return int(height * lo) * int(width * lo) / 1e6


def check_encode(estimate_for, height: int, width: int, what: str) -> None:
    """Refuse to write a file that this machine could not decode: ``estimate_for(h, w)`` is the decoder's
    estimate at a size; above the budget, one line saying what size would fit and which setting to change."""
    budget = decode_budget_bytes()
    need = estimate_for(height, width)
    if need > budget:
        fits = largest_fitting_megapixels(estimate_for, height, width)
        raise ImageError(
            f"this {width}x{height} photo would need about {need / GIB:.2f} GiB to decode with {what}, more than the "
            f"{budget / GIB:.2f} GiB decode budget of this machine, so the file would not open here: resize it to about "
            f"{fits:.2g} megapixels or less, use another codec, or raise EGC_DECODE_BUDGET_GB if this machine has the memory"
        )


def check_payload_bytes(n_bytes: int, n_symbols: int, what: str) -> None:
    """A range-coded payload cannot be longer than its symbols can fill: the encoder refuses streams
    over 32 bits per symbol (:mod:`egc_lite.coding.range_coding`), so more bytes mean a header of another image."""
    from .range_coding import MIN_CODED_SYMBOLS

    limit = 4 * (max(n_symbols, MIN_CODED_SYMBOLS) + 4)
    if n_bytes > limit:
        raise BitstreamError(
            f"the {what} payload is {n_bytes} bytes, more than {n_symbols} symbols can fill ({limit}): "
            "the header's image size does not match the payloads"
        )
