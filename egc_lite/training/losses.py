"""Every training objective of the kit, with the critic and the timestep sampling they use.

* egc-tiny's autoencoder phases (:class:`ReconstructionLoss`, the PatchGAN critic :class:`PatchDiscriminator`
  with the hinge loss and the adaptive adversarial weight) and its UNet phase (:class:`DenoisingLoss`,
  :func:`sample_timesteps`): :mod:`.backbone` runs them;
* a DiffEIC rate point's total loss (:class:`DiffEICLoss`): :mod:`.diffeic` runs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.autoencoder import encoder_modules, is_tiny
from ..models.diffeic.model import DiffEICModel
from ..models.tiny import ImageTokenEncoder
from ..precision import autocast

#: Initial log-variance of a new VAE's posterior (standard deviation exp(-3) = 0.05).
INITIAL_LOGVAR = -6.0


def start_with_small_posterior_noise(vae) -> None:
    """Set the bias of the log-variance half of ``quant_conv`` to :data:`INITIAL_LOGVAR`.

    With diffusers' default initialisation the posterior's standard deviation starts near 1, about
    the size of the means, and with a KL weight of 1e-6 nothing but the reconstruction shrinks it:
    measured on the (64, 128, 256, 256) VAE with 8 latent channels, after 500 steps (batch 4, 192-px
    crops) the standard deviation was still 0.3-0.9 against means of 0.3-1.8 and the crop PSNR had
    been flat at 17 dB for 250 steps. Starting nearly deterministic lets the latent carry the image
    from the first step; the posterior means (what the codecs use) are unaffected. ``AutoencoderKL``
    only (an ``AutoencoderTiny``'s latent is deterministic already).
    """
    if is_tiny(vae):
        raise ValueError("an AutoencoderTiny has no posterior: its latent is deterministic already")
    c = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.bias[c:].fill_(INITIAL_LOGVAR)


class ReconstructionLoss(nn.Module):
    """Phase 1/2 objective: :math:`\\|x-\\hat x\\|_1 + \\|x-\\hat x\\|_2^2 + \\beta\\,\\mathrm{KL}
    + w_{lf}\\|p_8(x)-p_8(\\hat x)\\|_1` with a sampled latent (:math:`p_8`: 8x8 block means); for an
    ``AutoencoderTiny`` the latent is deterministic and the KL term is zero.

    ``forward`` returns the loss, its MSE and KL parts, and the reconstruction (for the critic).
    """

    def __init__(self, vae, kl_weight: float, freeze_encoder: bool, lf_weight: float = 0.0) -> None:
        super().__init__()
        self.vae, self.kl_weight, self.freeze_encoder, self.lf_weight = vae, kl_weight, freeze_encoder, lf_weight
        if freeze_encoder:
            for m in encoder_modules(vae):
                m.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        kl = torch.zeros((), device=x.device)
        with torch.set_grad_enabled(not self.freeze_encoder and torch.is_grad_enabled()):
            if is_tiny(self.vae):
                z = self.vae.encode(x * 2 - 1).latents
            else:
                post = self.vae.encode(x * 2 - 1).latent_dist
                z = post.sample()
                if not self.freeze_encoder:
                    kl = post.kl().mean()
        xr = (self.vae.decode(z).sample.float() + 1) / 2
        mse = F.mse_loss(xr, x)
        loss = F.l1_loss(xr, x) + mse + self.kl_weight * kl
        if self.lf_weight > 0:
            loss = loss + self.lf_weight * F.l1_loss(F.avg_pool2d(xr, 8), F.avg_pool2d(x, 8))
        return loss, mse, kl, xr


class PatchDiscriminator(nn.Module):
    """PatchGAN critic (Isola et al. 2017): one logit per overlapping patch of about 70 pixels,
    spectral normalisation on every convolution (Miyato et al. 2018) and no other normalisation."""

    def __init__(self, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        mods: list[nn.Module] = []
        c = 3
        for i in range(layers):
            out = width * 2**i
            mods += [sn(nn.Conv2d(c, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c = out
        mods += [sn(nn.Conv2d(c, c, 4, padding=1)), nn.LeakyReLU(0.2), sn(nn.Conv2d(c, 1, 4, padding=1))]
        self.net = nn.Sequential(*mods)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.net(x01 * 2 - 1)


def adaptive_adversarial_weight(rec_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Esser et al. 2021 (eq. 7): :math:`\\lambda = \\|\\nabla_{W} L_{rec}\\| / (\\|\\nabla_{W} L_G\\| + 10^{-4})` at the
    decoder's last layer ``W``, so the adversarial term's gradient has a set size relative to the
    reconstruction's whatever the losses' scales (clamped to [0, 1e4], no gradient)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gen = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gen.norm() + 1e-4)).clamp(0, 1e4).detach()


def hinge_critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss :math:`\\mathbb{E}[\\max(0, 1-D(x))] + \\mathbb{E}[\\max(0, 1+D(\\hat x))]` (Lim and Ye 2017)."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


T_SAMPLINGS = ("uniform", "low-mid")
#: ``low-mid``: share drawn from the logit-normal part, and its mean and spread on logit(t / T).
LOW_MID_SHARE, LOW_MID_MEAN, LOW_MID_STD = 0.75, -0.5, 1.0


def sample_timesteps(n: int, n_train: int, mode: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training levels ``t`` in ``[0, n_train)``.

    ``uniform``: DDPM's :math:`t\\sim\\mathcal{U}\\{0..T-1\\}`. ``low-mid``: the levels where both codecs
    lean on the prior, since each gives the decoder strong side information (codec B starts from its
    content variables at an intermediate level; codec A's guide fixes the layout early): with
    probability 0.75, :math:`t = T\\,\\sigma(u)`, :math:`u\\sim\\mathcal{N}(-0.5, 1)` (a logit-normal,
    as Esser et al. 2024 eq. 19, shifted toward low noise: median :math:`t\\approx 378`, 82% of it
    below 600), else uniform, so that the pure-noise levels codec A starts from are still trained.
    """
    if mode == "uniform":
        return torch.randint(0, n_train, (n,), device=device)
    if mode != "low-mid":
        raise ValueError(f"t_sampling must be one of {', '.join(T_SAMPLINGS)}, not {mode!r}")
    logit = torch.randn(n, device=device) * LOW_MID_STD + LOW_MID_MEAN
    t = (torch.sigmoid(logit) * n_train).long().clamp(0, n_train - 1)
    uniform = torch.randint(0, n_train, (n,), device=device)
    return torch.where(torch.rand(n, device=device) < LOW_MID_SHARE, t, uniform)


class DenoisingLoss(nn.Module):
    """Phase 3 objective: :math:`w_t\\|\\epsilon-\\epsilon_\\theta(z_t,t,e)\\|^2`, ``e`` from the token encoder
    or the null embedding (probability ``p_uncond``); for a ``v_prediction`` UNet the same on
    :math:`v=\\sqrt{\\bar\\alpha_t}\\epsilon-\\sqrt{1-\\bar\\alpha_t}z_0`. The v loss is :math:`(1+\\mathrm{SNR}_t)/\\mathrm{SNR}_t` times the
    epsilon loss: on the noisy levels, where an image's content forms and the conditioning can help, it is a
    clean-latent loss of weight about 1, while the epsilon loss gives them a weight of about :math:`\\mathrm{SNR}_t`
    (measured on egc-tiny v4 after 300 steps: the epsilon UNet gained 0.0% from its tokens at every level,
    the v UNet 0.7-3.2% at t 200-600 and 4% near pure noise).

    ``snr_gamma`` sets the Min-SNR weight :math:`w_t=\\min(\\mathrm{SNR}_t,\\gamma)/\\mathrm{SNR}_t` (Hang et al.
    2023, eq. 13 for eps-prediction), :math:`\\mathrm{SNR}_t=\\bar\\alpha_t/(1-\\bar\\alpha_t)`; it lowers the weight
    of the nearly clean timesteps, whose loss is image detail that no embedding can predict, so
    more of the gradient goes to the content-forming timesteps where the conditioning matters
    (with SD's scaled-linear schedule and :math:`\\gamma=5`, only :math:`t<147` is down-weighted).
    ``None`` gives the plain loss (:math:`w_t=1`); the logged loss is the weighted one.
    """

    def __init__(self, unet: nn.Module, encoder: ImageTokenEncoder, null_cond: torch.Tensor, alphas: torch.Tensor, p_uncond: float,
                 snr_gamma: float | None = None, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if snr_gamma is not None and prediction_type != "epsilon":
            raise ValueError("snr_gamma is the Min-SNR weight of an epsilon-prediction loss; a v_prediction UNet trains without it")
        self.prediction_type = prediction_type
        self.unet, self.encoder = unet, encoder
        self.null_cond = nn.Parameter(null_cond.clone())
        self.register_buffer("alphas", alphas.clone())
        self.p_uncond = p_uncond
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive (5 is the paper's choice) or None, not {snr_gamma}")
        self.snr_gamma = snr_gamma

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights :math:`w_t` (ones without ``snr_gamma``)."""
        if self.snr_gamma is None:
            return torch.ones(t.shape, device=t.device)
        snr = self.alphas[t] / (1 - self.alphas[t])
        return snr.clamp(max=self.snr_gamma) / snr

    def forward(self, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        cond = self.encoder(z0)
        cond = torch.where(drop.view(-1, 1, 1), self.null_cond.expand_as(cond), cond)
        a = self.alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        target = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        per_sample = (self.unet(zt, t, encoder_hidden_states=cond).sample - target).pow(2).mean(dim=(1, 2, 3))
        return (self.weights(t) * per_sample).mean()


class DiffEICLoss(nn.Module):
    """:math:`\\|\\epsilon-\\hat\\epsilon\\|^2 + \\lambda_a\\|c-z_0\\|^2 + \\lambda R` (:mod:`egc_lite.training.diffeic`); the UNet is frozen."""

    def __init__(self, model: DiffEICModel, unet, null_cond: torch.Tensor, alphas: torch.Tensor,
                 prediction_type: str = "epsilon", precision: str = "fp32") -> None:
        super().__init__()
        self.model, self.precision = model, precision
        self.unet = unet  # frozen; its parameters have requires_grad False
        self.prediction_type = prediction_type  # the UNet's output: epsilon, or v (then the loss is on v)
        self.register_buffer("null_cond", null_cond.detach().float().clone())
        self.register_buffer("alphas", alphas.detach().float().clone())

    def forward(self, x: torch.Tensor, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        from ..coding.entropy import likelihood_bits

        cfg = self.model.config
        c, lik = self.model.compressor(x, z0)
        a = self.alphas[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        cond = self.null_cond.expand(x.shape[0], -1, -1)
        with autocast(x.device, self.precision):  # the denoiser only: the rate above stays float32
            out = self.model.predict_noise(self.unet, z_t, t, cond, c).float()
        target = eps if self.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        mse = F.mse_loss(out, target)
        align = F.mse_loss(c, z0)
        bpp = likelihood_bits(lik) / (x.shape[0] * x.shape[2] * x.shape[3])
        loss = mse + cfg.alignment_weight * align + cfg.lmbda * bpp
        return {"loss": loss, "mse": mse, "align": align, "bpp": bpp, "aux": self.model.compressor.aux_loss()}
