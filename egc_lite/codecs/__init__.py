"""The kit's codecs, by name: ``guide``, ``textinv`` (codec A), ``diffeic`` (codec B)."""

from __future__ import annotations

from ..backbone import Backbone
from ..bitstream import Bitstream
from ..errors import ParameterError
from .base import Codec, CompressOptions
from .diffeic import DiffEICCodec
from .guide_codec import GuideCodec
from .textinv import TextInvCodec, TextInvConfig

CODECS: dict[str, type[Codec]] = {"guide": GuideCodec, "textinv": TextInvCodec, "diffeic": DiffEICCodec}


def codec_class(name: str) -> type[Codec]:
    """The codec class registered under ``name``."""
    try:
        return CODECS[name]
    except KeyError:
        raise ParameterError(f"unknown codec {name!r}: choose one of {', '.join(sorted(CODECS))}") from None


def make_codec(name: str, backbone: Backbone | None = None) -> Codec:
    """An instance of codec ``name`` on ``backbone`` (ignored by codecs that use none)."""
    cls = codec_class(name)
    return cls(backbone if cls.uses_backbone else None)


def decompress(bs: Bitstream, backbone: Backbone | None = None, sample: int = 0):
    """Decode any bitstream with the codec named in its header."""
    return make_codec(bs.codec, backbone).decompress(bs, sample=sample)


__all__ = ["CODECS", "Codec", "CompressOptions", "DiffEICCodec", "GuideCodec", "TextInvCodec", "TextInvConfig", "codec_class", "make_codec", "decompress"]
