"""Exact denoisers for Gaussian data, to test samplers and guidance against closed forms.

For data :math:`z_0 \\sim \\mathcal{N}(\\mu, s^2 I)` and :math:`z_t = \\sqrt{\\bar\\alpha_t}\\,z_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon`,
:math:`z_t \\sim \\mathcal{N}(\\sqrt{\\bar\\alpha_t}\\mu, \\kappa_t)` with :math:`\\kappa_t = \\bar\\alpha_t s^2 + 1 - \\bar\\alpha_t`, and the
minimum-MSE predictions are (Tweedie)

.. math::
    \\mathbb{E}[\\epsilon \\mid z_t] = \\frac{\\sqrt{1-\\bar\\alpha_t}}{\\kappa_t}(z_t - \\sqrt{\\bar\\alpha_t}\\mu),\\qquad
    \\mathbb{E}[z_0 \\mid z_t] = \\mu + \\frac{\\sqrt{\\bar\\alpha_t}\\,s^2}{\\kappa_t}(z_t - \\sqrt{\\bar\\alpha_t}\\mu),

and :math:`\\mathbb{E}[v \\mid z_t] = \\sqrt{\\bar\\alpha_t}\\,\\mathbb{E}[\\epsilon\\mid z_t] - \\sqrt{1-\\bar\\alpha_t}\\,\\mathbb{E}[z_0\\mid z_t]`.
:class:`GaussianUNet` returns either, with :math:`\\mu` read from the conditioning (its first value),
so the unconditional and conditional predictions differ: classifier-free guidance with scale
:math:`s_f` is then exactly the denoiser of :math:`\\mu_u + s_f(\\mu_c - \\mu_u)`. Sign, scale and
schedule errors in a sampler show up as wrong sample statistics, which random weights never reveal.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from ..backbone import Backbone
from ..models.tiny import TEST_CONFIG, build_scheduler, build_vae


class GaussianUNet(nn.Module):
    """Drop-in for ``UNet2DConditionModel`` (``unet(z_t, t, encoder_hidden_states=e).sample``): the exact
    :math:`\\epsilon` or :math:`v` prediction for :math:`\\mathcal{N}(e_{0,0}, s^2)` data (module docstring)."""

    def __init__(self, alphas_cumprod: torch.Tensor, std: float, prediction_type: str = "epsilon") -> None:
        super().__init__()
        self.register_buffer("alphas", alphas_cumprod.detach().double().clone())
        self.std, self.prediction_type = float(std), prediction_type
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a dtype and a device
        self.config = SimpleNamespace(block_out_channels=(1,))  # no downsampling: any latent size

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, **_) -> SimpleNamespace:
        z = sample.double()
        a = self.alphas.to(z.device)[timestep.to(z.device).long()].view(-1, *([1] * (z.dim() - 1)))
        mu = encoder_hidden_states[:, 0, 0].double().view(-1, *([1] * (z.dim() - 1)))
        kappa = a * self.std**2 + 1 - a
        centred = z - a.sqrt() * mu
        eps = (1 - a).sqrt() * centred / kappa
        z0 = mu + a.sqrt() * self.std**2 * centred / kappa
        out = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        return SimpleNamespace(sample=out.to(sample.dtype) + 0 * self.anchor)


def gaussian_backbone(std: float, null_mean: float = 0.0, prediction_type: str = "epsilon", n_tokens: int = 2) -> Backbone:
    """A CPU float32 :class:`Backbone` whose UNet is a :class:`GaussianUNet` (the VAE is the tiny test
    VAE, used only for its latent shape or by tests that decode)."""
    scheduler = build_scheduler(prediction_type)
    torch.manual_seed(0)
    vae = build_vae(TEST_CONFIG).eval().requires_grad_(False)
    unet = GaussianUNet(scheduler.alphas_cumprod, std, prediction_type).requires_grad_(False)
    null = torch.full((1, n_tokens, 4), float(null_mean))
    return Backbone(name=f"gaussian-{prediction_type}", backbone_id="analytic", vae=vae, unet=unet, scheduler=scheduler,
                    null_cond=null, latent_scale=1.0, device=torch.device("cpu"), dtype=torch.float32)
