"""The configuration of one DiffEIC rate point (:class:`DiffEICConfig`), the options it combines, and the
UNet summary a saved rate point records (so that it loads without the backbone's weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ...errors import ParameterError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Image sides are padded to a multiple of this (y at stride 16, w at stride 64).
COMPRESSOR_STRIDE = 64
#: Control module variants (``DiffEICConfig.control``; :mod:`.control`).
CONTROL_KINDS = ("cddm", "narrow")
#: UNet configuration fields the control module is built from (stored in ``config.json``).
UNET_KEYS = (
    "in_channels", "block_out_channels", "down_block_types", "layers_per_block", "cross_attention_dim",
    "transformer_layers_per_block", "attention_head_dim", "num_attention_heads", "use_linear_projection",
    "upcast_attention", "norm_num_groups", "only_cross_attention", "mid_block_type", "flip_sin_to_cos", "freq_shift",
)


# ---------------------------------------------------------------------------------- configuration
#: Fields appended to :class:`DiffEICConfig` after rate points were shipped, with the value that means
#: the design those points were trained with (an absent field in ``config.json`` takes it).
#: The reference's compressor and control design, which the shipped rate points use and `egc train diffeic` trains
#: by default (its command-line defaults are these values; a test ties them to the shipped config.json files).
SHIPPED_DESIGN: dict[str, Any] = {"control": "cddm", "z0_modulation": "sft", "context": "checkerboard"}
LEGACY_FIELDS: dict[str, Any] = {"control": "narrow", "z0_modulation": "concat", "sft_channels": 32, "context": "none", "context_slices": ()}


@dataclass(frozen=True)
class DiffEICConfig:
    """Architecture and loss weights of one DiffEIC rate point.

    ``N``/``M``: channel widths of the hyper-latent / latent (the reference uses N=192, M=320 for
    Stable Diffusion; the defaults suit egc-tiny). ``lmbda``: the rate weight :math:`\\lambda`
    (larger = fewer bits; the reference trains 1, 2, 4, 8, 16).
    """

    N: int = 64
    M: int = 96
    use_z0: bool = True  # feed the VAE latent into g_a (encoder side only)
    control: str = "cddm"  # "cddm": the reference's control module; "narrow": the first kit's ControlNetModel (egc_lite.models.diffeic.control)
    control_ratio: float = 0.2
    control_norm_groups: int = 8  # control widths are multiples of this
    control_head_dim: int = 64  # "narrow" only
    hint_channels: tuple[int, ...] = (16,)  # "narrow" only; one entry: no downsampling of the hint
    lmbda: float = 4.0
    alignment_weight: float = 2.0  # lambda_a of the space alignment loss
    # Appended after the first shipped rate points: a config.json without them is of that design (LEGACY_FIELDS,
    # filled in by from_dict and left out of identity_dict, so such files load and hash as before). These defaults
    # are the small plain design built in code (tests, notebooks' quick points); what ships is SHIPPED_DESIGN.
    z0_modulation: str = "concat"  # "concat" (z0 joins g_a at stride 8) or "sft" (SFT layers in g_a and h_a, the reference's)
    sft_channels: int = 32  # width of the z0 condition maps and SFT hidden layers
    context: str = "none"  # "none" (mean-scale hyperprior) or "checkerboard" (He et al. 2021)
    context_slices: tuple[int, ...] = ()  # channel slices of the checkerboard context (ELIC); () = one slice of M

    def validate(self) -> None:
        if self.N < 4 or self.M < 4:
            raise ParameterError(f"N and M must be at least 4, got N={self.N}, M={self.M}")
        if self.control not in CONTROL_KINDS:
            raise ParameterError(f"control must be one of {CONTROL_KINDS}, got {self.control!r}")
        if not 0 < self.control_ratio <= 1:
            raise ParameterError(f"control_ratio must be in (0, 1], got {self.control_ratio}")
        if len(self.hint_channels) != 1:
            raise ParameterError("hint_channels must have one entry: more would downsample the latent-space hint")
        if self.lmbda < 0 or self.alignment_weight < 0:
            raise ParameterError("lmbda and alignment_weight must not be negative")
        check_compressor_options(self.M, self.use_z0, self.z0_modulation, self.sft_channels, self.context,
                                 tuple(self.context_slices))

    def to_dict(self) -> dict:
        return asdict(self)

    def identity_dict(self) -> dict:
        """:meth:`to_dict` without the appended fields that hold their legacy value: what
        :meth:`~.model.DiffEICModel.fingerprint` hashes, so rate points saved before those fields existed keep
        their fingerprint (and the files made with them keep decoding)."""
        return {k: v for k, v in self.to_dict().items() if k not in LEGACY_FIELDS or v != LEGACY_FIELDS[k]}

    @classmethod
    def from_dict(cls, d: dict) -> DiffEICConfig:
        """From a saved configuration; a field it lacks takes its :data:`LEGACY_FIELDS` value (one saved before the
        ``control`` field existed is a ``"narrow"`` model, one saved before ``context`` has none)."""
        names = {f.name for f in fields(cls)}
        d = {**LEGACY_FIELDS, **d}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def unet_summary(unet) -> dict:
    """The UNet configuration fields the control module depends on (JSON-friendly)."""
    out = {}
    for k in UNET_KEYS:
        v = unet.config.get(k) if hasattr(unet.config, "get") else getattr(unet.config, k, None)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


#: How the VAE latent enters the encoder: concatenated to g_a's stride-8 features, or SFT layers in g_a and h_a.
Z0_MODULATIONS = ("concat", "sft")
#: Entropy models of y: the mean-scale hyperprior alone, or with a checkerboard (+ channel-slice) context.
CONTEXTS = ("none", "checkerboard")


def check_compressor_options(M: int, use_z0: bool, z0_modulation: str, sft_channels: int, context: str,
                             context_slices: tuple[int, ...]) -> None:
    """Raise :class:`ParameterError` for compressor options that do not fit together."""
    if z0_modulation not in Z0_MODULATIONS:
        raise ParameterError(f"z0_modulation must be one of {Z0_MODULATIONS}, got {z0_modulation!r}")
    if z0_modulation == "sft" and not use_z0:
        raise ParameterError("z0_modulation='sft' modulates the encoder by z0: it needs use_z0=True")
    if sft_channels < 4:
        raise ParameterError(f"sft_channels must be at least 4, got {sft_channels}")
    if context not in CONTEXTS:
        raise ParameterError(f"context must be one of {CONTEXTS}, got {context!r}")
    if context_slices:
        if context != "checkerboard":
            raise ParameterError("context_slices (channel slices) need context='checkerboard'")
        if min(context_slices) < 1 or sum(context_slices) != M:
            raise ParameterError(f"context_slices must be positive and sum to M={M}, got {tuple(context_slices)}")
