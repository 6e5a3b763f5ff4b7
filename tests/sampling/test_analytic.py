"""Sampler, classifier-free guidance, v-prediction and compression guidance against closed forms
(issue 11): Gaussian data has exact noise and v predictors (egc_lite.sampling.analytic)."""

from __future__ import annotations

import pytest
import torch

from egc_lite.sampling.analytic import gaussian_backbone
from egc_lite.sampling.ddim import SamplerConfig, alpha_bar, ddim_sample, output_to_epsilon, predict_z0, step_sigma, timesteps

N = 2048  # samples: the standard error of a mean is 1/sqrt(N * 16 values) ~ 0.006 s


def _cond(mean: float) -> torch.Tensor:
    return torch.full((1, 2, 4), mean)


def _expected(b, steps: int, mu: float, s: float, eta: float = 0.0) -> tuple[float, float]:
    """Mean and std of DDIM samples, in closed form. With the exact denoiser each step maps the centred latent
    c = z_t - sqrt(a) mu linearly and adds noise: c' = g c + sigma xi, g = (sqrt(a a') s^2 + sqrt((1-a)(1-a'-sigma^2))) / kappa_t,
    so the variance follows V' = g^2 V + sigma^2 (sigma = 0 for deterministic DDIM). The chain starts from N(0, 1), not
    from the true marginal at the first t (SD's schedule never reaches zero signal), so the mean falls short of mu
    by G sqrt(a_first) mu, G the product of the gains."""
    ts = timesteps(b, steps)
    gain, var = 1.0, 1.0
    for t, t_prev in zip(ts, ts[1:] + [-1]):
        a, ap = alpha_bar(b, t), alpha_bar(b, t_prev)
        sigma = step_sigma(a, ap, eta)
        g = ((a * ap) ** 0.5 * s**2 + ((1 - a) * (1 - ap - sigma**2)) ** 0.5) / (a * s**2 + 1 - a)
        gain, var = gain * g, g**2 * var + sigma**2
    a_first, a_last = alpha_bar(b, ts[0]), alpha_bar(b, -1)
    return a_last**0.5 * mu - gain * a_first**0.5 * mu, var**0.5


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ddim_samples_have_the_data_mean_and_variance(kind):
    """Fault 1: a v-prediction UNet treated as epsilon gives samples of the wrong statistics."""
    b = gaussian_backbone(std=0.5, prediction_type=kind)
    z = ddim_sample(b, _cond(0.7), (4, 4), SamplerConfig(steps=50, guidance_scale=1.0, seed=1), batch=N)
    mean, std = _expected(b, 50, 0.7, 0.5)
    assert abs(mean - 0.7) < 0.05 and abs(std - 0.5) < 0.03  # close to the data's statistics ...
    assert abs(float(z.mean()) - mean) < 0.01  # ... and exactly what the math gives (within sampling error)
    assert abs(float(z.std()) / std - 1) < 0.02


def test_v_to_epsilon_conversion_is_exact():
    eps_b, v_b = gaussian_backbone(0.5, prediction_type="epsilon"), gaussian_backbone(0.5, prediction_type="v_prediction")
    z = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 20])
    e = eps_b.unet(z, t, encoder_hidden_states=_cond(0.3).expand(3, -1, -1)).sample
    v = v_b.unet(z, t, encoder_hidden_states=_cond(0.3).expand(3, -1, -1)).sample
    assert not torch.allclose(e, v)
    assert torch.allclose(output_to_epsilon(v_b, v, z, t), e, atol=1e-5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("scale", [0.0, 2.0, 3.5])
def test_classifier_free_guidance_moves_the_mean_as_the_formula_says(kind, scale):
    """eps_u + s (eps_c - eps_u) is the exact denoiser of mean mu_u + s (mu_c - mu_u), same variance."""
    b = gaussian_backbone(std=0.4, null_mean=-0.2, prediction_type=kind)
    z = ddim_sample(b, _cond(0.6), (4, 4), SamplerConfig(steps=40, guidance_scale=scale, seed=2), batch=N)
    mean, std = _expected(b, 40, -0.2 + scale * (0.6 - -0.2), 0.4)
    assert abs(float(z.mean()) - mean) < 0.01
    assert abs(float(z.std()) / std - 1) < 0.02


def test_compression_guidance_step_has_the_documented_size_and_sign():
    """Fault 8 (docstring): the correction added to z_{t'} is -2 s_c (z0_hat - target) in the latent mode
    (k = 1), so the next clean estimate moves by that over sqrt(abar_{t'}) (11.7x at the first of 50 steps)."""
    from egc_lite.guide import degrade, upsample
    from egc_lite.sampling.ddim import StepState, unet_denoiser
    from egc_lite.sampling.guidance import CompressionGuidanceConfig, compression_guidance

    b = gaussian_backbone(std=0.5)
    size, factor = (64, 64), 8
    guide_small = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        target = degrade(b.encode(upsample(guide_small, size, factor=factor)).float(), 1)
    sc = 0.05
    hook = compression_guidance(b, guide_small, size, factor, CompressionGuidanceConfig(scale=sc, mode="latent"), 50,
                                unet_denoiser(b))
    ts = timesteps(b, 50)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    tt = torch.tensor([ts[0]])
    eps = unet_denoiser(b)(z, tt, b.null_cond)
    a_t, a_prev = alpha_bar(b, ts[0]), alpha_bar(b, ts[1])
    corr = hook(StepState(z, ts[0], 0, eps, a_t, a_prev, b.null_cond, b.null_cond, 1.0))
    z0 = predict_z0(z, eps, a_t)
    assert torch.allclose(corr, -2 * sc * (z0 - target), atol=1e-5)
    assert abs(1 / a_prev**0.5 - 11.72) < 0.01  # the clean-space step factor at the first of 50 steps
    # ... and the documentation says so (it claimed s_c was the clean-latent step at every t)
    import egc_lite.sampling.guidance

    assert "11.7 at the first of 50" in " ".join(egc_lite.sampling.guidance.__doc__.split())


def test_compression_guidance_pulls_samples_towards_the_target():
    """Over a whole run the guided samples end nearer the target than unguided ones, by the amount the
    per-step pull predicts: with s_c large they land on it."""
    from egc_lite.guide import degrade, upsample
    from egc_lite.sampling.ddim import unet_denoiser
    from egc_lite.sampling.guidance import CompressionGuidanceConfig, compression_guidance

    b = gaussian_backbone(std=0.5)
    size, factor = (32, 32), 8
    guide_small = torch.full((1, 3, 4, 4), 0.8)
    with torch.no_grad():
        target = degrade(b.encode(upsample(guide_small, size, factor=factor)).float(), 1)
    cfg = SamplerConfig(steps=30, guidance_scale=1.0, seed=5)
    plain = ddim_sample(b, _cond(0.0), (4, 4), cfg, batch=64)
    errs = []
    for sc in (0.05, 0.3):
        hook = compression_guidance(b, guide_small, size, factor, CompressionGuidanceConfig(scale=sc, mode="latent"), 30,
                                    unet_denoiser(b))
        z = ddim_sample(b, _cond(0.0), (4, 4), cfg, guidance=hook, batch=64)
        errs.append(float((z - target).pow(2).mean()))
    base = float((plain - target).pow(2).mean())
    assert errs[1] < errs[0] < base
    assert errs[1] < 0.05 * base


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_stochastic_samples_follow_the_closed_form(kind, eta):
    """eta = 1 (ancestral, DDPM-like) and eta = 0.5 samples have exactly the closed form's mean and variance: a wrong
    sigma, or noise added at the wrong scale, shows up as a wrong variance. At 50 steps the ancestral chain removes
    DDIM's shortfall of the mean but loses variance (std 0.454 for data of std 0.5: the step uses E[z0 | z_t], not a
    draw of z0); it reaches the data's variance as the steps grow (next test)."""
    b = gaussian_backbone(std=0.5, prediction_type=kind)
    z = ddim_sample(b, _cond(0.7), (4, 4), SamplerConfig(steps=50, guidance_scale=1.0, seed=3, eta=eta), batch=N)
    mean, std = _expected(b, 50, 0.7, 0.5, eta)
    assert abs(mean - 0.7) < 0.05 and abs(std - 0.5) < 0.05
    assert abs(float(z.mean()) - mean) < 0.01
    assert abs(float(z.std()) / std - 1) < 0.02
    ddim = ddim_sample(b, _cond(0.7), (4, 4), SamplerConfig(steps=50, guidance_scale=1.0, seed=3), batch=N)
    assert not torch.allclose(z, ddim)  # the same start, other paths


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ancestral_samples_have_the_data_mean_and_variance(kind):
    """With enough steps, eta = 1 samples have the data's mean and variance within sampling error."""
    b = gaussian_backbone(std=0.5, prediction_type=kind)
    z = ddim_sample(b, _cond(0.7), (4, 4), SamplerConfig(steps=500, guidance_scale=1.0, seed=4, eta=1.0), batch=N)
    mean, std = _expected(b, 500, 0.7, 0.5, 1.0)  # 500: SD's leading spacing starts at t = 999
    assert abs(mean - 0.7) < 0.005 and abs(std - 0.5) < 0.01  # the closed form is there ...
    assert abs(float(z.mean()) - 0.7) < 0.01 and abs(float(z.std()) - 0.5) < 0.015  # ... and so are the samples
