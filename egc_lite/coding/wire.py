"""The byte-level pieces of the ``.egc`` container (:mod:`.bitstream` documents the layout): shortest-form
LEB128 varints, zigzag-coded signed integers, type-tagged parameter values, and :class:`Reader`, a
bounds-checked cursor whose every failure is a :class:`~egc_lite.errors.BitstreamError` naming the field
and the byte."""

from __future__ import annotations

import math
import numbers
import struct

from ..errors import BitstreamError, ParameterError

MAX_VARINT_BYTES = 10
UINT64_MAX = (1 << 64) - 1
TAG_INT = 1
TAG_FLOAT = 2
TAG_STR = 3
TAG_FALSE = 4
TAG_TRUE = 5

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

ParamValue = int | float | str | bool


def put_varint(out: bytearray, value: int) -> None:
    """Append ``value`` (0 <= value < 2**64) as a shortest-form LEB128 varint."""
    if not 0 <= value <= UINT64_MAX:
        raise ParameterError(f"value {value} does not fit in an unsigned 64-bit varint")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def zigzag(n: int) -> int:
    """Map a signed 64-bit integer to an unsigned one: 0,-1,1,-2 -> 0,1,2,3."""
    return (n << 1) ^ (n >> 63)


def unzigzag(z: int) -> int:
    """Inverse of :func:`zigzag`."""
    return (z >> 1) ^ -(z & 1)


def is_printable_ascii(text: str, allow_space: bool) -> bool:
    """Whether ``text`` only holds printable ASCII (with or without space)."""
    low = 0x20 if allow_space else 0x21
    return all(low <= ord(c) <= 0x7E for c in text)


class Reader:
    """Bounds-checked cursor over the checksummed part of a file."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos

    def fail(self, what: str, at: int | None = None) -> BitstreamError:
        """Build the error for a malformed field."""
        where = self.pos if at is None else at
        return BitstreamError(
            f"corrupt egc_lite file: {what} (at byte {where}); "
            "the file is damaged or was not written by egc_lite: compress the image again"
        )

    def u8(self, what: str) -> int:
        """Read one byte."""
        if self.pos >= len(self.data):
            raise self.fail(f"the file ends inside the {what}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int, what: str) -> bytes:
        """Read ``n`` bytes, refusing lengths beyond the end of the data."""
        if n > self.remaining():
            raise self.fail(f"the {what} claims {n} bytes but only {self.remaining()} remain")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self, what: str) -> int:
        """Read a shortest-form LEB128 varint of at most 10 bytes and value < 2**64."""
        start = self.pos
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise self.fail(f"the {what} is not in shortest varint form", start)
                if value > UINT64_MAX:
                    raise self.fail(f"the {what} does not fit in 64 bits", start)
                return value
        raise self.fail(f"the {what} is longer than {MAX_VARINT_BYTES} bytes", start)

    def name(self, kind: str, max_bytes: int) -> str:
        """Read a u8-length-prefixed name (1..``max_bytes`` printable ASCII characters, no space)."""
        start = self.pos
        n = self.u8(f"{kind} name length")
        if not 1 <= n <= max_bytes:
            raise self.fail(f"{kind} name length {n} is not in 1..{max_bytes}", start)
        raw = self.take(n, f"{kind} name")
        if not all(0x21 <= b <= 0x7E for b in raw):
            raise self.fail(f"{kind} name {raw!r} is not printable ASCII", start + 1)
        return raw.decode("ascii")


def put_value(out: bytearray, key: str, value: object) -> None:
    """Append the type tag and value of parameter ``key`` (int, float, str or bool)."""
    if isinstance(value, bool):
        out.append(TAG_TRUE if value else TAG_FALSE)
    elif isinstance(value, numbers.Integral):
        n = int(value)
        if not INT64_MIN <= n <= INT64_MAX:
            raise ParameterError(f"parameter {key!r} = {n} does not fit in a signed 64-bit integer")
        out.append(TAG_INT)
        put_varint(out, zigzag(n))
    elif isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            raise ParameterError(f"parameter {key!r} = {x} is not a finite number")
        out.append(TAG_FLOAT)
        out += struct.pack("<d", x)
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ParameterError(f"parameter {key!r} is not encodable as UTF-8: {exc.reason}") from None
        out.append(TAG_STR)
        put_varint(out, len(raw))
        out += raw
    else:
        raise ParameterError(
            f"parameter {key!r} has unsupported type {type(value).__name__}: "
            "use int, float, str or bool"
        )


def read_value(r: Reader, key: str) -> ParamValue:
    """Read the type tag and value of parameter ``key``."""
    start = r.pos
    tag = r.u8(f"type tag of parameter {key!r}")
    if tag == TAG_INT:
        return unzigzag(r.varint(f"value of parameter {key!r}"))
    if tag == TAG_FLOAT:
        x = struct.unpack("<d", r.take(8, f"value of parameter {key!r}"))[0]
        if not math.isfinite(x):
            raise r.fail(f"parameter {key!r} is not a finite number", start + 1)
        return x
    if tag == TAG_STR:
        n = r.varint(f"length of parameter {key!r}")
        raw = r.take(n, f"value of parameter {key!r}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail(f"parameter {key!r} is not valid UTF-8", start + 1) from None
    if tag == TAG_FALSE:
        return False
    if tag == TAG_TRUE:
        return True
    raise r.fail(f"parameter {key!r} has unknown type tag {tag}", start)
