"""Textual inversion of a per-image embedding, with a rate term (codec A's encoder).

Only the embedding :math:`e` (``n`` token vectors fed to the UNet's cross-attention, the text
encoder bypassed) is optimized, the backbone stays frozen:

.. math::
    \\min_e\\; \\mathbb{E}_{t,\\epsilon,\\mathrm{crop}}\\big\\|\\epsilon - \\epsilon_\\theta(z_t, t, \\tilde e)\\big\\|_2^2
    + \\lambda\\, \\frac{R(\\tilde q)}{HW}, \\qquad \\tilde q = \\frac{e - e_\\varnothing}{\\Delta} + u,\\;
    u \\sim \\mathcal{U}(-\\tfrac12, \\tfrac12),\\; \\tilde e = e_\\varnothing + \\Delta \\tilde q,

where :math:`e_\\varnothing` is the null embedding (the start point and the prior's centre),
:math:`\\Delta` the quantization step, :math:`HW` the image's pixels (so the rate term is the
embedding's bits per pixel, as in DiffEIC's :math:`\\lambda R`) and :math:`R` the rate in bits of the symbols under the
fixed :class:`EmbeddingPrior` (a zero-mean discretized Gaussian per channel whose scales are fit
on the training photos and shipped with the backbone). Additive uniform noise stands in for
rounding while optimizing; each step sees ``batch`` random latent crops (``crop`` latent pixels a
side, the size egc-tiny was trained at), a cheaper estimate of the expectation over the whole
image than the whole latent at every step; the transmitted symbols are :math:`q = \\mathrm{round}((e - e_\\varnothing)/\\Delta)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .backbone import Backbone
from .errors import ParameterError
from .progress import progress

PRIOR_FILE = "textinv_prior.safetensors"
#: Scale of the unfitted prior (used when a backbone ships no fitted one).
DEFAULT_SIGMA = 0.1


@dataclass(frozen=True)
class InversionConfig:
    """Optimization of the embedding."""

    steps: int = 150
    lr: float = 0.03
    batch: int = 2  # timesteps drawn per optimization step
    lmbda: float = 0.05  # weight of the embedding's rate (bits per image pixel) against the denoising MSE
    step_size: float = 0.05  # Delta, the quantization step
    token_start: int = 0  # first optimized token position (1 for SD: keeps the BOS token)
    n_tokens: int | None = None  # number of optimized positions (None: all from token_start)
    seed: int = 0
    crop: int | None = 32  # optimize on random crops of this many latent pixels (None: the whole latent)

    def token_slice(self, backbone: Backbone) -> slice:
        n = backbone.n_tokens - self.token_start if self.n_tokens is None else self.n_tokens
        if self.token_start < 0 or n < 1 or self.token_start + n > backbone.n_tokens:
            raise ParameterError(
                f"token positions {self.token_start}..{self.token_start + n - 1} do not fit the backbone's "
                f"{backbone.n_tokens} conditioning tokens"
            )
        return slice(self.token_start, self.token_start + n)

    def validate(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.lr <= 0 or self.step_size <= 0 or self.lmbda < 0:
            raise ParameterError(f"invalid inversion settings: {self}")


@dataclass
class EmbeddingPrior:
    """Zero-mean Gaussian per embedding channel for the symbols :math:`(e-e_\\varnothing)/\\Delta`."""

    sigma: torch.Tensor  # (cond_dim,)
    fitted: bool = False

    @classmethod
    def for_backbone(cls, backbone: Backbone) -> "EmbeddingPrior":
        """The prior shipped beside the backbone, or the unfitted default."""
        if backbone.path is not None and (Path(backbone.path) / PRIOR_FILE).exists():
            from safetensors.torch import load_file

            sigma = load_file(Path(backbone.path) / PRIOR_FILE)["sigma"].float()
            if sigma.shape != (backbone.cond_dim,):
                raise ParameterError(f"{PRIOR_FILE} has shape {tuple(sigma.shape)}, expected ({backbone.cond_dim},)")
            return cls(sigma=sigma, fitted=True)
        return cls(sigma=torch.full((backbone.cond_dim,), DEFAULT_SIGMA))

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / PRIOR_FILE
        save_file({"sigma": self.sigma.float().contiguous()}, path)
        return path

    def symbol_scales(self, shape: tuple[int, int, int], step_size: float) -> torch.Tensor:
        """Scales of the symbols, shape ``(1, n, d)``: :math:`\\sigma_d/\\Delta`."""
        return (self.sigma / step_size).clamp_min(0.11).view(1, 1, -1).expand(shape).contiguous()

    def bits(self, symbols: torch.Tensor, step_size: float) -> torch.Tensor:
        """Differentiable :math:`R = -\\sum\\log_2 P(q)`, P the Gaussian integrated over the bin."""
        s = self.symbol_scales(tuple(symbols.shape), step_size).to(symbols)
        normal = torch.distributions.Normal(0.0, 1.0)
        upper = normal.cdf((symbols.abs() + 0.5) / s)
        lower = normal.cdf((symbols.abs() - 0.5) / s)
        p = (upper - lower).clamp_min(1e-9)
        return -torch.log2(p).sum()


@dataclass
class InversionResult:
    """The optimized embedding and its trace."""

    embedding: torch.Tensor  # (1, n_tokens, d), float32, not yet quantized
    losses: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # estimated bits per step


def _noisy(backbone: Backbone, z0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    a = backbone.scheduler.alphas_cumprod.to(z0.device)[t].view(-1, 1, 1, 1).to(z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def _crop_size(z0: torch.Tensor, crop: int | None) -> tuple[int, int]:
    h, w = z0.shape[-2:]
    return (h, w) if crop is None else (min(h, crop), min(w, crop))


def _crops(z0: torch.Tensor, n: int, crop: int | None, gen: torch.Generator) -> torch.Tensor:
    """``n`` random crops (one place each) of the latent (1, C, h, w): the embedding is shared by
    the whole image, and each optimization step sees a few parts of it (cheaper than the whole)."""
    ch, cw = _crop_size(z0, crop)
    h, w = z0.shape[-2:]
    ys = torch.randint(0, h - ch + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, w - cw + 1, (n,), generator=gen).tolist()
    return torch.cat([z0[..., y : y + ch, x : x + cw] for y, x in zip(ys, xs)])


def invert_embedding(backbone: Backbone, z0: torch.Tensor, config: InversionConfig, prior: EmbeddingPrior | None = None) -> InversionResult:
    """Optimize the embedding of latent ``z0`` (1, C, h, w) (see the module docstring)."""
    config.validate()
    prior = prior or EmbeddingPrior.for_backbone(backbone)
    sl = config.token_slice(backbone)
    null = backbone.null_cond.float().to(backbone.device)
    delta = torch.zeros_like(null[:, sl]).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=config.lr)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    n_train = backbone.scheduler.config.num_train_timesteps
    z0 = z0.detach().to(backbone.device, torch.float32)
    result = InversionResult(embedding=null.clone())
    pixels = z0.shape[-2] * z0.shape[-1] * backbone.vae_factor**2
    for _ in progress(range(config.steps), desc="textual inversion"):
        t = torch.randint(0, n_train, (config.batch,), generator=gen).to(backbone.device)
        eps = torch.randn((config.batch, z0.shape[1], *_crop_size(z0, config.crop)), generator=gen).to(backbone.device)
        u = torch.rand(delta.shape, generator=gen).to(delta) - 0.5
        symbols = delta / config.step_size + u
        cond = null.clone()
        cond[:, sl] = null[:, sl] + config.step_size * symbols
        zt = _noisy(backbone, _crops(z0, config.batch, config.crop, gen), t, eps)
        pred = backbone.unet(zt.to(backbone.dtype), t, encoder_hidden_states=cond.expand(config.batch, -1, -1).to(backbone.dtype)).sample
        mse = (pred.float() - eps).pow(2).mean()
        rate = prior.bits(symbols, config.step_size)
        loss = mse + config.lmbda * rate / pixels
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        result.losses.append(mse.item())
        result.rates.append(rate.item())
    emb = null.clone()
    emb[:, sl] = null[:, sl] + delta.detach()
    result.embedding = emb
    return result


def quantize_embedding(backbone: Backbone, embedding: torch.Tensor, config: InversionConfig, step_size: float | None = None) -> torch.Tensor:
    """Integer symbols :math:`q = \\mathrm{round}((e - e_\\varnothing)/\\Delta)` of the optimized positions, (1, n, d)."""
    sl = config.token_slice(backbone)
    step = config.step_size if step_size is None else step_size
    diff = embedding.float().cpu()[:, sl] - backbone.null_cond.float().cpu()[:, sl]
    return torch.round(diff / step)


def dequantize_embedding(backbone: Backbone, symbols: torch.Tensor, token_start: int, step_size: float) -> torch.Tensor:
    """The embedding :math:`e_\\varnothing + \\Delta q` rebuilt from symbols (1, n, d)."""
    emb = backbone.null_cond.float().cpu().clone()
    n = symbols.shape[1]
    emb[:, token_start : token_start + n] += step_size * symbols.float()
    return emb.to(backbone.device)


@torch.no_grad()
def denoising_loss_by_timestep(backbone: Backbone, z0: torch.Tensor, cond: torch.Tensor, n_timesteps: int = 10,
                               seed: int = 1234) -> list[tuple[int, float]]:
    """:math:`\\|\\epsilon-\\epsilon_\\theta(z_t,t,e)\\|^2` at each timestep of an even grid (fixed noise), as
    ``(t, loss)`` pairs: where along the chain an embedding helps."""
    n_train = backbone.scheduler.config.num_train_timesteps
    ts = torch.linspace(0, n_train - 1, n_timesteps).round().long()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z0 = z0.to(backbone.device, torch.float32)
    out = []
    for t in ts:
        eps = torch.randn(z0.shape, generator=gen).to(z0)
        zt = _noisy(backbone, z0, t.view(1).to(backbone.device), eps)
        pred = backbone.unet(zt.to(backbone.dtype), t.view(1).to(backbone.device), encoder_hidden_states=cond.to(backbone.device, backbone.dtype)).sample
        out.append((int(t), float((pred.float() - eps).pow(2).mean())))
    return out


def denoising_loss(backbone: Backbone, z0: torch.Tensor, cond: torch.Tensor, n_timesteps: int = 10, seed: int = 1234) -> float:
    """Mean :math:`\\|\\epsilon-\\epsilon_\\theta(z_t,t,e)\\|^2` over an even grid of timesteps (fixed noise)."""
    return sum(loss for _, loss in denoising_loss_by_timestep(backbone, z0, cond, n_timesteps, seed)) / n_timesteps


def expected_bits_per_value(sigma_over_delta: float) -> float:
    """Entropy (bits) of a discretized zero-mean Gaussian with scale ``sigma/Delta`` (for planning)."""
    s = max(sigma_over_delta, 1e-3)
    ks = torch.arange(-int(8 * s) - 2, int(8 * s) + 3, dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    p = (normal.cdf((ks + 0.5) / s) - normal.cdf((ks - 0.5) / s)).clamp_min(1e-300)
    return float(-(p * torch.log2(p)).sum()) if s > 0 else 0.0 * math.e


def fit_embedding_prior(backbone: Backbone, images: list[torch.Tensor], config: InversionConfig | None = None,
                        max_side: int = 384) -> EmbeddingPrior:
    """Fit the prior's per-channel scales on training images (never on the benchmark).

    Each image (3, H, W) is downscaled to at most ``max_side`` pixels, inverted without the rate
    term, and :math:`\\sigma_d` is the RMS of :math:`e - e_\\varnothing` over images and optimized
    tokens, per channel :math:`d`.
    """
    import torch.nn.functional as F

    from .data import pad_to_multiple

    config = config or InversionConfig(lmbda=0.0)
    sl = config.token_slice(backbone)
    residuals = []
    mult = backbone.size_multiple
    for k, x in enumerate(progress(images, desc="fitting the embedding prior")):
        scale = min(1.0, max_side / max(x.shape[1:]))
        if scale < 1:
            x = F.interpolate(x[None], scale_factor=scale, mode="area")[0]
        xp, _ = pad_to_multiple(x[None], mult)
        with torch.no_grad():
            z0 = backbone.encode(xp.to(backbone.device))
        res = invert_embedding(backbone, z0, replace(config, seed=k), EmbeddingPrior(torch.ones(backbone.cond_dim)))
        residuals.append((res.embedding[:, sl] - backbone.null_cond.float()[:, sl]).reshape(-1, backbone.cond_dim).cpu())
    r = torch.cat(residuals)
    return EmbeddingPrior(sigma=r.pow(2).mean(0).sqrt().clamp_min(1e-4), fitted=True)

