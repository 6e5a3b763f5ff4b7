"""Textual inversion: it lowers the denoising loss, the rate term lowers the rate, symbols round-trip."""

from __future__ import annotations

import pytest
import torch

from egc_lite.codecs.textual_inversion import (
    EmbeddingPrior,
    InversionConfig,
    denoising_loss,
    denoising_loss_by_timestep,
    dequantize_embedding,
    invert_embedding,
    quantize_embedding,
)


def _latent(backbone):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 8, 8, generator=g)


@pytest.mark.parametrize("crop", [None, 4])
def test_inversion_lowers_denoising_loss_below_null(tiny_backbone, crop):
    z0 = _latent(tiny_backbone)
    res = invert_embedding(tiny_backbone, z0, InversionConfig(steps=40, lr=0.1, lmbda=0.0, batch=4, crop=crop))
    assert len(res.losses) == 40
    assert denoising_loss(tiny_backbone, z0, res.embedding) < denoising_loss(tiny_backbone, z0, tiny_backbone.null_cond)


def test_denoising_loss_is_the_mean_of_its_timestep_curve(tiny_backbone):
    z0 = _latent(tiny_backbone)
    curve = denoising_loss_by_timestep(tiny_backbone, z0, tiny_backbone.null_cond, n_timesteps=5)
    ts = [t for t, _ in curve]
    assert len(curve) == 5
    assert ts[0] == 0 and ts[-1] == tiny_backbone.scheduler.config.num_train_timesteps - 1 and ts == sorted(ts)
    assert denoising_loss(tiny_backbone, z0, tiny_backbone.null_cond, 5) == pytest.approx(sum(v for _, v in curve) / 5)


def test_rate_term_lowers_the_rate(tiny_backbone):
    z0 = _latent(tiny_backbone)
    prior = EmbeddingPrior(sigma=torch.full((tiny_backbone.cond_dim,), 0.1))
    free = invert_embedding(tiny_backbone, z0, InversionConfig(steps=30, lr=0.1, lmbda=0.0), prior)
    cheap = invert_embedding(tiny_backbone, z0, InversionConfig(steps=30, lr=0.1, lmbda=1000.0), prior)
    assert sum(cheap.rates[-5:]) < sum(free.rates[-5:])


def test_only_the_chosen_tokens_move(tiny_backbone):
    cfg = InversionConfig(steps=5, lr=0.1, token_start=1, n_tokens=2)
    res = invert_embedding(tiny_backbone, _latent(tiny_backbone), cfg)
    moved = (res.embedding - tiny_backbone.null_cond).abs().sum(-1)[0]
    assert moved[0] == 0 and moved[3] == 0 and moved[1] > 0 and moved[2] > 0


def test_quantize_dequantize(tiny_backbone):
    cfg = InversionConfig(step_size=0.05)
    emb = tiny_backbone.null_cond + 0.05 * torch.randint(-3, 4, tiny_backbone.null_cond.shape).float()
    q = quantize_embedding(tiny_backbone, emb, cfg)
    assert torch.equal(q, q.round())
    assert torch.allclose(dequantize_embedding(tiny_backbone, q, 0, 0.05), emb, atol=1e-6)


def test_prior_bits_grow_with_symbol_size(tiny_backbone):
    prior = EmbeddingPrior(sigma=torch.full((tiny_backbone.cond_dim,), 0.1))
    shape = (1, tiny_backbone.n_tokens, tiny_backbone.cond_dim)
    small = prior.bits(torch.zeros(shape), 0.05)
    large = prior.bits(torch.full(shape, 6.0), 0.05)
    assert 0 < small < large


def test_prior_saved_beside_backbone_is_used(tmp_path, tiny_backbone):
    from egc_lite.backbone import load_backbone, save_backbone

    folder = save_backbone(tiny_backbone, tmp_path / "bb")
    EmbeddingPrior(sigma=torch.linspace(0.1, 0.2, tiny_backbone.cond_dim)).save(folder)
    prior = EmbeddingPrior.for_backbone(load_backbone(str(folder), device="cpu"))
    assert prior.fitted and torch.allclose(prior.sigma[-1], torch.tensor(0.2))
    assert not EmbeddingPrior.for_backbone(tiny_backbone).fitted


# ---------------------------------------------------------------- issue 11, faults 1 and 6 (analytic denoisers)
@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_inversion_recovers_the_data_mean_for_either_prediction_type(kind):
    """Fault 1 (inversion loss): the Gaussian denoiser reads the data mean from the embedding's first
    value, so the loss's minimiser is the latent's mean. A v-prediction output compared with the noise
    (the loss before the fix) pulls it to about abar (1 - s^2) times that mean instead (0.23 for 0.71)."""
    from egc_lite.sampling.analytic import gaussian_backbone

    b = gaussian_backbone(std=0.5, prediction_type=kind)
    z0 = 0.7 + 0.5 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = InversionConfig(steps=300, lr=0.02, lmbda=0.0, batch=8, crop=None, step_size=0.01)
    res = invert_embedding(b, z0, cfg, EmbeddingPrior(torch.ones(4)))
    assert abs(float(res.embedding[0, 0, 0]) - float(z0.mean())) < 0.03


def test_inversion_scales_the_loss_of_a_float16_backbone():
    """Fault 6 (loss scaling): in a float16 backward a gradient below fp16's smallest subnormal (6e-8)
    becomes zero, and the embedding never moves. This UNet's output depends on the embedding only
    through such a gradient; with loss scaling (GradScaler) the embedding moves."""
    import dataclasses
    from types import SimpleNamespace

    from egc_lite.sampling.analytic import gaussian_backbone

    class Faint(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float16))
            self.config = SimpleNamespace(block_out_channels=(1,))

        def forward(self, sample, timestep, encoder_hidden_states, **_):
            return SimpleNamespace(sample=sample * 0 + encoder_hidden_states[:, :1, :1, None] * 1e-8 + self.anchor)

    b = gaussian_backbone(std=0.5)
    b = dataclasses.replace(b, unet=Faint(), dtype=torch.float16, null_cond=b.null_cond.half())
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = InversionConfig(steps=5, lr=0.1, lmbda=0.0, batch=2, crop=None, step_size=0.01)
    res = invert_embedding(b, z0, cfg, EmbeddingPrior(torch.ones(4)))
    assert float(res.embedding[0, 0, 0].abs()) > 1e-3
