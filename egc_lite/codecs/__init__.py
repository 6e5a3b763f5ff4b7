"""The kit's codecs, by name: ``guide``, ``textinv`` (codec A), ``diffeic`` (codec B).

The registry maps each name to ``"module:Class"`` and imports a codec's module only when that
codec is asked for, so that the guide codec never pays for diffusers and transformers, and
importing this package costs nothing (the command line reads :data:`DEFAULT_CODEC` from here
before it knows what it will run). The classes are still importable from here
(``from egc_lite.codecs import CompressOptions, TextInvCodec``); each is imported on first access.

The modules: :mod:`.base` (what every codec is, :class:`CompressOptions`), :mod:`.guide_codec`,
:mod:`.textinv` (codec A) with its encoder :mod:`.textual_inversion`, :mod:`.diffeic` (codec B). Codecs
compress and decompress; their networks are in :mod:`egc_lite.models`, their training in :mod:`egc_lite.training`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ..errors import ParameterError

if TYPE_CHECKING:
    import torch

    from ..backbone import Backbone
    from ..coding.bitstream import Bitstream
    from .base import Codec, CompressOptions
    from .diffeic import DiffEICCodec
    from .guide_codec import GuideCodec
    from .textinv import TextInvCodec, TextInvConfig

#: Codec name -> ``"module:Class"`` (relative to this package).
REGISTRY: dict[str, str] = {"guide": ".guide_codec:GuideCodec", "textinv": ".textinv:TextInvCodec", "diffeic": ".diffeic:DiffEICCodec"}
#: The codec ``egc compress`` and ``egc demo`` use when none is named.
DEFAULT_CODEC = "textinv"
#: The backbone the command line loads when none is named.
DEFAULT_BACKBONE = "egc-tiny"
# Other public names, imported on first access.
_LAZY = {"Codec": ".base", "CompressOptions": ".base", "GuideCodec": ".guide_codec", "TextInvCodec": ".textinv", "TextInvConfig": ".textinv", "DiffEICCodec": ".diffeic"}


def codec_class(name: str) -> type[Codec]:
    """The codec class registered under ``name`` (its module is imported now)."""
    if name not in REGISTRY:
        raise ParameterError(f"unknown codec {name!r}: choose one of {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    return getattr(import_module(module, __name__), cls)


def make_codec(name: str, backbone: Backbone | None = None) -> Codec:
    """An instance of codec ``name`` on ``backbone`` (ignored by codecs that use none)."""
    cls = codec_class(name)
    return cls(backbone if cls.uses_backbone else None)


def load_codec(name: str, backbone: str = DEFAULT_BACKBONE, device: str = "auto") -> Codec:
    """Codec ``name`` ready to run: loads the backbone ``backbone`` on ``device`` only if the codec uses one."""
    cls = codec_class(name)
    if not cls.uses_backbone:
        return cls(None)
    from ..backbone import load_backbone

    return cls(load_backbone(backbone, device=device))


def decompress(bs: Bitstream, backbone: Backbone | None = None, sample: int = 0) -> torch.Tensor:
    """Decode any bitstream with the codec named in its header."""
    return make_codec(bs.codec, backbone).decompress(bs, sample=sample)


def __getattr__(name: str) -> Any:
    """Import a codec class (or ``CODECS``, every class by name) on first access."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    if name == "CODECS":
        return {key: codec_class(key) for key in REGISTRY}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CODECS", "DEFAULT_BACKBONE", "DEFAULT_CODEC", "REGISTRY", "Codec", "CompressOptions", "DiffEICCodec", "GuideCodec",
           "TextInvCodec", "TextInvConfig", "codec_class", "decompress", "load_codec", "make_codec"]
