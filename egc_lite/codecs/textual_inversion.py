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
For a ``v_prediction`` backbone the squared error is taken on :math:`v` (the model's own target,
:func:`egc_lite.sampling.ddim.training_target`) instead of :math:`\\epsilon`.

Token window: on a Stable Diffusion backbone (``backbone.bos``: position 0 is the text encoder's
BOS token, identical for every prompt) the default optimizes :data:`SD_TOKENS` positions after
it, as textual inversion learns a few pseudo-words; the other positions keep the empty prompt's
values. On egc-tiny (no BOS) every position is optimized.

Priors: :meth:`EmbeddingPrior.for_backbone` looks in the user's prior folder for the backbone id
(:func:`~egc_lite.weights.prior_path`, written by ``egc train textinv-prior``), then beside the backbone (egc-tiny
ships one), and otherwise falls back, with an :class:`~egc_lite.errors.EGCWarning`, to an unfitted
scale. A prior is never part of the backbone id; codec A's header carries its fingerprint.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbone import Backbone
from ..errors import EGCWarning, ParameterError
from ..progress import progress
from ..sampling.ddim import training_target
from ..weights import PRIOR_FILE, prior_path

#: Scale of the unfitted prior (used when no fitted one is found).
DEFAULT_SIGMA = 0.1
#: Positions optimized after the BOS token on a Stable Diffusion backbone (the default window).
SD_TOKENS = 4


@dataclass(frozen=True)
class InversionConfig:
    """Optimization of the embedding."""

    steps: int = 150
    lr: float = 0.03
    batch: int = 2  # timesteps drawn per optimization step
    lmbda: float = 0.05  # weight of the embedding's rate (bits per image pixel) against the denoising MSE
    step_size: float = 0.05  # Delta, the quantization step
    token_start: int | None = None  # first optimized position (None: 1 after a BOS token, else 0)
    n_tokens: int | None = None  # optimized positions (None: SD_TOKENS after a BOS token, else all from token_start)
    seed: int = 0
    crop: int | None = 32  # optimize on random crops of this many latent pixels (None: the whole latent)

    def token_slice(self, backbone: Backbone) -> slice:
        """The optimized positions on ``backbone`` (the defaults resolved, see the module docstring)."""
        start = self.token_start if self.token_start is not None else (1 if backbone.bos else 0)
        if self.n_tokens is not None:
            n = self.n_tokens
        else:
            n = min(SD_TOKENS, backbone.n_tokens - start) if backbone.bos else backbone.n_tokens - start
        if start < 0 or n < 1 or start + n > backbone.n_tokens:
            raise ParameterError(
                f"token positions {start}..{start + n - 1} do not fit the backbone's "
                f"{backbone.n_tokens} conditioning tokens"
            )
        return slice(start, start + n)

    def validate(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.lr <= 0 or self.step_size <= 0 or self.lmbda < 0:
            raise ParameterError(f"invalid inversion settings: {self}")


def _log2_bin_probability(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """:math:`\\log_2 P(q)` of :math:`|q| = v` under :math:`\\mathcal{N}(0, s^2)` integrated over the bin
    :math:`[v - \\frac12, v + \\frac12]`, computed on the lower tail, :math:`\\Phi(\\frac{\\frac12 - v}{s}) -
    \\Phi(\\frac{-\\frac12 - v}{s})` (CompressAI's ``GaussianConditional._likelihood``), in log space, so it
    neither saturates nor loses its gradient far from zero."""
    hi = torch.special.log_ndtr((0.5 - v) / s)
    lo = torch.special.log_ndtr((-0.5 - v) / s)
    return (hi + torch.log(-torch.expm1(lo - hi))) / math.log(2.0)


@dataclass
class EmbeddingPrior:
    """Zero-mean Gaussian per embedding channel for the symbols :math:`(e-e_\\varnothing)/\\Delta`."""

    sigma: torch.Tensor  # (cond_dim,)
    fitted: bool = False
    source: str = "unfitted default"

    @classmethod
    def load(cls, path: str | Path, cond_dim: int) -> "EmbeddingPrior":
        """A prior file (or a folder holding :data:`~egc_lite.weights.PRIOR_FILE`) for embeddings of width ``cond_dim``."""
        from safetensors.torch import load_file

        path = Path(path)
        path = path / PRIOR_FILE if path.is_dir() else path
        if not path.is_file():
            raise ParameterError(f"no embedding prior at {path}: fit one with `egc train textinv-prior`")
        try:
            sigma = load_file(path)["sigma"].float()
        except Exception as exc:
            raise ParameterError(f"{path} is not an embedding prior ({type(exc).__name__})") from None
        if sigma.shape != (cond_dim,) or not bool(torch.isfinite(sigma).all()) or not bool((sigma > 0).all()):
            raise ParameterError(f"{path} holds scales of shape {tuple(sigma.shape)}; expected ({cond_dim},), positive")
        return cls(sigma=sigma, fitted=True, source=str(path))

    @classmethod
    def for_backbone(cls, backbone: Backbone, path: str | Path | None = None) -> "EmbeddingPrior":
        """``path`` if given; else the user's prior for the backbone id (:func:`~egc_lite.weights.prior_path`); else the one
        beside the backbone; else the unfitted default, with a loud :class:`EGCWarning`."""
        candidates = [Path(path)] if path is not None else [prior_path(backbone.backbone_id)]
        if path is None and backbone.path is not None:
            candidates.append(Path(backbone.path) / PRIOR_FILE)
        for c in candidates:
            if path is not None or c.is_file():
                return cls.load(c, backbone.cond_dim)
        warnings.warn(
            f"codec A has no fitted embedding prior for backbone {backbone.name!r} (id {backbone.backbone_id}): "
            f"it uses sigma = {DEFAULT_SIGMA} for every channel, so the embedding gets few bits and the result is "
            "mostly the guide image; fit one with `egc train textinv-prior --backbone ...` (README, GPU section)",
            EGCWarning,
            stacklevel=2,
        )
        return cls(sigma=torch.full((backbone.cond_dim,), DEFAULT_SIGMA))

    def save(self, path: str | Path) -> Path:
        """Write the prior to ``path`` (a ``.safetensors`` file, or a folder that gets :data:`~egc_lite.weights.PRIOR_FILE`)."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / PRIOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"sigma": self.sigma.float().contiguous()}, path)
        return path

    def fingerprint(self) -> int:
        """A 32-bit hash of the scales: codec A's header stores it, so a file never decodes under another prior."""
        data = self.sigma.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return int.from_bytes(hashlib.sha256(data).digest()[:4], "little")

    def symbol_scales(self, shape: tuple[int, int, int], step_size: float) -> torch.Tensor:
        """Scales of the symbols, shape ``(1, n, d)``: :math:`\\sigma_d/\\Delta`."""
        return (self.sigma / step_size).clamp_min(0.11).view(1, 1, -1).expand(shape).contiguous()

    def bits(self, symbols: torch.Tensor, step_size: float) -> torch.Tensor:
        """Differentiable :math:`R = -\\sum\\log_2 P(q)`, P the Gaussian integrated over the bin (lower tail)."""
        s = self.symbol_scales(tuple(symbols.shape), step_size).to(symbols)
        return -_log2_bin_probability(symbols.abs(), s).sum()


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
    # float16 backbones (CUDA): scale the loss so that small gradients survive the fp16 backward
    scaler = torch.amp.GradScaler(backbone.device.type, enabled=backbone.dtype == torch.float16)
    for _ in progress(range(config.steps), desc="textual inversion"):
        t = torch.randint(0, n_train, (config.batch,), generator=gen).to(backbone.device)
        eps = torch.randn((config.batch, z0.shape[1], *_crop_size(z0, config.crop)), generator=gen).to(backbone.device)
        u = torch.rand(delta.shape, generator=gen).to(delta) - 0.5
        symbols = delta / config.step_size + u
        cond = null.clone()
        cond[:, sl] = null[:, sl] + config.step_size * symbols
        crops = _crops(z0, config.batch, config.crop, gen)
        zt = _noisy(backbone, crops, t, eps)
        pred = backbone.unet(zt.to(backbone.dtype), t, encoder_hidden_states=cond.expand(config.batch, -1, -1).to(backbone.dtype)).sample
        mse = (pred.float() - training_target(backbone, crops, eps, t)).pow(2).mean()
        rate = prior.bits(symbols, config.step_size)
        loss = mse + config.lmbda * rate / pixels
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
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
        tt = t.view(1).to(backbone.device)
        pred = backbone.unet(zt.to(backbone.dtype), tt, encoder_hidden_states=cond.to(backbone.device, backbone.dtype)).sample
        out.append((int(t), float((pred.float() - training_target(backbone, z0, eps, tt)).pow(2).mean())))
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
