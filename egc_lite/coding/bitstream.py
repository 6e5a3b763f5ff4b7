"""The egc_lite file container: one compact, checksummed format for every codec.

A codec's output is a :class:`Bitstream` (which codec, which backbone, the image
size, the decoding parameters and named binary payloads). :func:`encode_bitstream`
turns it into bytes and :func:`decode_bitstream` turns bytes back into it. The
rate of a codec is ``8 * len(file) / (H * W)`` with everything below counted:
:meth:`Bitstream.bpp` measures exactly that.

Decoding a file that is empty, truncated, corrupt, foreign, from a newer format
version or made with another backbone raises :class:`~egc_lite.errors.BitstreamError`
(and nothing else) with a plain message. No field can make the decoder allocate
or loop without bound: every length is checked against the bytes actually left,
every count and varint has a small cap, and whole files are capped at
:data:`MAX_FILE_BYTES`. Invalid values given to the encoder raise
:class:`~egc_lite.errors.ParameterError`.

File layout, format version 1
=============================

Notation: ``u8`` is one unsigned byte. ``varint`` is an unsigned LEB128 integer:
7 bits per byte, least significant group first, the high bit (0x80) set on every
byte except the last. A varint is at most 10 bytes long, its value is below
2**64, and it must be in its shortest form (a last byte of 0x00 after other bytes
is rejected), so that every value has exactly one encoding. "Printable ASCII" is
bytes 0x20..0x7E; a "name" is printable ASCII without space (0x21..0x7E).

==========  ==========  ==============================================================
offset      size        field
==========  ==========  ==============================================================
0           4           magic, the bytes ``b"EGCL"``
4           1           format version, u8; this module writes and reads 1
5           1           codec id, u8: 1 = guide, 2 = textinv, 3 = diffeic
6           1           backbone id length B, u8 (0..255; 0 = the codec uses none)
7           B           backbone id, printable ASCII (e.g. ``egc-tiny``)
..          varint      image height in pixels, 1..65535
..          varint      image width in pixels, 1..65535
..          varint      parameter count P, 0..64
..                      P parameters, each:
  ..        1           key length K, u8, 1..32
  ..        K           key, a name; keys are unique
  ..        1           type tag, u8, followed by the value:
                          1 = int:   zigzag varint, a signed 64-bit integer
                                     (0, -1, 1, -2, 2 ... are stored as 0, 1, 2, 3, 4 ...)
                          2 = float: 8 bytes, IEEE 754 binary64, little endian, finite
                          3 = str:   varint byte count N, then N bytes of UTF-8
                          4 = bool False (no value bytes)
                          5 = bool True (no value bytes)
..          varint      section count S, 0..64
..                      S sections, in order, each:
  ..        1           name length, u8, 1..32
  ..        n           name, a name; section names are unique
  ..        varint      payload length L
  ..        L           payload bytes
end - 4     4           CRC-32 of every preceding byte (``zlib.crc32``, the ISO-HDLC /
                        PNG / zip polynomial), unsigned 32-bit little endian
==========  ==========  ==============================================================

The smallest valid file (no backbone, no parameters, no sections) is 15 bytes.
Parameters and sections keep their order. Decoding checks, in this order: the
size cap, the magic, the minimal length, the version (before the checksum, so
that a file from a newer egc_lite is reported as such even if that version
changes the checksum), the CRC-32 (which catches every single-bit flip and every
error burst up to 32 bits), then parses the rest defensively and rejects any bytes
left between the last section and the checksum. Every accepted file re-encodes
to exactly the same bytes.
"""

from __future__ import annotations

import numbers
import os
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BitstreamError, EGCError, ParameterError
from .wire import ParamValue, Reader, is_printable_ascii, put_value, put_varint, read_value

__all__ = [
    "CODEC_IDS",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BACKBONE_BYTES",
    "MAX_FILE_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PARAMS",
    "MAX_SECTIONS",
    "MAX_SIDE",
    "MIN_FILE_BYTES",
    "Bitstream",
    "ParamValue",
    "decode_bitstream",
    "describe",
    "encode_bitstream",
    "read_bitstream",
    "write_bitstream",
]

MAGIC = b"EGCL"
FORMAT_VERSION = 1
CODEC_IDS: dict[str, int] = {"guide": 1, "textinv": 2, "diffeic": 3}
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Files larger than this are refused before they are read (and never written)."""

MAX_PARAMS = 64
MAX_SECTIONS = 64
MAX_NAME_BYTES = 32
"""Longest parameter key or section name, in bytes."""
MAX_BACKBONE_BYTES = 255
MAX_SIDE = 65535
"""Largest image height or width."""
MIN_FILE_BYTES = 15
"""magic 4 + version 1 + codec 1 + backbone length 1 + height 1 + width 1 + counts 2 + CRC 4."""


PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Bitstream:
    """Everything a decoder needs: codec, backbone, image size, parameters, payloads.

    ``params`` and ``sections`` keep their insertion order through a round trip.
    Values are checked when the bitstream is encoded, not when it is built.
    """

    codec: str
    backbone_id: str
    height: int
    width: int
    params: dict[str, ParamValue] = field(default_factory=dict)
    sections: dict[str, bytes] = field(default_factory=dict)

    def num_bytes(self) -> int:
        """Size of the encoded file in bytes, header and checksum included."""
        return len(encode_bitstream(self))

    def bpp(self) -> float:
        """Bits per pixel of the whole encoded file: ``8 * len(file) / (H * W)``."""
        return 8.0 * self.num_bytes() / (self.height * self.width)


# --------------------------------------------------------------------------- encoding


def _check_name(kind: str, name: object) -> bytes:
    """Validate a parameter key or section name and return its ASCII bytes."""
    if not isinstance(name, str):
        raise ParameterError(f"{kind} name {name!r} must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_NAME_BYTES or not is_printable_ascii(name, allow_space=False):
        raise ParameterError(
            f"{kind} name {name!r} is invalid: use 1 to {MAX_NAME_BYTES} printable ASCII "
            "characters without spaces"
        )
    return name.encode("ascii")


def _check_side(kind: str, value: object) -> int:
    """Validate an image height or width."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"image {kind} must be an int, not {type(value).__name__}")
    value = int(value)
    if not 1 <= value <= MAX_SIDE:
        raise ParameterError(f"image {kind} {value} is out of range: it must be 1..{MAX_SIDE}")
    return value


def _put_param(out: bytearray, key: str, value: object) -> None:
    """Append one parameter (key, type tag, value)."""
    key_bytes = _check_name("parameter", key)
    out.append(len(key_bytes))
    out += key_bytes
    put_value(out, key, value)


def encode_bitstream(bs: Bitstream) -> bytes:
    """Serialize ``bs`` to bytes (see the module docstring for the layout).

    Raises :class:`ParameterError` if a field cannot be stored: unknown codec,
    image size outside 1..65535, a backbone id that is not printable ASCII or
    longer than 255 bytes, bad names, too many parameters or sections, an
    unsupported parameter type, or a result larger than :data:`MAX_FILE_BYTES`.
    """
    if not isinstance(bs, Bitstream):
        raise ParameterError(f"expected a Bitstream, got {type(bs).__name__}")
    if not isinstance(bs.codec, str) or bs.codec not in CODEC_IDS:
        raise ParameterError(f"unknown codec {bs.codec!r}: use one of {', '.join(CODEC_IDS)}")
    if not isinstance(bs.backbone_id, str):
        raise ParameterError(f"backbone id must be a str, not {type(bs.backbone_id).__name__}")
    if len(bs.backbone_id) > MAX_BACKBONE_BYTES or not is_printable_ascii(bs.backbone_id, allow_space=True):
        raise ParameterError(
            f"backbone id {bs.backbone_id!r} is invalid: use at most {MAX_BACKBONE_BYTES} "
            "printable ASCII characters"
        )
    height = _check_side("height", bs.height)
    width = _check_side("width", bs.width)
    if not isinstance(bs.params, dict) or not isinstance(bs.sections, dict):
        raise ParameterError("params and sections must be dicts")
    if len(bs.params) > MAX_PARAMS:
        raise ParameterError(f"{len(bs.params)} parameters is too many: at most {MAX_PARAMS} fit")
    if len(bs.sections) > MAX_SECTIONS:
        raise ParameterError(f"{len(bs.sections)} sections is too many: at most {MAX_SECTIONS} fit")

    out = bytearray(MAGIC)
    out.append(FORMAT_VERSION)
    out.append(CODEC_IDS[bs.codec])
    backbone = bs.backbone_id.encode("ascii")
    out.append(len(backbone))
    out += backbone
    put_varint(out, height)
    put_varint(out, width)
    put_varint(out, len(bs.params))
    for key, value in bs.params.items():
        _put_param(out, key, value)
    put_varint(out, len(bs.sections))
    for name, payload in bs.sections.items():
        name_bytes = _check_name("section", name)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise ParameterError(f"section {name!r} must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        out.append(len(name_bytes))
        out += name_bytes
        put_varint(out, len(payload))
        out += payload
        if len(out) + 4 > MAX_FILE_BYTES:
            break  # reported below; stop copying more payload
    if len(out) + 4 > MAX_FILE_BYTES:
        raise ParameterError(
            f"the bitstream would be larger than the {MAX_FILE_BYTES}-byte file limit"
        )
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


# --------------------------------------------------------------------------- decoding


def _check_size_cap(num_bytes: int, what: str) -> None:
    """Refuse inputs larger than :data:`MAX_FILE_BYTES`."""
    if num_bytes > MAX_FILE_BYTES:
        raise BitstreamError(
            f"{what} is {num_bytes} bytes, larger than the {MAX_FILE_BYTES}-byte limit of an "
            "egc_lite bitstream: it is not a file written by `egc compress`"
        )


def _check_envelope(data: bytes) -> None:
    """Check size, magic, minimal length, version and CRC-32, in that order."""
    _check_size_cap(len(data), "the input")
    if not data:
        raise BitstreamError(
            "the file is empty (0 bytes): it is not an egc_lite bitstream; "
            "it was probably not written completely, so compress the image again"
        )
    head = data[: len(MAGIC)]
    if head != MAGIC[: len(head)]:
        raise BitstreamError(
            f"not an egc_lite file (bad magic {head!r}, expected {MAGIC!r}): "
            "expected a file written by `egc compress`"
        )
    if len(data) < MIN_FILE_BYTES:
        raise BitstreamError(
            f"the file is truncated: {len(data)} bytes is shorter than the smallest egc_lite "
            f"bitstream ({MIN_FILE_BYTES} bytes); compress the image again"
        )
    version = data[len(MAGIC)]
    if version > FORMAT_VERSION:
        raise BitstreamError(
            f"format version {version} is newer than this egc_lite supports ({FORMAT_VERSION}): "
            "upgrade egc_lite (if it is already the newest, the file is corrupt)"
        )
    if version < 1:
        raise BitstreamError(f"format version {version} does not exist: the file is corrupt")
    stored = struct.unpack("<I", data[-4:])[0]
    actual = zlib.crc32(data[:-4]) & 0xFFFFFFFF
    if stored != actual:
        raise BitstreamError(
            "checksum mismatch: the file is corrupt or truncated "
            f"(stored CRC-32 {stored:08x}, computed {actual:08x}); compress the image again"
        )


def decode_bitstream(data: bytes, expected_backbone_id: str | None = None) -> Bitstream:
    """Parse the bytes of an egc_lite file.

    If ``expected_backbone_id`` is given and the file names a backbone, the two
    must match. Raises :class:`BitstreamError` for every kind of bad input.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_bitstream expects bytes, not {type(data).__name__}")
    data = bytes(data)
    _check_envelope(data)

    r = Reader(data[:-4])
    r.pos = len(MAGIC) + 1
    codec_id = r.u8("codec id")
    names = {v: k for k, v in CODEC_IDS.items()}
    if codec_id not in names:
        known = ", ".join(f"{v} ({k})" for k, v in CODEC_IDS.items())
        raise BitstreamError(
            f"unknown codec id {codec_id}: this egc_lite knows {known}; "
            "upgrade egc_lite (if it is already the newest, the file is corrupt)"
        )
    start = r.pos
    raw_backbone = r.take(r.u8("backbone id length"), "backbone id")
    if not all(0x20 <= b <= 0x7E for b in raw_backbone):
        raise r.fail(f"backbone id {raw_backbone!r} is not printable ASCII", start + 1)
    backbone_id = raw_backbone.decode("ascii")

    sides = []
    for kind in ("height", "width"):
        start = r.pos
        side = r.varint(f"image {kind}")
        if not 1 <= side <= MAX_SIDE:
            raise r.fail(f"image {kind} {side} is not in 1..{MAX_SIDE}", start)
        sides.append(side)

    start = r.pos
    count = r.varint("parameter count")
    if count > MAX_PARAMS:
        raise r.fail(f"parameter count {count} is more than {MAX_PARAMS}", start)
    params: dict[str, ParamValue] = {}
    for _ in range(count):
        start = r.pos
        key = r.name("parameter", MAX_NAME_BYTES)
        if key in params:
            raise r.fail(f"parameter {key!r} appears twice", start)
        params[key] = read_value(r, key)

    start = r.pos
    count = r.varint("section count")
    if count > MAX_SECTIONS:
        raise r.fail(f"section count {count} is more than {MAX_SECTIONS}", start)
    sections: dict[str, bytes] = {}
    for _ in range(count):
        start = r.pos
        name = r.name("section", MAX_NAME_BYTES)
        if name in sections:
            raise r.fail(f"section {name!r} appears twice", start)
        sections[name] = r.take(r.varint(f"length of section {name!r}"), f"section {name!r}")

    if r.remaining():
        raise r.fail(f"{r.remaining()} unexpected trailing bytes after the last section")

    bs = Bitstream(
        codec=names[codec_id],
        backbone_id=backbone_id,
        height=sides[0],
        width=sides[1],
        params=params,
        sections=sections,
    )
    if expected_backbone_id is not None and bs.backbone_id != "" and bs.backbone_id != expected_backbone_id:
        raise BitstreamError(
            f"file was made with backbone {bs.backbone_id!r} but the loaded backbone is "
            f"{expected_backbone_id!r}: decode with --backbone {bs.backbone_id}"
        )
    return bs


# --------------------------------------------------------------------------- files


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then replace ``path`` in one step,
    so a reader never sees a half-written file; failures raise :class:`EGCError`."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise EGCError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise EGCError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_bitstream(path: PathLike, bs: Bitstream) -> int:
    """Encode ``bs`` and write it to ``path`` atomically; return the bytes written.

    The bytes go to a temporary file in the same folder, which then replaces
    ``path`` in one step, so a reader never sees a half-written file. Invalid
    fields raise :class:`ParameterError` before anything is written; a folder
    that cannot be written to raises :class:`EGCError`.
    """
    data = encode_bitstream(bs)
    atomic_write_bytes(path, data)
    return len(data)


def read_bitstream(path: PathLike, expected_backbone_id: str | None = None) -> Bitstream:
    """Read and decode the egc_lite file at ``path``.

    The file's size is checked against :data:`MAX_FILE_BYTES` before it is read.
    Every problem (missing file, folder, unreadable, too large, bad contents)
    raises :class:`BitstreamError`.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise BitstreamError(f"{str(p)!r} is a folder, not an egc_lite file: give the path of a file")
        _check_size_cap(size, f"the file {str(p)!r}")
        with open(p, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows meanwhile
    except FileNotFoundError:
        raise BitstreamError(f"no such file: {str(p)!r}; check the path") from None
    except OSError as exc:
        raise BitstreamError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    return decode_bitstream(data, expected_backbone_id=expected_backbone_id)


# --------------------------------------------------------------------------- display


def _format_value(value: ParamValue) -> str:
    """Show a parameter value unambiguously (strings quoted, escapes visible)."""
    return repr(value)


def describe(bs: Bitstream, num_bytes: int | None = None) -> str:
    """A multi-line, human-readable dump of the header (for ``egc info FILE``).

    ``num_bytes`` is the file's size; when omitted it is computed by encoding ``bs``.
    """
    if num_bytes is None:
        num_bytes = len(encode_bitstream(bs))
    pixels = bs.height * bs.width
    payload = sum(len(p) for p in bs.sections.values())
    lines = [
        f"egc_lite bitstream (format version {FORMAT_VERSION})",
        f"  codec:     {bs.codec} (id {CODEC_IDS.get(bs.codec, '?')})",
        f"  backbone:  {bs.backbone_id or '(none)'}",
        f"  image:     {bs.width} x {bs.height} pixels (width x height)",
        (
            f"  size:      {num_bytes} bytes = {8 * num_bytes / pixels:.4f} bpp "
            f"({payload} bytes of sections, {num_bytes - payload} bytes of header and checksum)"
        ),
        f"  params:    {len(bs.params)}",
    ]
    width = max((len(k) for k in bs.params), default=0)
    lines += [f"    {k:<{width}} = {_format_value(v)}" for k, v in bs.params.items()]
    lines.append(f"  sections:  {len(bs.sections)}")
    width = max((len(k) for k in bs.sections), default=0)
    lines += [f"    {k:<{width}}  {len(v)} bytes" for k, v in bs.sections.items()]
    return "\n".join(lines)
