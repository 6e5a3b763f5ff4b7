"""Range coding (rANS) with the entropy models' tables: symbols to bytes and back, one stream per call.

Stream format
    The bytes are one CompressAI rANS stream (``compressai.ans``) of the symbols in
    C order (for the factorized model: channel-major, the table index is the channel,
    exactly as ``EntropyBottleneck.compress``). When there are fewer than
    :data:`MIN_CODED_SYMBOLS` symbols, cheap filler symbols are appended up to that
    count (both sides know the count, so no side information is sent). Without them
    CompressAI's encoder writes past its output buffer for very short inputs (one
    symbol crashes the interpreter with "double free or corruption"); the same
    overflow happens when symbols lie so far outside the table that they cost more
    than 32 bits each on average, so the encoder checks a bound first and raises
    :class:`~egc_lite.errors.ParameterError` instead.

Garbage input
    CompressAI's C++ decoder does not check the end of its input: on damaged or
    foreign bytes it reads past the buffer. :func:`decompress_factorized` and
    :func:`decompress_gaussian` therefore append zero bytes (16 per symbol plus 64 per
    input byte) before decoding, which keeps every read inside memory we own for
    any input we have tried (see ``tests/coding/test_entropy.py``, which fuzzes it in a
    subprocess); the decoder then returns meaningless but finite values. This is a
    safety net, not a validity check: the container's checksum is what rejects a
    corrupt file before it gets here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from ..errors import BitstreamError, ParameterError
from .entropy import (
    CODER_PRECISION,
    as_cpu_float32,
    check_bottleneck,
    check_conditional,
    check_not_meta,
    means_like,
    medians,
    scale_indexes,
)

__all__ = [
    "MAX_ABS_SYMBOL",
    "MIN_CODED_SYMBOLS",
    "GaussianStreamDecoder",
    "GaussianStreamEncoder",
    "compress_factorized",
    "compress_gaussian",
    "decompress_factorized",
    "decompress_gaussian",
]

_CPU = torch.device("cpu")
#: Streams shorter than this many symbols are padded with filler symbols (see module notes).
MIN_CODED_SYMBOLS = 16


#: Largest ``|round(x - median)|`` (or ``|round(y - mean)|``) the coder accepts.
MAX_ABS_SYMBOL = 1 << 24


_BYPASS_BITS = 4


_MAX_BYPASS = (1 << _BYPASS_BITS) - 1


@dataclass
class _Tables:
    cdf: Tensor  # (T, L) int32
    cdf_length: Tensor  # (T,) int32
    offset: Tensor  # (T,) int32

    def lists(self) -> tuple[list[list[int]], list[int], list[int]]:
        return self.cdf.tolist(), self.cdf_length.tolist(), self.offset.tolist()


def _tables(m: EntropyBottleneck | GaussianConditional) -> _Tables:
    if m._offset.numel() == 0 or m._quantized_cdf.numel() == 0 or m._cdf_length.numel() == 0:
        raise ParameterError(
            f"the {type(m).__name__} has no probability tables yet: call egc_lite.coding.entropy.update_tables(model) "
            "after training (and save the state_dict with them)"
        )
    if getattr(m, "entropy_coder_precision", CODER_PRECISION) != CODER_PRECISION:
        raise ParameterError(f"entropy_coder_precision must be {CODER_PRECISION} for compressai.ans")
    check_not_meta(m)
    t = _Tables(
        cdf=m._quantized_cdf.detach().to(_CPU, torch.int32),
        cdf_length=m._cdf_length.detach().to(_CPU, torch.int32).reshape(-1),
        offset=m._offset.detach().to(_CPU, torch.int32).reshape(-1),
    )
    if t.cdf.dim() != 2 or not (t.cdf.shape[0] == t.cdf_length.numel() == t.offset.numel()):
        raise ParameterError(f"inconsistent entropy tables in {type(m).__name__}: rebuild them with update_tables")
    return t


def _filler(n: int) -> int:
    return max(0, MIN_CODED_SYMBOLS - n)


def _filler_symbol(tables: _Tables) -> tuple[int, int]:
    """(table index, symbol) of the most probable symbol of all tables: the cheapest filler."""
    cdf = tables.cdf.long()
    freq = cdf[:, 1:] - cdf[:, :-1]
    # Only real slots count: slot j < cdf_length - 2 (the last slot is the escape to bypass coding).
    cols = torch.arange(freq.shape[1])[None, :]
    freq = torch.where(cols < (tables.cdf_length.long() - 2)[:, None], freq, torch.zeros_like(freq))
    best = int(torch.argmax(freq.reshape(-1)))
    table, slot = divmod(best, freq.shape[1])
    return table, slot + int(tables.offset[table])


def _check_capacity(sym: Tensor, idx: Tensor, tables: _Tables) -> None:
    """Raise ParameterError when the rANS output could overflow CompressAI's encoder buffer."""
    n = sym.numel()
    big = sym.abs().max().item() if n else 0
    if big > MAX_ABS_SYMBOL:
        raise ParameterError(
            f"a value lies {big:.3g} quantization steps from its median/mean (limit {MAX_ABS_SYMBOL}): "
            "the data is on the wrong scale for this entropy model"
        )
    offset = tables.offset.long()[idx]
    max_value = tables.cdf_length.long()[idx] - 2
    value = sym - offset
    bypass = (value < 0) | (value >= max_value)
    slot = torch.where(bypass, max_value, value)
    cdf = tables.cdf.long()
    freq = (cdf[idx, slot + 1] - cdf[idx, slot]).clamp_min(1).double()
    bits = (CODER_PRECISION - torch.log2(freq)).sum().item()
    if bool(bypass.any()):
        raw = torch.where(value < 0, -2 * value - 1, 2 * (value - max_value))[bypass].double()
        nibbles = torch.ceil(torch.log2(raw + 1) / _BYPASS_BITS)
        puts = nibbles + torch.floor(nibbles / _MAX_BYPASS) + 1
        bits += _BYPASS_BITS * puts.sum().item()
    capacity_bits = 32 * n
    # rANS emits at most (info bits)/32 words plus the 2-word flush; keep one more word of margin.
    if bits + 1e-4 * n + 96 > capacity_bits:
        raise ParameterError(
            f"these {n} symbols would cost about {bits / max(n, 1):.1f} bits each, more than the coder's "
            "32-bit-per-symbol buffer: the values lie far outside the entropy model's range "
            "(train the entropy model on data of this scale)"
        )


def _encode(m: nn.Module, sym: Tensor, idx: Tensor, tables: _Tables) -> bytes:
    """Code int64 symbols ``sym`` with table indexes ``idx`` (1-D, same length), padding with fillers."""
    k = _filler(sym.numel())
    if k:
        f_idx, f_sym = _filler_symbol(tables)
        sym = torch.cat([sym, torch.full((k,), f_sym, dtype=sym.dtype)])
        idx = torch.cat([idx, torch.full((k,), f_idx, dtype=idx.dtype)])
    _check_capacity(sym, idx, tables)
    cdf, lengths, offsets = tables.lists()
    out = m.entropy_coder.encode_with_indexes(sym.tolist(), idx.tolist(), cdf, lengths, offsets)
    return bytes(out)


def _decode(m: nn.Module, data: bytes, idx: Tensor, tables: _Tables) -> Tensor:
    """Decode ``len(idx)`` int64 symbols (fillers removed) from ``data``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParameterError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    n = idx.numel()
    k = _filler(n)
    if k:
        idx = torch.cat([idx, torch.full((k,), _filler_symbol(tables)[0], dtype=idx.dtype)])
    # Zero padding keeps the unchecked C++ reader inside our buffer on damaged input.
    padded = data + bytes(16 * (n + k) + 64 * len(data) + 256)
    cdf, lengths, offsets = tables.lists()
    values = m.entropy_coder.decode_with_indexes(padded, idx.tolist(), cdf, lengths, offsets)
    return torch.tensor(values[:n], dtype=torch.int64)


def _spatial_numel(shape: Sequence[int]) -> int:
    try:
        dims = [int(s) for s in shape]
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"shape must be a sequence of integers, got {shape!r}") from exc
    if any(d < 0 for d in dims):
        raise ParameterError(f"shape must not be negative, got {tuple(dims)}")
    return math.prod(dims)


def compress_factorized(bottleneck: EntropyBottleneck, x: Tensor) -> bytes:
    """Range-code ``round(x - medians)`` of one item ``x`` of shape ``(1, C, ...)`` with its bottleneck.

    Any number of trailing dimensions (0, 1 for a token sequence ``(1, dim, n)``, 2 for a
    feature map ...). The decoder needs the trailing shape (:func:`decompress_factorized`).
    """
    check_bottleneck(bottleneck)
    tables = _tables(bottleneck)
    x = as_cpu_float32(x, "x")
    if x.dim() < 2 or x.shape[0] != 1:
        raise ParameterError(f"expected one item of shape (1, C, ...), got {tuple(x.shape)}")
    c = x.shape[1]
    if c != tables.cdf.shape[0]:
        raise ParameterError(f"x has {c} channels but the entropy bottleneck has {tables.cdf.shape[0]}")
    flat = x.reshape(c, -1)
    sym = torch.round(flat - medians(bottleneck)[:, None]).to(torch.int64)
    idx = torch.arange(c, dtype=torch.int64)[:, None].expand_as(sym)
    return _encode(bottleneck, sym.reshape(-1), idx.reshape(-1), tables)


def decompress_factorized(bottleneck: EntropyBottleneck, data: bytes, shape: Sequence[int]) -> Tensor:
    """Decode bytes from :func:`compress_factorized`; ``shape`` is the shape after ``C``.

    Returns a CPU float32 tensor of shape ``(1, C, *shape)`` equal to ``round(x - m) + m``.
    """
    check_bottleneck(bottleneck)
    tables = _tables(bottleneck)
    c = tables.cdf.shape[0]
    n = _spatial_numel(shape)
    idx = torch.arange(c, dtype=torch.int64)[:, None].expand(c, n)
    sym = _decode(bottleneck, data, idx.reshape(-1), tables)
    out = sym.reshape(c, n).to(torch.float32) + medians(bottleneck)[:, None]
    return out.reshape(1, c, *[int(s) for s in shape])


def compress_gaussian(
    conditional: GaussianConditional, y: Tensor, scales: Tensor, means: Tensor | None = None
) -> bytes:
    """Range-code ``round(y - means)`` under Gaussians of the given ``scales`` (any shape, one stream)."""
    check_conditional(conditional)
    tables = _tables(conditional)
    y = as_cpu_float32(y, "y")
    s = as_cpu_float32(scales, "scales")
    if s.shape != y.shape:
        raise ParameterError(f"scales of shape {tuple(s.shape)} must match y of shape {tuple(y.shape)}")
    mu = means_like(means, y)
    sym = torch.round(y - mu) if mu is not None else torch.round(y)
    idx = scale_indexes(conditional, s)
    if idx.numel() and int(idx.max()) >= tables.cdf.shape[0]:
        raise ParameterError("the scale_table and the CDF tables disagree: rebuild them with update_tables")
    return _encode(conditional, sym.to(torch.int64).reshape(-1), idx, tables)


def decompress_gaussian(
    conditional: GaussianConditional, data: bytes, scales: Tensor, means: Tensor | None = None
) -> Tensor:
    """Decode bytes from :func:`compress_gaussian` with the same ``scales`` and ``means``.

    Returns a CPU float32 tensor shaped like ``scales``: ``round(y - means) + means``.
    """
    check_conditional(conditional)
    tables = _tables(conditional)
    s = as_cpu_float32(scales, "scales")
    mu = means_like(means, s)
    idx = scale_indexes(conditional, s)
    if idx.numel() and int(idx.max()) >= tables.cdf.shape[0]:
        raise ParameterError("the scale_table and the CDF tables disagree: rebuild them with update_tables")
    sym = _decode(conditional, data, idx, tables).to(torch.float32).reshape(s.shape)
    return sym + mu if mu is not None else sym


class GaussianStreamEncoder:
    """One rANS stream of Gaussian symbols written in several passes (context models).

    A context model (checkerboard, channel slices) computes the scales and means of a later pass
    from the values of earlier ones, so the symbols are added pass by pass: :meth:`add` returns the
    quantised values :math:`\\hat y = \\lfloor y - \\mu \\rceil + \\mu` exactly as
    :class:`GaussianStreamDecoder` will rebuild them. :meth:`finish` writes the same stream as one
    :func:`compress_gaussian` call over all the passes' symbols in order (fillers, capacity check and
    all), so a decoder reading the passes in the same order with the same scales and means gets them back.
    """

    def __init__(self, conditional: GaussianConditional) -> None:
        check_conditional(conditional)
        self.conditional = conditional
        self.tables = _tables(conditional)
        self._sym: list[Tensor] = []
        self._idx: list[Tensor] = []

    def add(self, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        """Queue ``round(y - means)`` under ``scales`` (same shapes); returns the quantised ``y`` (CPU float32)."""
        y, s, mu = as_cpu_float32(y, "y"), as_cpu_float32(scales, "scales"), as_cpu_float32(means, "means")
        if not y.shape == s.shape == mu.shape:
            raise ParameterError(f"y, scales and means must have one shape, got {tuple(y.shape)}, {tuple(s.shape)}, {tuple(mu.shape)}")
        sym = torch.round(y - mu)
        idx = scale_indexes(self.conditional, s)
        if idx.numel() and int(idx.max()) >= self.tables.cdf.shape[0]:
            raise ParameterError("the scale_table and the CDF tables disagree: rebuild them with update_tables")
        self._sym.append(sym.to(torch.int64).reshape(-1))
        self._idx.append(idx)
        return sym + mu

    @property
    def count(self) -> int:
        """Symbols queued so far."""
        return sum(t.numel() for t in self._sym)

    def finish(self) -> bytes:
        """The stream of every queued symbol, in the order added."""
        empty = torch.zeros(0, dtype=torch.int64)
        sym = torch.cat(self._sym) if self._sym else empty
        idx = torch.cat(self._idx) if self._idx else empty
        return _encode(self.conditional, sym, idx, self.tables)


class GaussianStreamDecoder:
    """Reads a :class:`GaussianStreamEncoder` stream back, pass by pass.

    ``total`` is the number of symbols the stream holds (both sides know it from the shapes); it
    sizes the zero padding that keeps CompressAI's unchecked reader inside memory we own on damaged
    input (see the module notes). A decoded symbol beyond :data:`MAX_ABS_SYMBOL`, which no encoder
    writes, raises :class:`~egc_lite.errors.BitstreamError`: later passes would compute their
    scales and means from such values.
    """

    def __init__(self, conditional: GaussianConditional, data: bytes, total: int) -> None:
        from compressai.ans import RansDecoder

        check_conditional(conditional)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ParameterError(f"data must be bytes, got {type(data).__name__}")
        if total < 0:
            raise ParameterError(f"total must not be negative, got {total}")
        self.conditional = conditional
        self.tables = _tables(conditional)
        self._lists = self.tables.lists()
        self.total, self.read_count = int(total), 0
        data = bytes(data)
        self._decoder = RansDecoder()
        self._decoder.set_stream(data + bytes(16 * (self.total + _filler(self.total)) + 64 * len(data) + 256))

    def read(self, scales: Tensor, means: Tensor) -> Tensor:
        """The next ``scales.numel()`` values, ``symbol + means`` (CPU float32, shaped like ``scales``)."""
        s, mu = as_cpu_float32(scales, "scales"), as_cpu_float32(means, "means")
        if s.shape != mu.shape:
            raise ParameterError(f"scales {tuple(s.shape)} and means {tuple(mu.shape)} must have one shape")
        n = s.numel()
        if self.read_count + n > self.total:
            raise ParameterError(f"reading {n} more symbols would pass the stream's {self.total}")
        idx = scale_indexes(self.conditional, s)
        if idx.numel() and int(idx.max()) >= self.tables.cdf.shape[0]:
            raise ParameterError("the scale_table and the CDF tables disagree: rebuild them with update_tables")
        self.read_count += n
        if n == 0:
            return mu.clone()
        sym = torch.tensor(self._decoder.decode_stream(idx.tolist(), *self._lists), dtype=torch.int64)
        if int(sym.abs().max()) > MAX_ABS_SYMBOL:
            raise BitstreamError("a decoded symbol lies beyond what any encoder writes: the stream is corrupt")
        return sym.to(torch.float32).reshape(s.shape) + mu
