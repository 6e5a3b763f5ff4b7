"""Entropy coding helpers over CompressAI's ``EntropyBottleneck`` and ``GaussianConditional``.

The codecs own their entropy models as submodules (CompressAI style); the functions
here quantize, count bits, build the probability tables and range-code (rANS) with them.

Bit-exact decoding across machines
    Everything that decides which bits are written runs on the CPU in float32:
    tables are built on a CPU float32 copy of the module (:func:`update_tables`), and
    the symbols, medians, means and the scale-to-table indexes are computed from
    ``.detach().to("cpu", torch.float32)`` copies of the inputs. The integer tables
    (``_quantized_cdf``, ``_cdf_length``, ``_offset``, and ``scale_table``) are buffers,
    so they travel in the ``state_dict``: a decoder should *load* them
    (:func:`fit_table_buffers` makes ``load_state_dict`` accept their sizes) rather
    than rebuild them, because a rebuild on another CPU may differ in the last bit
    of a float and change a table entry. What this module cannot fix is a caller that
    computes ``scales`` differently on the two sides (e.g. a hyperprior decoder run on
    a GPU at encode time and on a CPU at decode time): compute the scales the same
    way on both sides (on the CPU, float32), since a scale that lands on the other
    side of a table boundary desynchronises the decoder.

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
    any input we have tried (see ``tests/test_entropy.py``, which fuzzes it in a
    subprocess); the decoder then returns meaningless but finite values. This is a
    safety net, not a validity check: the container's checksum is what rejects a
    corrupt file before it gets here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from ..errors import BitstreamError, ParameterError

__all__ = [
    "MAX_ABS_SYMBOL",
    "MIN_CODED_SYMBOLS",
    "GaussianStreamDecoder",
    "GaussianStreamEncoder",
    "compress_factorized",
    "compress_gaussian",
    "decompress_factorized",
    "decompress_gaussian",
    "estimate_bits_factorized",
    "estimate_bits_gaussian",
    "fit_table_buffers",
    "likelihood_bits",
    "quantize",
    "tables_ready",
    "update_tables",
]

#: Streams shorter than this many symbols are padded with filler symbols (see module notes).
MIN_CODED_SYMBOLS = 16
#: Largest ``|round(x - median)|`` (or ``|round(y - mean)|``) the coder accepts.
MAX_ABS_SYMBOL = 1 << 24
_PRECISION = 16  # compressai.ans works at 16-bit probability precision
_BYPASS_BITS = 4
_MAX_BYPASS = (1 << _BYPASS_BITS) - 1
_TABLE_BUFFERS = ("_offset", "_quantized_cdf", "_cdf_length")
_CPU = torch.device("cpu")


# --------------------------------------------------------------------------- quantization and rates


def quantize(x: Tensor, mode: Literal["noise", "round", "ste"], means: Tensor | None = None) -> Tensor:
    """Quantize ``x`` for training or coding.

    ``"noise"``: ``x + U(-0.5, 0.5)`` (the differentiable training proxy; ``means`` does
    not change its distribution and is ignored). ``"round"``: ``round(x - means) + means``.
    ``"ste"``: the rounded value in the forward pass with the identity gradient
    (straight-through estimator).
    """
    if mode == "noise":
        return x + torch.empty_like(x).uniform_(-0.5, 0.5)
    if mode not in ("round", "ste"):
        raise ParameterError(f"unknown quantization mode {mode!r}: use 'noise', 'round' or 'ste'")
    q = torch.round(x - means) + means if means is not None else torch.round(x)
    if mode == "round":
        return q
    return x + (q - x).detach()


def likelihood_bits(likelihoods: Tensor | Iterable[Tensor] | Mapping[str, Tensor]) -> Tensor:
    """Total information ``-sum(log2(p))`` of one or several likelihood tensors, differentiable.

    Accepts a tensor, an iterable of tensors, or a mapping such as CompressAI's
    ``{"y": ..., "z": ...}``; returns a 0-dim tensor (float32 or wider).
    """
    if isinstance(likelihoods, Tensor):
        items: list[Tensor] = [likelihoods]
    elif isinstance(likelihoods, Mapping):
        items = list(likelihoods.values())
    else:
        items = list(likelihoods)
    total: Tensor | None = None
    for p in items:
        bits = -torch.log2(p).sum()
        total = bits if total is None else total + bits
    return total if total is not None else torch.zeros(())


# --------------------------------------------------------------------------- tables


def _is_entropy_model(m: nn.Module) -> bool:
    return isinstance(m, (EntropyBottleneck, GaussianConditional))


def _check_not_meta(module: nn.Module) -> None:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_meta:
            raise ParameterError(
                f"{type(module).__name__} has tensors on the 'meta' device: load its weights before coding"
            )


def _cpu_float32(m: nn.Module) -> nn.Module:
    """``m`` itself if it already lives on the CPU in float32, else a CPU float32 deep copy."""
    _check_not_meta(m)
    tensors = list(m.parameters()) + list(m.buffers())
    if all(t.device == _CPU and (not t.is_floating_point() or t.dtype == torch.float32) for t in tensors):
        return m
    return copy.deepcopy(m).to(_CPU, torch.float32)


def _default_scale_table() -> list[float]:
    from compressai.models.base import get_scale_table

    return [float(s) for s in get_scale_table()]


def update_tables(module: nn.Module, force: bool = True, update_quantiles: bool = False) -> None:
    """Build the CDF tables of every ``EntropyBottleneck`` / ``GaussianConditional`` inside ``module``.

    Tables are computed on a CPU float32 copy and written back into the module's buffers
    (on the module's device). A ``GaussianConditional`` with an empty ``scale_table``
    gets CompressAI's default table (64 scales from 0.11 to 256). With ``force=False``
    models whose tables exist are left alone. ``update_quantiles=True`` first refits an
    ``EntropyBottleneck``'s quantiles by bisection (more exact than the auxiliary loss).
    Call this after training, before coding, and save the ``state_dict`` afterwards.
    """
    for m in module.modules():
        if not _is_entropy_model(m):
            continue
        if not force and m._offset.numel() > 0:
            continue
        if getattr(m, "entropy_coder_precision", _PRECISION) != _PRECISION:
            raise ParameterError(f"entropy_coder_precision must be {_PRECISION} for compressai.ans")
        _check_not_meta(m)
        work = copy.deepcopy(m).to(_CPU, torch.float32)
        with torch.no_grad():
            if isinstance(m, EntropyBottleneck):
                work.update(force=True, update_quantiles=update_quantiles)
                if update_quantiles:
                    m.quantiles.data.copy_(work.quantiles.data.to(m.quantiles.device, m.quantiles.dtype))
            else:
                if work.scale_table.numel() == 0:
                    work.update_scale_table(_default_scale_table(), force=True)
                else:
                    work.update()
                m.scale_table = work.scale_table.to(m.scale_table.device, m.scale_table.dtype)
        device = m._offset.device
        for name in _TABLE_BUFFERS:
            setattr(m, name, getattr(work, name).to(device))


def tables_ready(module: nn.Module) -> bool:
    """Whether every entropy model inside ``module`` has its CDF tables built."""
    return all(m._offset.numel() > 0 for m in module.modules() if _is_entropy_model(m))


def fit_table_buffers(module: nn.Module, state_dict: Mapping[str, Tensor], prefix: str = "") -> None:
    """Resize the table buffers of the entropy models in ``module`` to their sizes in ``state_dict``.

    ``nn.Module.load_state_dict`` refuses buffers whose size changed (an unbuilt table is
    empty); call this first, then ``module.load_state_dict(state_dict)``. ``prefix`` is
    the key prefix of ``module`` inside ``state_dict`` (e.g. ``"codec."``).
    """
    for name, m in module.named_modules():
        if not _is_entropy_model(m):
            continue
        base = f"{prefix}{name}." if name else prefix
        names = _TABLE_BUFFERS + (("scale_table",) if isinstance(m, GaussianConditional) else ())
        for buf in names:
            key = base + buf
            if key in state_dict:
                old = getattr(m, buf)
                new = state_dict[key]
                if old.shape != new.shape:
                    setattr(m, buf, torch.empty(new.shape, dtype=old.dtype, device=old.device))


# --------------------------------------------------------------------------- coding internals


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
    if getattr(m, "entropy_coder_precision", _PRECISION) != _PRECISION:
        raise ParameterError(f"entropy_coder_precision must be {_PRECISION} for compressai.ans")
    _check_not_meta(m)
    t = _Tables(
        cdf=m._quantized_cdf.detach().to(_CPU, torch.int32),
        cdf_length=m._cdf_length.detach().to(_CPU, torch.int32).reshape(-1),
        offset=m._offset.detach().to(_CPU, torch.int32).reshape(-1),
    )
    if t.cdf.dim() != 2 or not (t.cdf.shape[0] == t.cdf_length.numel() == t.offset.numel()):
        raise ParameterError(f"inconsistent entropy tables in {type(m).__name__}: rebuild them with update_tables")
    return t


def _cpu32(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ParameterError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise ParameterError(f"{what} is on the 'meta' device")
    out = x.detach().to(_CPU, torch.float32)
    if not bool(torch.isfinite(out).all()):
        raise ParameterError(f"{what} holds NaN or infinite values")
    return out


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
    bits = (_PRECISION - torch.log2(freq)).sum().item()
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


# --------------------------------------------------------------------------- factorized model


def _medians(bottleneck: EntropyBottleneck) -> Tensor:
    return bottleneck.quantiles.detach()[:, 0, 1].to(_CPU, torch.float32)  # (C,)


def _check_bottleneck(bottleneck: EntropyBottleneck) -> None:
    if not isinstance(bottleneck, EntropyBottleneck):
        raise ParameterError(f"expected an EntropyBottleneck, got {type(bottleneck).__name__}")


def compress_factorized(bottleneck: EntropyBottleneck, x: Tensor) -> bytes:
    """Range-code ``round(x - medians)`` of one item ``x`` of shape ``(1, C, ...)`` with its bottleneck.

    Any number of trailing dimensions (0, 1 for a token sequence ``(1, dim, n)``, 2 for a
    feature map ...). The decoder needs the trailing shape (:func:`decompress_factorized`).
    """
    _check_bottleneck(bottleneck)
    tables = _tables(bottleneck)
    x = _cpu32(x, "x")
    if x.dim() < 2 or x.shape[0] != 1:
        raise ParameterError(f"expected one item of shape (1, C, ...), got {tuple(x.shape)}")
    c = x.shape[1]
    if c != tables.cdf.shape[0]:
        raise ParameterError(f"x has {c} channels but the entropy bottleneck has {tables.cdf.shape[0]}")
    flat = x.reshape(c, -1)
    sym = torch.round(flat - _medians(bottleneck)[:, None]).to(torch.int64)
    idx = torch.arange(c, dtype=torch.int64)[:, None].expand_as(sym)
    return _encode(bottleneck, sym.reshape(-1), idx.reshape(-1), tables)


def decompress_factorized(bottleneck: EntropyBottleneck, data: bytes, shape: Sequence[int]) -> Tensor:
    """Decode bytes from :func:`compress_factorized`; ``shape`` is the shape after ``C``.

    Returns a CPU float32 tensor of shape ``(1, C, *shape)`` equal to ``round(x - m) + m``.
    """
    _check_bottleneck(bottleneck)
    tables = _tables(bottleneck)
    c = tables.cdf.shape[0]
    n = _spatial_numel(shape)
    idx = torch.arange(c, dtype=torch.int64)[:, None].expand(c, n)
    sym = _decode(bottleneck, data, idx.reshape(-1), tables)
    out = sym.reshape(c, n).to(torch.float32) + _medians(bottleneck)[:, None]
    return out.reshape(1, c, *[int(s) for s in shape])


def estimate_bits_factorized(bottleneck: EntropyBottleneck, x: Tensor) -> float:
    """Bits the bottleneck's (continuous) model assigns to ``round(x - medians)`` (eval mode, CPU float32)."""
    _check_bottleneck(bottleneck)
    x = _cpu32(x, "x")
    if x.dim() < 2:
        raise ParameterError(f"expected a tensor of shape (N, C, ...), got {tuple(x.shape)}")
    m = _cpu_float32(bottleneck)
    with torch.no_grad():
        _, lik = m(x, training=False)
    return float(likelihood_bits(lik.double()))


# --------------------------------------------------------------------------- Gaussian conditional model


def _check_conditional(conditional: GaussianConditional) -> None:
    if not isinstance(conditional, GaussianConditional):
        raise ParameterError(f"expected a GaussianConditional, got {type(conditional).__name__}")


def _scale_indexes(conditional: GaussianConditional, scales: Tensor) -> Tensor:
    """Table index of each scale, as ``GaussianConditional.build_indexes``, on the CPU in float32."""
    table = conditional.scale_table.detach().to(_CPU, torch.float32).reshape(-1)
    if table.numel() == 0:
        raise ParameterError("the GaussianConditional has an empty scale_table: call update_tables(model) first")
    bound = conditional.lower_bound_scale.bound.detach().to(_CPU, torch.float32).reshape(-1)[0]
    s = torch.maximum(scales, bound).reshape(-1).contiguous()
    # Index = number of table entries (all but the last) strictly below the scale.
    return torch.searchsorted(table[:-1].contiguous(), s, right=False).to(torch.int64)


def _means_like(means: Tensor | None, like: Tensor) -> Tensor | None:
    if means is None:
        return None
    m = _cpu32(means, "means")
    try:
        return m.expand_as(like)
    except RuntimeError as exc:
        raise ParameterError(f"means of shape {tuple(m.shape)} do not broadcast to {tuple(like.shape)}") from exc


def compress_gaussian(
    conditional: GaussianConditional, y: Tensor, scales: Tensor, means: Tensor | None = None
) -> bytes:
    """Range-code ``round(y - means)`` under Gaussians of the given ``scales`` (any shape, one stream)."""
    _check_conditional(conditional)
    tables = _tables(conditional)
    y = _cpu32(y, "y")
    s = _cpu32(scales, "scales")
    if s.shape != y.shape:
        raise ParameterError(f"scales of shape {tuple(s.shape)} must match y of shape {tuple(y.shape)}")
    mu = _means_like(means, y)
    sym = torch.round(y - mu) if mu is not None else torch.round(y)
    idx = _scale_indexes(conditional, s)
    if idx.numel() and int(idx.max()) >= tables.cdf.shape[0]:
        raise ParameterError("the scale_table and the CDF tables disagree: rebuild them with update_tables")
    return _encode(conditional, sym.to(torch.int64).reshape(-1), idx, tables)


def decompress_gaussian(
    conditional: GaussianConditional, data: bytes, scales: Tensor, means: Tensor | None = None
) -> Tensor:
    """Decode bytes from :func:`compress_gaussian` with the same ``scales`` and ``means``.

    Returns a CPU float32 tensor shaped like ``scales``: ``round(y - means) + means``.
    """
    _check_conditional(conditional)
    tables = _tables(conditional)
    s = _cpu32(scales, "scales")
    mu = _means_like(means, s)
    idx = _scale_indexes(conditional, s)
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
        _check_conditional(conditional)
        self.conditional = conditional
        self.tables = _tables(conditional)
        self._sym: list[Tensor] = []
        self._idx: list[Tensor] = []

    def add(self, y: Tensor, scales: Tensor, means: Tensor) -> Tensor:
        """Queue ``round(y - means)`` under ``scales`` (same shapes); returns the quantised ``y`` (CPU float32)."""
        y, s, mu = _cpu32(y, "y"), _cpu32(scales, "scales"), _cpu32(means, "means")
        if not y.shape == s.shape == mu.shape:
            raise ParameterError(f"y, scales and means must have one shape, got {tuple(y.shape)}, {tuple(s.shape)}, {tuple(mu.shape)}")
        sym = torch.round(y - mu)
        idx = _scale_indexes(self.conditional, s)
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

        _check_conditional(conditional)
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
        s, mu = _cpu32(scales, "scales"), _cpu32(means, "means")
        if s.shape != mu.shape:
            raise ParameterError(f"scales {tuple(s.shape)} and means {tuple(mu.shape)} must have one shape")
        n = s.numel()
        if self.read_count + n > self.total:
            raise ParameterError(f"reading {n} more symbols would pass the stream's {self.total}")
        idx = _scale_indexes(self.conditional, s)
        if idx.numel() and int(idx.max()) >= self.tables.cdf.shape[0]:
            raise ParameterError("the scale_table and the CDF tables disagree: rebuild them with update_tables")
        self.read_count += n
        if n == 0:
            return mu.clone()
        sym = torch.tensor(self._decoder.decode_stream(idx.tolist(), *self._lists), dtype=torch.int64)
        if int(sym.abs().max()) > MAX_ABS_SYMBOL:
            raise BitstreamError("a decoded symbol lies beyond what any encoder writes: the stream is corrupt")
        return sym.to(torch.float32).reshape(s.shape) + mu


def estimate_bits_gaussian(
    conditional: GaussianConditional, y: Tensor, scales: Tensor, means: Tensor | None = None
) -> float:
    """Bits the Gaussian model assigns to ``round(y - means)`` (eval mode, CPU float32)."""
    _check_conditional(conditional)
    y = _cpu32(y, "y")
    s = _cpu32(scales, "scales")
    mu = _means_like(means, y)
    m = _cpu_float32(conditional)
    with torch.no_grad():
        _, lik = m(y, s, mu, training=False)
    return float(likelihood_bits(lik.double()))


def fit_factorized(bottleneck: EntropyBottleneck, sample: Callable[[torch.Generator], Tensor], steps: int,
                   seed: int = 0, lr: float = 0.02, aux_lr: float = 0.05) -> EntropyBottleneck:
    """Fit a factorized prior to data drawn by ``sample(generator)`` for ``steps`` steps (rate
    :math:`-\\log_2 p(\\tilde y)` per symbol, plus CompressAI's auxiliary quantile loss on its own
    optimizer), then build its tables. For demonstrations, tests and benchmarks."""
    torch.manual_seed(seed)
    main = torch.optim.Adam([p for n, p in bottleneck.named_parameters() if n != "quantiles"], lr=lr)
    aux = torch.optim.Adam([bottleneck.quantiles], lr=aux_lr)
    g = torch.Generator().manual_seed(seed + 1)
    bottleneck.train()
    for _ in range(steps):
        x = sample(g)
        _, lik = bottleneck(x)
        loss = likelihood_bits(lik) / x.numel()
        main.zero_grad()
        loss.backward()
        main.step()
        aux.zero_grad()
        bottleneck.loss().backward()
        aux.step()
    bottleneck.eval()
    update_tables(bottleneck, update_quantiles=True)
    return bottleneck
