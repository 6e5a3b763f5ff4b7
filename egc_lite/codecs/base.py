"""What every codec of the kit is: image tensor in, :class:`~egc_lite.coding.bitstream.Bitstream` out, and back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..coding.bitstream import Bitstream
from ..errors import BitstreamError, ImageError, ParameterError

if TYPE_CHECKING:  # the backbone module imports diffusers: only codecs that run a model pay for it
    from ..backbone import Backbone


@dataclass(frozen=True)
class CompressOptions:
    """The command line's rate and decoding choices; each codec reads the ones it has.

    ``bpp`` is a target rate (the codec searches its own knobs to land at or below it);
    ``quality`` is a discrete rate point (1 = lowest rate, as in CompressAI). ``None``
    fields take the codec's default.
    """

    bpp: float | None = None
    quality: int | None = None
    seed: int = 0
    steps: int | None = None
    guidance_scale: float | None = None  # s_f (classifier-free guidance)
    compression_guidance: float | None = None  # s_c (codec A)
    guidance_mode: str | None = None  # codec A: "fast" (the paper's decoded distance), "full" or "latent" (egc_lite.sampling.guidance)
    start_step: int | None = None  # DiffEIC: start from the content variables at this step
    eta: float | None = None  # DiffEIC: 0 = DDIM steps, 1 = ancestral DDPM-like steps (egc_lite.sampling.ddim)
    inversion_steps: int | None = None  # textinv: optimization steps of the embedding
    consistency: str | None = None  # textinv: "none" (the paper) or "ilvr" (beyond the paper, egc_lite.sampling.consistency)
    consistency_until: float | None = None  # textinv: fraction of the steps the consistency mechanism acts on

    def __post_init__(self) -> None:
        if self.bpp is not None and not 0 < self.bpp <= 24:
            raise ParameterError(f"--bpp must be in (0, 24], got {self.bpp}")
        if self.seed < 0 or self.seed >= 2**63:
            raise ParameterError(f"--seed must be a non-negative 63-bit integer, got {self.seed}")
        if self.steps is not None and not 1 <= self.steps <= 1000:
            raise ParameterError(f"--steps must be in 1..1000, got {self.steps}")
        if self.eta is not None and not 0 <= self.eta <= 1:
            raise ParameterError(f"--eta must be in [0, 1], got {self.eta}")


class Codec(ABC):
    """A codec: :meth:`compress` an image ``(3, H, W)`` in [0, 1], :meth:`decompress` a bitstream."""

    name: ClassVar[str]
    uses_backbone: ClassVar[bool] = True
    min_side: ClassVar[int] = 1  # smallest image side the encoder accepts (a header claiming less is refused)

    def __init__(self, backbone: Backbone | None = None) -> None:
        if self.uses_backbone and backbone is None:
            raise ParameterError(f"the {self.name} codec needs a backbone")
        self.backbone = backbone

    @property
    def backbone_id(self) -> str:
        return self.backbone.backbone_id if (self.uses_backbone and self.backbone is not None) else ""

    @abstractmethod
    def compress(self, x: torch.Tensor, options: CompressOptions = CompressOptions()) -> Bitstream:
        """Code one image."""

    @abstractmethod
    def decompress(self, bs: Bitstream, sample: int = 0) -> torch.Tensor:
        """Rebuild the image ``(3, H, W)`` in [0, 1]; ``sample`` > 0 varies the decoder's seed."""

    def memory_estimate(self, height: int, width: int, stage: str, bs: Bitstream | None = None) -> int:
        """Computed peak bytes (the whole process) of ``stage`` ``"encode"`` or ``"decode"`` of a ``height x width``
        image, with the file's own decoding settings when ``bs`` is given (:mod:`egc_lite.models.memory`)."""
        from ..models.memory import RUNTIME_BYTES, image_bytes

        return RUNTIME_BYTES + image_bytes(height, width)

    def unet_window(self, height: int, width: int) -> tuple[int, int] | None:
        """The latent window a tiled UNet pass runs on for this image size (:mod:`egc_lite.sampling.tiled`), or None."""
        from ..sampling.tiled import current_tiles, needs_tiling

        m = self.backbone.size_multiple
        h, w = -(-height // m) * m // self.backbone.vae_factor, -(-width // m) * m // self.backbone.vae_factor
        tiles = current_tiles()
        return (tiles.tile, tiles.tile) if needs_tiling(h, w, tiles) else None

    # helpers shared by the codecs
    @staticmethod
    def check_image(x: torch.Tensor, multiple: int = 1, min_side: int = 1) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] != 3:
            raise ImageError(f"expected an RGB image tensor of shape (3, H, W), got {getattr(x, 'shape', type(x))}")
        h, w = x.shape[1:]
        if min(h, w) < min_side:
            raise ImageError(f"image is {w}x{h}; this codec needs at least {min_side} pixels per side")
        if h > 65535 or w > 65535:
            raise ImageError(f"image is {w}x{h}; sides above 65535 pixels are not supported")
        return x.float().clamp(0, 1)

    def check_stream(self, bs: Bitstream) -> None:
        """The file is this codec's, for the loaded backbone, and of an image size its encoder makes."""
        from ..data import MAX_PIXELS

        if bs.codec != self.name:
            raise BitstreamError(f"this is a {bs.codec!r} file, not {self.name!r}")
        if min(bs.height, bs.width) < self.min_side or bs.height * bs.width > MAX_PIXELS:
            raise BitstreamError(
                f"the header claims a {bs.width}x{bs.height} image: the {self.name} encoder makes files of "
                f"at least {self.min_side} pixels a side and at most {MAX_PIXELS:,} pixels"
            )
        if self.uses_backbone and bs.backbone_id != self.backbone_id:
            if ":" in bs.backbone_id:
                raise BitstreamError(
                    f"file was made by an older egc_lite (backbone {bs.backbone_id!r}, before content ids): "
                    "compress the image again with this version"
                )
            raise BitstreamError(
                f"file was made with backbone id {bs.backbone_id!r} but the loaded backbone "
                f"{self.backbone.name!r} has id {self.backbone_id!r}: decode with the backbone that made it (--backbone)"
            )

    @staticmethod
    def param(bs: Bitstream, key: str, kind: type):
        """A required header field of the given type, or a :class:`BitstreamError`."""
        if key not in bs.params:
            raise BitstreamError(f"{bs.codec} file lacks its {key!r} header field")
        value = bs.params[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BitstreamError(f"header field {key!r} has the wrong type ({type(value).__name__})")
        return value

    @staticmethod
    def section(bs: Bitstream, name: str) -> bytes:
        if name not in bs.sections:
            raise BitstreamError(f"{bs.codec} file lacks its {name!r} section")
        return bs.sections[name]
