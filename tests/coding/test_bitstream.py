"""Tests of the egc_lite bitstream container (egc_lite.coding.bitstream)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egc_lite.coding import bitstream as bsmod
from egc_lite.coding.bitstream import (
    CODEC_IDS,
    FORMAT_VERSION,
    MAGIC,
    MAX_FILE_BYTES,
    Bitstream,
    decode_bitstream,
    describe,
    encode_bitstream,
    read_bitstream,
    write_bitstream,
)
from egc_lite.errors import BitstreamError, EGCError, ParameterError

# --------------------------------------------------------------------------- helpers


def varint(n: int) -> bytes:
    """Unsigned LEB128, written independently of the module under test."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_crc(body: bytes) -> bytes:
    """Append a CRC-32 (LE) of ``body``: a tampered file that still passes the checksum."""
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def recrc(data: bytes) -> bytes:
    """Replace the CRC of an encoded file after its body was edited."""
    return with_crc(data[:-4])


def assert_identical(a: Bitstream, b: Bitstream) -> None:
    """Equal fields, including order of params/sections, value types and float bits."""
    assert (a.codec, a.backbone_id, a.height, a.width) == (b.codec, b.backbone_id, b.height, b.width)
    assert list(a.params) == list(b.params)
    for key in a.params:
        va, vb = a.params[key], b.params[key]
        assert type(va) is type(vb), key
        if isinstance(va, float):
            assert struct.pack("<d", va) == struct.pack("<d", vb), key
        else:
            assert va == vb, key
    assert list(a.sections.items()) == list(b.sections.items())


SAMPLES: list[Bitstream] = [
    Bitstream("guide", "", 1, 1, {}, {}),
    Bitstream(
        "diffeic",
        "egc-tiny",
        512,
        768,
        {
            "seed": 1234,
            "neg": -7,
            "big": 2**63 - 1,
            "small": -(2**63),
            "scale": 7.5,
            "negzero": -0.0,
            "tiny": 5e-324,
            "prompt": "caf\u00e9 \u2603 \U0001f600",
            "empty": "",
            "cfg": True,
            "ema": False,
        },
        {"y": bytes(range(256)) * 3, "z": b"\x00\x01", "empty": b""},
    ),
    Bitstream("textinv", "stabilityai/stable-diffusion-2-1-base", 65535, 65535, {"steps": 50}, {"emb": b"e" * 300}),
]
SMALL = Bitstream("diffeic", "egc-tiny", 64, 48, {"seed": 3, "q": 0.5, "cfg": True}, {"y": b"abcdef"})


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("bs", SAMPLES, ids=["minimal", "all-types", "long-backbone"])
def test_round_trip(bs: Bitstream) -> None:
    """encode -> decode gives back the same fields, types and order."""
    data = encode_bitstream(bs)
    out = decode_bitstream(data)
    assert_identical(out, bs)
    assert out == bs
    assert encode_bitstream(out) == data


def test_golden_bytes() -> None:
    """The byte layout matches the documented spec exactly (guards format changes)."""
    bs = Bitstream(
        "diffeic",
        "egc-tiny",
        512,
        300,
        {"seed": -2, "s": 1.5, "p": "\u00e9", "b": True, "f": False},
        {"y": b"\xaa\xbb", "z": b""},
    )
    body = (
        b"EGCL" + bytes([1, 3, 8]) + b"egc-tiny"
        + b"\x80\x04" + b"\xac\x02"  # 512, 300
        + b"\x05"
        + b"\x04seed" + b"\x01" + b"\x03"  # zigzag(-2) = 3
        + b"\x01s" + b"\x02" + struct.pack("<d", 1.5)
        + b"\x01p" + b"\x03" + b"\x02\xc3\xa9"
        + b"\x01b" + b"\x05"
        + b"\x01f" + b"\x04"
        + b"\x02"
        + b"\x01y" + b"\x02\xaa\xbb"
        + b"\x01z" + b"\x00"
    )
    assert encode_bitstream(bs) == with_crc(body)
    assert decode_bitstream(with_crc(body)) == bs
    assert len(encode_bitstream(Bitstream("guide", "", 1, 1, {}, {}))) == bsmod.MIN_FILE_BYTES


def test_bpp_counts_the_whole_file() -> None:
    """bpp is 8 * file bytes / pixels, header and checksum included."""
    bs = SAMPLES[1]
    n = len(encode_bitstream(bs))
    assert bs.bpp() == pytest.approx(8 * n / (512 * 768))
    assert bs.num_bytes() == n
    assert SAMPLES[0].bpp() == 8 * bsmod.MIN_FILE_BYTES


def test_write_read_file(tmp_path: Path) -> None:
    """write_bitstream writes what encode gives, read_bitstream reads it back."""
    path = tmp_path / "img.egc"
    n = write_bitstream(path, SAMPLES[1])
    assert n == path.stat().st_size == len(encode_bitstream(SAMPLES[1]))
    assert path.read_bytes() == encode_bitstream(SAMPLES[1])
    assert_identical(read_bitstream(path), SAMPLES[1])
    assert_identical(read_bitstream(str(path), expected_backbone_id="egc-tiny"), SAMPLES[1])
    # replacing an existing file, leaving no temporary files behind
    write_bitstream(path, SMALL)
    assert read_bitstream(path) == SMALL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.egc"]


def test_write_is_atomic_on_invalid_input(tmp_path: Path) -> None:
    """A bitstream that cannot be encoded leaves an existing file untouched."""
    path = tmp_path / "img.egc"
    write_bitstream(path, SMALL)
    before = path.read_bytes()
    with pytest.raises(ParameterError):
        write_bitstream(path, Bitstream("nope", "", 1, 1, {}, {}))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.egc"]


def test_write_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the final rename fails, the temporary file is removed and EGCError is raised."""
    path = tmp_path / "img.egc"

    def broken_replace(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(bsmod.os, "replace", broken_replace)
    with pytest.raises(EGCError, match="cannot write"):
        write_bitstream(path, SMALL)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EGCError, match="cannot write"):
        write_bitstream(tmp_path / "missing-dir" / "x.egc", SMALL)


@pytest.mark.skipif(os.name != "posix", reason="umask is POSIX")
def test_written_file_respects_umask(tmp_path: Path) -> None:
    """The atomic write does not leave the file private (mode 0600) like mkstemp would."""
    old = os.umask(0o022)
    try:
        write_bitstream(tmp_path / "a.egc", SMALL)
    finally:
        os.umask(old)
    assert (tmp_path / "a.egc").stat().st_mode & 0o777 == 0o644


def test_describe_lists_the_header() -> None:
    """describe() names codec, backbone, size, bpp, params and sections."""
    bs = SAMPLES[1]
    n = len(encode_bitstream(bs))
    text = describe(bs)
    assert text == describe(bs, n)
    for needle in [
        "diffeic",
        "egc-tiny",
        "768 x 512",
        f"{n} bytes",
        f"{8 * n / (512 * 768):.4f} bpp",
        "seed",
        "1234",
        "7.5",
        "'caf\u00e9",
        "True",
        "y ",
        "768 bytes",
        "empty",
        "0 bytes",
    ]:
        assert needle in text, needle
    assert len(text.splitlines()) >= 6 + len(bs.params) + len(bs.sections)
    assert "(none)" in describe(SAMPLES[0])
    assert "1000 bytes" in describe(SMALL, num_bytes=1000)


# --------------------------------------------------------------------------- encoder validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"codec": "jpeg"}, "unknown codec"),
        ({"height": 0}, "height"),
        ({"width": 65536}, "width"),
        ({"height": True}, "height"),
        ({"width": 3.0}, "width"),
        ({"backbone_id": "b\u00e4ckbone"}, "backbone"),
        ({"backbone_id": "x" * 256}, "backbone"),
        ({"backbone_id": "a\nb"}, "backbone"),
        ({"params": {"": 1}}, "parameter name"),
        ({"params": {"k" * 33: 1}}, "parameter name"),
        ({"params": {"with space": 1}}, "parameter name"),
        ({"params": {"s\u00e9ed": 1}}, "parameter name"),
        ({"params": {1: 1}}, "parameter name"),
        ({"params": {"x": None}}, "unsupported type"),
        ({"params": {"x": [1]}}, "unsupported type"),
        ({"params": {"x": b"raw"}}, "unsupported type"),
        ({"params": {"x": 2**63}}, "signed 64-bit integer"),
        ({"params": {"x": -(2**63) - 1}}, "signed 64-bit integer"),
        ({"params": {"x": float("nan")}}, "finite"),
        ({"params": {"x": float("inf")}}, "finite"),
        ({"params": {"x": "\ud800"}}, "UTF-8"),
        ({"params": {f"p{i}": i for i in range(65)}}, "too many"),
        ({"sections": {f"s{i}": b"" for i in range(65)}}, "too many"),
        ({"sections": {"y": "text"}}, "must be bytes"),
        ({"sections": {"": b""}}, "section name"),
    ],
)
def test_encode_rejects_invalid_fields(kwargs: dict, match: str) -> None:
    """Every invalid field raises ParameterError (not BitstreamError) on encode."""
    fields = {"codec": "guide", "backbone_id": "egc-tiny", "height": 8, "width": 8, "params": {}, "sections": {}}
    fields.update(kwargs)
    with pytest.raises(ParameterError, match=match) as info:
        encode_bitstream(Bitstream(**fields))
    assert not isinstance(info.value, BitstreamError)


def test_encode_limits_are_inclusive() -> None:
    """The largest allowed values encode and decode."""
    bs = Bitstream(
        "guide",
        "x" * 255,
        65535,
        1,
        {f"k{i:031d}": i for i in range(64)},
        {f"s{i:031d}": b"" for i in range(64)},
    )
    assert decode_bitstream(encode_bitstream(bs)) == bs


def test_encode_refuses_files_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bitstream that would not be readable back is refused at encode time."""
    monkeypatch.setattr(bsmod, "MAX_FILE_BYTES", 100)
    with pytest.raises(ParameterError, match="limit"):
        encode_bitstream(Bitstream("guide", "", 8, 8, {}, {"y": b"x" * 100}))


def test_numpy_scalars_are_accepted() -> None:
    """numpy ints and floats in params are stored as Python int and float."""
    np = pytest.importorskip("numpy")
    bs = Bitstream("guide", "", np.int64(8), 8, {"seed": np.int64(5), "s": np.float32(0.5)}, {})
    out = decode_bitstream(encode_bitstream(bs))
    assert out.height == 8 and type(out.params["seed"]) is int and out.params["s"] == 0.5


# --------------------------------------------------------------------------- bad input


def sample_file() -> bytes:
    """A small valid file used by the corruption tests."""
    return encode_bitstream(SMALL)


def test_truncation_at_every_offset() -> None:
    """Every proper prefix of a valid file is rejected with BitstreamError."""
    data = encode_bitstream(SAMPLES[1])
    for i in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_bitstream(data[:i])


def test_every_single_bit_flip_is_detected() -> None:
    """Flipping any one bit of a valid file is rejected with BitstreamError."""
    data = sample_file()
    assert len(data) < 80
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                decode_bitstream(bytes(bad))


def test_bit_flip_in_body_reports_checksum() -> None:
    """A flipped payload bit is reported as a checksum mismatch, not something vaguer."""
    data = bytearray(sample_file())
    data[-6] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum mismatch: the file is corrupt or truncated"):
        decode_bitstream(bytes(data))


def test_empty_file() -> None:
    """An empty input says the file is empty."""
    with pytest.raises(BitstreamError, match="empty"):
        decode_bitstream(b"")


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"GIF89a", b"X", b"EGCX" + b"\x00" * 20])
def test_wrong_magic(data: bytes) -> None:
    """Foreign files are reported as not egc_lite files, whatever their length."""
    with pytest.raises(BitstreamError, match="not an egc_lite file"):
        decode_bitstream(data)


@pytest.mark.parametrize("n", [1, 4, 5, 14])
def test_short_prefix_is_truncated(n: int) -> None:
    """A prefix of the magic, or a file shorter than the minimum, is reported as truncated."""
    with pytest.raises(BitstreamError, match="truncated"):
        decode_bitstream(sample_file()[:n])


@pytest.mark.parametrize("fix_crc", [True, False])
def test_newer_version(fix_crc: bool) -> None:
    """A future format version asks to upgrade, with or without a valid checksum."""
    data = bytearray(sample_file())
    data[4] = 7
    bad = recrc(bytes(data)) if fix_crc else bytes(data)
    with pytest.raises(BitstreamError, match=r"format version 7 is newer than this egc_lite supports \(1\): upgrade"):
        decode_bitstream(bad)


def test_version_zero() -> None:
    """Version 0 does not exist."""
    data = bytearray(sample_file())
    data[4] = 0
    with pytest.raises(BitstreamError, match="version 0"):
        decode_bitstream(recrc(bytes(data)))


@pytest.mark.parametrize("codec_id", [0, 9, 255])
def test_unknown_codec_id(codec_id: int) -> None:
    """An unknown codec id (with a valid checksum) is named in the error."""
    data = bytearray(sample_file())
    assert data[5] == CODEC_IDS["diffeic"]
    data[5] = codec_id
    with pytest.raises(BitstreamError, match=f"unknown codec id {codec_id}"):
        decode_bitstream(recrc(bytes(data)))


def test_oversized_section_length() -> None:
    """A section length beyond the end of the file is refused, not allocated."""
    bs = Bitstream("guide", "", 8, 8, {}, {"y": b"p" * 100})
    data = encode_bitstream(bs)
    pos = len(data) - 4 - 100 - 1
    assert data[pos] == 100
    for huge in (101, 10**9, 2**64 - 1):
        bad = recrc(data[:pos] + varint(huge) + data[pos + 1 :])
        with pytest.raises(BitstreamError, match=f"claims {huge} bytes but only 100 remain"):
            decode_bitstream(bad)


def test_oversized_string_length() -> None:
    """A string parameter length beyond the end of the file is refused."""
    head = b"EGCL\x01\x01\x00\x08\x08\x01" + b"\x01p\x03"
    with pytest.raises(BitstreamError, match="claims 1000000000 bytes"):
        decode_bitstream(with_crc(head + varint(10**9) + b"abc\x00"))


@pytest.mark.parametrize(
    "tail, match",
    [
        (b"\x80" * 10 + b"\x01" + b"\x00", "longer than 10 bytes"),  # param count never ends
        (b"\x80" * 100_000, "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x02" + b"\x00", "64 bits"),
        (b"\x81\x00" + b"\x00", "shortest"),
        (varint(65) + b"\x00", "parameter count 65"),
        (varint(2**40), "parameter count"),
        (b"\x00" + varint(65), "section count 65"),
    ],
)
def test_bad_counts_and_varints(tail: bytes, match: str) -> None:
    """Runaway, overlong and oversized varints and counts are refused at once."""
    head = b"EGCL\x01\x01\x00\x08\x08"
    with pytest.raises(BitstreamError, match=match):
        decode_bitstream(with_crc(head + tail))


@pytest.mark.parametrize(
    "body, match",
    [
        (b"EGCL\x01\x01\x00\x00\x08\x00\x00", "height 0"),
        (b"EGCL\x01\x01\x00\x08" + varint(65536) + b"\x00\x00", "width 65536"),
        (b"EGCL\x01\x01\x02a\x00\x08\x08\x00\x00", "backbone id"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x00\x00", "parameter name length 0"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x21" + b"k" * 33 + b"\x04\x00", "parameter name length 33"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x03a b\x04\x00", "not printable"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x01a\x06\x00", "unknown type tag 6"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x01a\x03\x01\xff\x00", "UTF-8"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x01a\x02" + struct.pack("<d", float("nan")) + b"\x00", "finite"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x01a", "ends inside the type tag"),
        (b"EGCL\x01\x01\x00\x08\x08\x01\x01a\x02\x00\x00\x00\x00", "claims 8 bytes but only 4 remain"),
        (b"EGCL\x01\x01\x00\x08\x08\x02\x01a\x04\x01a\x05\x00", "appears twice"),
        (b"EGCL\x01\x01\x00\x08\x08\x00\x02\x01y\x00\x01y\x00", "appears twice"),
        (b"EGCL\x01\x01\x00\x08\x08\x00\x00" + b"\x00", "trailing"),
        (b"EGCL\x01\x01\x00\x08\x08\x00\x01\x01y\x01y" + b"junk", "4 unexpected trailing bytes"),
    ],
)
def test_malformed_structure_with_valid_crc(body: bytes, match: str) -> None:
    """Each structural check is reached (checksum fixed up) and explains itself."""
    with pytest.raises(BitstreamError, match=match):
        decode_bitstream(with_crc(body))


def test_trailing_bytes_after_checksum() -> None:
    """Bytes appended to a valid file are rejected."""
    data = sample_file()
    with pytest.raises(BitstreamError):
        decode_bitstream(data + b"\x00")
    with pytest.raises(BitstreamError, match="trailing"):
        decode_bitstream(with_crc(data[:-4] + b"\x00"))


def test_foreign_backbone() -> None:
    """A file made with another backbone says which one to load."""
    data = sample_file()
    with pytest.raises(
        BitstreamError,
        match="file was made with backbone 'egc-tiny' but the loaded backbone is 'sd15': decode with --backbone egc-tiny",
    ):
        decode_bitstream(data, expected_backbone_id="sd15")
    assert decode_bitstream(data, expected_backbone_id="egc-tiny") == SMALL
    # a codec without a backbone decodes under any backbone
    free = encode_bitstream(Bitstream("guide", "", 8, 8, {}, {}))
    assert decode_bitstream(free, expected_backbone_id="sd15").backbone_id == ""


def test_decode_accepts_bytearray_and_memoryview() -> None:
    """Any bytes-like input decodes; sections come back as bytes."""
    data = sample_file()
    for view in (bytearray(data), memoryview(data)):
        out = decode_bitstream(view)
        assert out == SMALL and type(out.sections["y"]) is bytes


def test_decode_refuses_oversized_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """decode_bitstream itself applies the size cap."""
    data = sample_file()
    monkeypatch.setattr(bsmod, "MAX_FILE_BYTES", 20)
    with pytest.raises(BitstreamError, match="larger than the 20-byte limit"):
        decode_bitstream(data)


def test_read_missing_file(tmp_path: Path) -> None:
    """A missing path gives a clear BitstreamError."""
    with pytest.raises(BitstreamError, match="no such file"):
        read_bitstream(tmp_path / "nope.egc")


def test_read_folder(tmp_path: Path) -> None:
    """A folder is not a file."""
    with pytest.raises(BitstreamError, match="folder"):
        read_bitstream(tmp_path)


def test_read_empty_and_corrupt_files(tmp_path: Path) -> None:
    """read_bitstream reports bad contents as BitstreamError too."""
    (tmp_path / "empty.egc").write_bytes(b"")
    with pytest.raises(BitstreamError, match="empty"):
        read_bitstream(tmp_path / "empty.egc")
    (tmp_path / "cut.egc").write_bytes(sample_file()[:-1])
    with pytest.raises(BitstreamError, match="checksum"):
        read_bitstream(tmp_path / "cut.egc")
    write_bitstream(tmp_path / "ok.egc", SMALL)
    with pytest.raises(BitstreamError, match="backbone"):
        read_bitstream(tmp_path / "ok.egc", expected_backbone_id="other")


def test_read_refuses_large_file_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size cap is checked from the file's size, before its bytes are read."""
    path = tmp_path / "big.egc"
    write_bitstream(path, SMALL)
    monkeypatch.setattr(bsmod, "MAX_FILE_BYTES", 20)

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr("builtins.open", no_open)
    with pytest.raises(BitstreamError, match="larger than the 20-byte limit"):
        read_bitstream(path)


def test_read_refuses_real_limit(tmp_path: Path) -> None:
    """A (sparse) file one byte over the real 64 MiB limit is refused."""
    path = tmp_path / "huge.egc"
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(BitstreamError, match="larger than"):
        read_bitstream(path)


def test_describe_is_stable_for_decoded_file() -> None:
    """describe() of a decoded file uses the file's size."""
    data = sample_file()
    assert f"{len(data)} bytes" in describe(decode_bitstream(data), len(data))


def test_format_constants() -> None:
    """The public constants are the documented ones."""
    assert MAGIC == b"EGCL" and FORMAT_VERSION == 1
    assert CODEC_IDS == {"guide": 1, "textinv": 2, "diffeic": 3}
    assert MAX_FILE_BYTES == 64 * 1024 * 1024


# --------------------------------------------------------------------------- properties

NAME = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
PARAM_VALUE = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)


@st.composite
def bitstreams(draw: st.DrawFn) -> Bitstream:
    """Arbitrary valid Bitstreams."""
    return Bitstream(
        codec=draw(st.sampled_from(sorted(CODEC_IDS))),
        backbone_id=draw(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=255)),
        height=draw(st.integers(1, 65535)),
        width=draw(st.integers(1, 65535)),
        params=draw(st.dictionaries(NAME, PARAM_VALUE, max_size=8)),
        sections=draw(st.dictionaries(NAME, st.binary(max_size=300), max_size=5)),
    )


def check_decode(data: bytes) -> None:
    """decode returns a Bitstream that re-encodes to the same bytes, or raises BitstreamError."""
    try:
        out = decode_bitstream(data)
    except BitstreamError:
        return
    assert isinstance(out, Bitstream)
    assert encode_bitstream(out) == data


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid file with a few random edits (flips, overwrites, inserts, deletes, cuts)."""
    data = bytearray(encode_bitstream(draw(bitstreams())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "cut":
            del data[i:]
    return bytes(data)


SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=1000, deadline=None, suppress_health_check=SLOW)
@given(st.binary(max_size=200))
def test_property_arbitrary_bytes(data: bytes) -> None:
    """Arbitrary bytes (also behind a valid magic, version and CRC) never crash the decoder."""
    check_decode(data)
    check_decode(MAGIC + b"\x01" + data)
    check_decode(with_crc(MAGIC + b"\x01" + data))


@settings(max_examples=1000, deadline=None, suppress_health_check=SLOW)
@given(mutated_files())
def test_property_mutated_files(data: bytes) -> None:
    """Edited valid files, with their stale CRC or a fixed-up one, decode or raise BitstreamError."""
    check_decode(data)
    if len(data) >= 4:
        check_decode(recrc(data))


@settings(max_examples=300, deadline=None, suppress_health_check=SLOW)
@given(bitstreams())
def test_property_round_trip(bs: Bitstream) -> None:
    """Every valid Bitstream survives encode -> decode unchanged."""
    data = encode_bitstream(bs)
    out = decode_bitstream(data, expected_backbone_id=bs.backbone_id)
    assert_identical(out, bs)
    assert bs.bpp() == 8 * len(data) / (bs.height * bs.width)
