"""Compression guidance (codec A): steer DDIM towards the transmitted guide image.

At step :math:`t`, with :math:`\\hat z_0(z_t)` Tweedie's estimate (see :mod:`egc_lite.sampling.ddim`),
:math:`\\mathcal{D}` the VAE decoder, :math:`d_f` the guide's degradation (block average by
``factor``, :func:`egc_lite.guide.degrade`) and :math:`\\hat x_g` the decoded guide, the guidance loss is

.. math::
    \\mathcal{L}(z_t) = \\big\\| d_f\\big(\\mathcal{D}(\\hat z_0(z_t))\\big) - \\hat x_g \\big\\|_2^2

(summed over the guide's pixels and channels, images in [0, 1]), and the DDIM step is corrected as

.. math::
    z_{t'} \\leftarrow z_{t'} - s_c \\sqrt{\\bar\\alpha_t}\\, \\nabla_{z_t} \\mathcal{L}.

The factor :math:`\\sqrt{\\bar\\alpha_t}` is this kit's choice (the paper gives no code): with the
noise prediction held constant, :math:`\\nabla_{z_t}\\mathcal{L} = \\nabla_{\\hat z_0}\\mathcal{L}/\\sqrt{\\bar\\alpha_t}`,
so the correction is :math:`-s_c\\nabla_{\\hat z_0}\\mathcal{L}`. It is added to :math:`z_{t'}`, not to
:math:`\\hat z_0`: the next step's clean estimate :math:`\\hat z_0' = (z_{t'} - \\sqrt{1-\\bar\\alpha_{t'}}\\,\\epsilon')/\\sqrt{\\bar\\alpha_{t'}}`
moves by :math:`-(s_c/\\sqrt{\\bar\\alpha_{t'}})\\,\\nabla_{\\hat z_0}\\mathcal{L}`. So :math:`s_c` is a step in the
clean-latent space only up to the factor :math:`1/\\sqrt{\\bar\\alpha_{t'}}`: 11.7 at the first of 50 DDIM
steps on Stable Diffusion's schedule (:math:`t' = 961`), falling to 1.0 at the last. Early steps are
pulled hardest, which is where the guide's coarse layout should be settled
(``tests/sampling/test_analytic.py`` checks this size exactly with a Gaussian denoiser).

Modes (the cost is a decoder pass and its gradient per guided step):

* ``"full"``: the exact gradient, back-propagated through the UNet and the decoder;
* ``"fast"``: the noise prediction is held constant (no UNet backward): the gradient goes
  through the decoder only;
* ``"latent"``: the distance is measured in latent space at the guide's resolution,
  :math:`\\|p_k(\\hat z_0) - p_k(z_g)\\|^2` with :math:`z_g = \\mathcal{E}(\\mathrm{up}(\\hat x_g))` encoded once
  and :math:`p_k` block averaging by :math:`k = \\max(1, f/8)` latent pixels: no decoder pass at all;
  it relies on the VAE latent keeping local colour, so it is an approximation of the loss above;
* ``every`` / ``until``: guide only every k-th step, and only in the first ``until`` fraction
  of the steps (the late steps only refine texture, which a small guide does not constrain).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backbone import Backbone
from ..errors import ParameterError
from ..guide import degrade, upsample
from .ddim import Denoiser, GuidanceHook, StepState, predict_z0

GUIDANCE_MODES = ("fast", "full", "latent")


@dataclass(frozen=True)
class CompressionGuidanceConfig:
    """Strength and schedule of compression guidance."""

    scale: float = 0.6  # s_c, chosen for "fast" with every=2 on egc-tiny v3 (its MODEL_CARD.md); about 0.1-0.3 for "latent"
    mode: str = "fast"  # the paper's decoded distance; "latent" is the cheaper shortcut
    every: int = 2  # on training photos, (0.6, every 2) decodes as well as (0.3, every 1) in 35% less time
    until: float = 1.0

    def validate(self) -> None:
        if self.mode not in GUIDANCE_MODES:
            raise ParameterError(f"guidance mode must be one of {GUIDANCE_MODES}, got {self.mode!r}")
        if self.every < 1:
            raise ParameterError(f"guidance 'every' must be >= 1, got {self.every}")
        if not 0.0 <= self.until <= 1.0:
            raise ParameterError(f"guidance 'until' must be in [0, 1], got {self.until}")
        if not 0 <= self.scale <= 1e4:
            raise ParameterError(f"compression guidance scale s_c must be in [0, 10000], got {self.scale}")

    @property
    def backward(self) -> str:
        """What a guided step back-propagates through, as :func:`egc_lite.models.memory.backbone_decode_bytes` counts it:
        ``"decoder"`` (``fast``), ``"all"`` (``full``: the UNet too) or ``"none"`` (``latent``)."""
        return {"fast": "decoder", "full": "all", "latent": "none"}[self.mode]

    def active(self, index: int, steps: int) -> bool:
        """Whether step ``index`` (0 = noisiest) is guided."""
        return self.scale > 0 and index < self.until * steps and index % self.every == 0


def guide_loss(backbone: Backbone, z0: torch.Tensor, guide_small: torch.Tensor, size: tuple[int, int], factor: int) -> torch.Tensor:
    """:math:`\\|d_f(\\mathcal{D}(z_0))-\\hat x_g\\|^2` for a latent batch (image cropped to ``size``)."""
    x = backbone.decode(z0)[..., : size[0], : size[1]]
    return (degrade(x, factor) - guide_small.to(x)).pow(2).sum()


def guide_gradient_tiles(backbone: Backbone, size: tuple[int, int]) -> bool:
    """Whether :func:`tiled_guide_gradient` applies: a large image and a convolution-only decoder."""
    from ..models.tiling import AUTOENCODER_TILING, is_tileable

    decoder = getattr(backbone.vae, "decoder", None)
    return AUTOENCODER_TILING.wants_tiles(*size) and decoder is not None and is_tileable(decoder)


def tiled_guide_gradient(backbone: Backbone, z0: torch.Tensor, guide_small: torch.Tensor, size: tuple[int, int],
                         factor: int) -> torch.Tensor:
    """:math:`\nabla_{\\hat z_0}` of :func:`guide_loss`, window by window (mode ``fast`` on a large image).

    The loss is a sum over guide pixels, so it splits over windows whose cores are whole guide blocks; each
    core's pixels depend only on its window of latent (core plus the decoder's receptive radius,
    :mod:`egc_lite.models.tiling`), so the summed window gradients are the whole gradient, exactly, while the
    decoder's maps are held for one window at a time.
    """
    from ..models.tiling import AUTOENCODER_TILING, receptive_radius, windows

    f = backbone.vae_factor
    decoder = backbone.vae.decoder
    halo = int(-(-receptive_radius(decoder)[0] // 1))
    align = max(1, -(-factor // f))  # latent pixels per guide block, rounded up: cores hold whole blocks
    while (align * f) % factor:
        align += 1
    core = max(align, AUTOENCODER_TILING.core // f)
    h, w = z0.shape[-2:]
    grad = torch.zeros_like(z0, dtype=torch.float32)
    for y0, y1 in windows(h, core, align):
        for x0, x1 in windows(w, core, align):
            a0, b0, a1, b1 = max(y0 - halo, 0), max(x0 - halo, 0), min(y1 + halo, h), min(x1 + halo, w)
            py0, py1, px0, px1 = y0 * f, min(y1 * f, size[0]), x0 * f, min(x1 * f, size[1])
            if py0 >= py1 or px0 >= px1:
                continue  # padding only
            with torch.enable_grad():
                zw = z0[..., a0:a1, b0:b1].detach().requires_grad_(True)
                x = backbone.decode(zw)[..., py0 - a0 * f:py1 - a0 * f, px0 - b0 * f:px1 - b0 * f]
                target = guide_small[..., py0 // factor:-(-py1 // factor), px0 // factor:-(-px1 // factor)]
                loss = (degrade(x, factor) - target.to(x)).pow(2).sum()
                (gw,) = torch.autograd.grad(loss, zw)
            grad[..., a0:a1, b0:b1] += gw.float()
    return grad


def guide_latent(backbone: Backbone, guide_small: torch.Tensor, size: tuple[int, int], factor: int) -> torch.Tensor:
    """:math:`z_g = \\mathcal{E}(\\mathrm{up}(\\hat x_g))` at the padded latent size (1, C, h, w), float32."""
    if guide_small.dim() == 3:
        guide_small = guide_small[None]
    big = upsample(guide_small.to(backbone.device, torch.float32), size, factor=factor)
    mult = backbone.size_multiple
    big = torch.nn.functional.pad(big, (0, (-size[1]) % mult, 0, (-size[0]) % mult), mode="replicate")
    with torch.no_grad():
        return backbone.encode(big).float()


def compression_guidance(
    backbone: Backbone,
    guide_small: torch.Tensor,
    size: tuple[int, int],
    factor: int,
    config: CompressionGuidanceConfig,
    steps: int,
    denoiser: Denoiser,
) -> GuidanceHook:
    """A :data:`~egc_lite.sampling.ddim.GuidanceHook` implementing the correction above."""
    config.validate()
    guide_small = guide_small.to(backbone.device, torch.float32)
    if guide_small.dim() == 3:
        guide_small = guide_small[None]

    tiled = config.mode == "fast" and guide_gradient_tiles(backbone, size)
    target_latent = None
    if config.mode == "latent":
        k = max(1, factor // backbone.vae_factor)
        target_latent = degrade(guide_latent(backbone, guide_small, size, factor), k)

    def hook(state: StepState) -> torch.Tensor | None:
        if not config.active(state.index, steps):
            return None
        if target_latent is not None:
            with torch.enable_grad():
                z_t = state.z_t.detach().requires_grad_(True)
                z0 = predict_z0(z_t, state.eps.detach(), state.a_t)
                loss = (degrade(z0, k) - target_latent.expand(z0.shape[0], -1, -1, -1)).pow(2).sum()
                (grad,) = torch.autograd.grad(loss, z_t)
            return -config.scale * state.a_t**0.5 * grad.detach()
        with torch.enable_grad():
            z_t = state.z_t.detach().requires_grad_(True)
            if config.mode == "full":
                tt = torch.full((z_t.shape[0],), state.t, device=z_t.device, dtype=torch.long)
                if state.guidance_scale != 1.0:
                    both = denoiser(torch.cat([z_t, z_t]), torch.cat([tt, tt]), torch.cat([state.null, state.cond]))
                    eps_u, eps_c = both.chunk(2)
                    eps = eps_u + state.guidance_scale * (eps_c - eps_u)
                else:
                    eps = denoiser(z_t, tt, state.cond)
            elif tiled:  # the clean estimate is linear in z_t: its gradient over sqrt(alpha_bar) is z_t's
                z0 = predict_z0(state.z_t, state.eps, state.a_t)
                return -config.scale * tiled_guide_gradient(backbone, z0, guide_small.expand(z0.shape[0], -1, -1, -1), size, factor)
            else:
                eps = state.eps.detach()
            z0 = predict_z0(z_t, eps, state.a_t)
            loss = guide_loss(backbone, z0, guide_small.expand(z0.shape[0], -1, -1, -1), size, factor)
            (grad,) = torch.autograd.grad(loss, z_t)
        return -config.scale * state.a_t**0.5 * grad.detach()

    return hook
