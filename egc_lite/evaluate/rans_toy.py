"""A rANS coder in a few lines, for notebook 03: the same arithmetic as CompressAI's coder, in Python.

rANS (Duda 2013; Giesen's ``ryg_rans``, which CompressAI wraps) keeps one integer **state** ``x``.
Coding a symbol with frequency ``f`` and cumulative start ``c`` out of ``M = 2**precision`` maps

.. math::
    x \\mapsto \\lfloor x / f \\rfloor \\cdot M + (x \\bmod f) + c,

which multiplies ``x`` by about ``M / f``: the state grows by :math:`\\log_2(M/f)` bits, the symbol's
information. To keep ``x`` in a machine word, before each step the encoder **renormalises**: while
``x`` is too large for the step it emits the low ``word_bits`` of ``x`` and shifts them out, so that
``x`` stays in ``[L, L * 2**word_bits)`` with ``L = 2**lower_bits``. At the end it writes the state
itself (two words). The decoder runs the map backwards, in reverse order: the encoder therefore codes
the symbols last to first, so that the decoder gets them first to last.

:func:`rans_encode` with ``lower_bits=31, word_bits=32, precision=16`` is CompressAI's ``Rans64`` and
gives the same bytes (:func:`words_to_bytes`) as :func:`egc_lite.coding.range_coding.compress_gaussian`
for symbols inside a table (no bypass escapes) and streams of at least 16 symbols (no fillers).
A small configuration (``lower_bits=4, word_bits=4, precision=3``) keeps every number small enough to
follow by hand. :func:`package_table` reads the integer CDF that the package's coder uses for one scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..coding.entropy import scale_indexes

__all__ = ["RansStep", "package_table", "rans_decode", "rans_encode", "words_to_bytes"]


@dataclass
class RansStep:
    """One encoder step: the symbol, its interval ``[start, start + freq)`` out of ``2**precision``,
    the state before, the words emitted by renormalisation, and the state after."""

    symbol: int
    start: int
    freq: int
    state_before: int
    emitted: list[int]
    state_after: int


def _check_cdf(cdf: Sequence[int], precision: int) -> list[int]:
    cdf = [int(v) for v in cdf]
    if cdf[0] != 0 or cdf[-1] != 1 << precision or any(b < a for a, b in zip(cdf, cdf[1:])):
        raise ValueError(f"cdf must rise from 0 to 2**precision = {1 << precision}, got {cdf[:4]}...{cdf[-2:]}")
    return cdf


def rans_encode(symbols: Sequence[int], cdf: Sequence[int], precision: int, lower_bits: int = 31,
                word_bits: int = 32) -> tuple[list[int], list[RansStep]]:
    """Code ``symbols`` (indexes into ``cdf``) into words; returns ``(words, steps)``.

    ``words`` are in stream order (the final state first, then the renormalisation words, last
    emitted first), what the decoder reads; ``steps`` is the encoder's trace, in coding order
    (last symbol first).
    """
    cdf = _check_cdf(cdf, precision)
    if precision > lower_bits:
        raise ValueError("precision must not exceed lower_bits")
    low, mask = 1 << lower_bits, (1 << word_bits) - 1
    x, emitted, steps = low, [], []
    for s in reversed([int(v) for v in symbols]):
        start, freq = cdf[s], cdf[s + 1] - cdf[s]
        if freq <= 0:
            raise ValueError(f"symbol {s} has zero frequency")
        before, out = x, []
        x_max = ((low >> precision) << word_bits) * freq  # x must stay below this for the step to fit
        while x >= x_max:
            out.append(x & mask)
            x >>= word_bits
        x = ((x // freq) << precision) + (x % freq) + start
        emitted += out
        steps.append(RansStep(s, start, freq, before, out, x))
    n_state = -(-(lower_bits + word_bits) // word_bits)  # words that hold the final state
    state = [(x >> (word_bits * k)) & mask for k in range(n_state)]  # low word first
    return state + emitted[::-1], steps


def rans_decode(words: Sequence[int], n: int, cdf: Sequence[int], precision: int, lower_bits: int = 31,
                word_bits: int = 32) -> list[int]:
    """Decode ``n`` symbols from :func:`rans_encode`'s ``words`` with the same table and sizes."""
    cdf = _check_cdf(cdf, precision)
    low, n_state = 1 << lower_bits, -(-(lower_bits + word_bits) // word_bits)
    x = sum(int(w) << (word_bits * k) for k, w in enumerate(words[:n_state]))
    pos, out = n_state, []
    for _ in range(n):
        slot = x & ((1 << precision) - 1)
        s = next(k for k in range(len(cdf) - 1) if cdf[k] <= slot < cdf[k + 1])
        x = (cdf[s + 1] - cdf[s]) * (x >> precision) + slot - cdf[s]
        while x < low:  # renormalise: read the words back
            x = (x << word_bits) | int(words[pos])
            pos += 1
        out.append(s)
    return out


def words_to_bytes(words: Sequence[int], word_bits: int = 32) -> bytes:
    """The stream as bytes (little-endian words, as CompressAI writes its 32-bit words)."""
    if word_bits % 8:
        raise ValueError("only whole-byte words convert to bytes")
    return b"".join(int(w).to_bytes(word_bits // 8, "little") for w in words)


def package_table(conditional, scale: float) -> tuple[list[int], int]:
    """``(cdf, offset)``: the 16-bit integer CDF the package's coder uses for a Gaussian of ``scale``
    (the table :func:`~egc_lite.coding.entropy.scale_indexes` picks), without its escape slot, and
    the symbol of its first entry. Symbol ``k`` (``round(y - mu)``) codes as index ``k - offset``."""
    idx = int(scale_indexes(conditional, torch.tensor([float(scale)]))[0])
    length = int(conditional.cdf_length[idx])
    cdf = [int(v) for v in conditional.quantized_cdf[idx, :length].tolist()]
    # the last slot (cdf[-2] .. cdf[-1]) is the escape to bypass coding: keep it so the CDF ends at 2**16
    return cdf, int(conditional.offset[idx])
