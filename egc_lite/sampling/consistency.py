"""Low-frequency consistency for codec A's decoder (**beyond the paper**: Pan et al. decode with
compression guidance only; this option is the kit's own, off by default).

ILVR (Choi et al. 2021, Alg. 1) conditions a sampler on a reference :math:`y` by replacing, after each
step, the low-pass part of the proposal with the low-pass part of the reference noised to the same level:

.. math::
    z_{t'} \\leftarrow z_{t'} - \\phi_k(z_{t'}) + \\phi_k(y_{t'}),\\qquad
    \\phi_k = \\mathrm{up}_k \\circ \\mathrm{avg}_k ,

with :math:`\\phi_k` the block average over :math:`k\\times k` latent pixels followed by nearest
enlargement (so block means are replaced exactly). Here the reference is the guide's latent
:math:`z_g = \\mathcal{E}(\\mathrm{up}(\\hat x_g))` (encoded once) and :math:`k = \\max(1, f/8)` matches the
guide's downsampling factor :math:`f` (or is given). Choice: the replacement acts in **latent space** and
the reference is noised with the sampler's own noise prediction,
:math:`y_{t'} = \\sqrt{\\bar\\alpha_{t'}}\\,z_g + \\sqrt{1-\\bar\\alpha_{t'}}\\,\\hat\\epsilon`. With DDIM's
:math:`z_{t'} = \\sqrt{\\bar\\alpha_{t'}}\\hat z_0 + \\sqrt{1-\\bar\\alpha_{t'}}\\hat\\epsilon + c` (:math:`c` the compression
guidance correction) the step becomes

.. math::
    z_{t'} \\leftarrow z_{t'} + \\sqrt{\\bar\\alpha_{t'}}\\,\\big(\\phi_k(z_g) - \\phi_k(\\hat z_0)\\big) - \\phi_k(c),

i.e. ILVR in latent space *and* the same replacement on Tweedie's estimate :math:`\\hat z_0` (the two
coincide for this noise). Why: it costs no decoder pass (two pooling ops per step), draws no random
numbers (the decoding stays a deterministic function of the file), and fresh noise as in ILVR's
:math:`q(y_{t'}|y)` would put low-pass noise on a deterministic DDIM path that never removes it. After the
last step the output's latent block means are :math:`\\sqrt{\\bar\\alpha_{\\rm end}}\\,\\mathrm{avg}_k(z_g) +
\\sqrt{1-\\bar\\alpha_{\\rm end}}\\,\\mathrm{avg}_k(\\hat\\epsilon)`, the guide's up to the schedule's last-step error.
It acts on the first ``until`` fraction of the steps (the later ones are left to the prior's detail).
Its limit: latent block means are only approximately the image's colours (the VAE is not linear), and
with :math:`k = 1` (guide factor 8 on an 8x VAE) it replaces the whole latent during its steps. At best it
lands on :math:`\\mathcal{D}(\\mathcal{E}(\\mathrm{up}(\\hat x_g)))`, which carries the autoencoder's colour shift
(measured on egc-tiny: ``egc_lite/weights/egc-tiny/MODEL_CARD.md``); mode ``pixel`` therefore also offers the
replacement at :math:`t = 0` in pixel space, on the decoded image (:func:`pixel_projection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ParameterError
from ..guide import degrade
from .ddim import GuidanceHook, StepState, predict_z0

#: Consistency mechanisms (their index is what a file's header stores): ILVR in latent space during sampling,
#: the pixel-space projection after decoding, or both.
CONSISTENCY_MODES = ("none", "ilvr", "pixel", "ilvr+pixel")
#: Largest low-pass block, in latent pixels.
MAX_BLOCK = 64


@dataclass(frozen=True)
class ConsistencyConfig:
    """``mode`` ``"none"`` (the paper's decoder) or ``"ilvr"``; ``until``: fraction of the steps it acts on
    (from the noisiest); ``block``: low-pass block in latent pixels (0 = matched to the guide's factor)."""

    mode: str = "none"
    until: float = 0.5
    block: int = 0

    def validate(self) -> None:
        if self.mode not in CONSISTENCY_MODES:
            raise ParameterError(f"consistency must be one of {CONSISTENCY_MODES}, got {self.mode!r}")
        if not 0.0 <= self.until <= 1.0:
            raise ParameterError(f"consistency 'until' must be in [0, 1], got {self.until}")
        if isinstance(self.block, bool) or int(self.block) != self.block or not 0 <= self.block <= MAX_BLOCK:
            raise ParameterError(f"consistency block must be an integer in 0..{MAX_BLOCK}, got {self.block!r}")

    @property
    def latent(self) -> bool:
        """Whether ILVR acts in latent space during sampling."""
        return self.mode in ("ilvr", "ilvr+pixel")

    @property
    def pixel(self) -> bool:
        """Whether the decoded image is projected onto the guide's block means (:func:`pixel_projection`)."""
        return self.mode in ("pixel", "ilvr+pixel")

    def active(self, index: int, steps: int) -> bool:
        """Whether step ``index`` (0 = noisiest) is made consistent in latent space."""
        return self.latent and index < self.until * steps

    def block_for(self, factor: int, vae_factor: int) -> int:
        """The low-pass block :math:`k` in latent pixels: ``block``, or :math:`\\max(1, f / \\text{vae factor})`."""
        return self.block if self.block > 0 else max(1, factor // vae_factor)


def low_pass(z: torch.Tensor, k: int) -> torch.Tensor:
    """:math:`\\phi_k(z)`: block means over ``k x k`` (edges replicate-padded, as :func:`~egc_lite.guide.degrade`),
    enlarged by nearest repetition to ``z``'s size; the block means of ``z - phi_k(z) + phi_k(y)`` are ``y``'s."""
    if k == 1:
        return z
    h, w = z.shape[-2:]
    return degrade(z, k).repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)[..., :h, :w]


def pixel_projection(x: torch.Tensor, guide_small: torch.Tensor, factor: int) -> torch.Tensor:
    """One back-projection of the decoded image onto the guide (ILVR's replacement at :math:`t = 0`, in pixels):

    .. math::
        x \\leftarrow \\mathrm{clip}_{[0,1]}\\big(x + \\mathrm{up}_f(\\hat x_g - d_f(x))\\big),

    :math:`d_f` the guide's block average, :math:`\\mathrm{up}_f` bicubic enlargement by :math:`f` (the guide's
    geometry, unclamped). A smooth correction, so no block edges; where the residual is constant over a
    neighbourhood the block means become the guide's exactly. It removes the VAE's colour shift, which no
    latent-space mechanism can (the latent ILVR lands on :math:`\\mathcal{D}(\\mathcal{E}(\\mathrm{up}(\\hat x_g)))` at best).
    ``x`` is (B, 3, H, W), ``guide_small`` (1 or B, 3, ceil(H/f), ceil(W/f))."""
    h, w = x.shape[-2:]
    if guide_small.dim() == 3:
        guide_small = guide_small[None]
    residual = guide_small.to(x) - degrade(x, factor)
    up = F.interpolate(residual, scale_factor=factor, mode="bicubic", align_corners=False)[..., :h, :w]
    return (x + up).clamp(0, 1)


def ilvr_hook(reference: torch.Tensor, k: int, config: ConsistencyConfig, steps: int,
              inner: GuidanceHook | None = None) -> GuidanceHook:
    """A :data:`~egc_lite.sampling.ddim.GuidanceHook` adding the ILVR replacement (module docstring) to ``inner``'s
    correction (compression guidance, or none)."""
    config.validate()
    if not 1 <= k <= MAX_BLOCK:
        raise ParameterError(f"low-pass block must be in 1..{MAX_BLOCK}, got {k}")
    ref_lf = low_pass(reference.float(), k)

    def hook(state: StepState) -> torch.Tensor | None:
        correction = inner(state) if inner is not None else None
        if not config.active(state.index, steps):
            return correction
        z0 = predict_z0(state.z_t, state.eps, state.a_t)
        out = state.a_prev**0.5 * (ref_lf.to(z0).expand_as(z0) - low_pass(z0, k))
        if correction is not None:
            out = out + correction - low_pass(correction, k)
        return out

    return hook
