"""Codec A's embedding prior, fitted on a few images."""

from __future__ import annotations

import torch

from egc_lite.codecs.textual_inversion import InversionConfig
from egc_lite.training.textinv_prior import fit_embedding_prior


def test_fit_prior_gives_positive_scales_per_channel(tiny_backbone):
    g = torch.Generator().manual_seed(5)
    images = [torch.rand(3, 40, 56, generator=g) for _ in range(2)]
    prior = fit_embedding_prior(tiny_backbone, images, InversionConfig(steps=3, lr=0.1, lmbda=0.0))
    assert prior.fitted and prior.sigma.shape == (tiny_backbone.cond_dim,)
    assert (prior.sigma > 0).all()
