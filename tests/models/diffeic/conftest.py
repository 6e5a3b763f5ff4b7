"""What the tests of codec B's networks share: a tiny configuration, its variants, seeded models and a batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from egc_lite.coding.entropy import update_tables
from egc_lite.models.diffeic.compressor import LatentCompressor
from egc_lite.models.diffeic.config import DiffEICConfig
from egc_lite.models.diffeic.layers import HyperAnalysisSFT
from egc_lite.models.diffeic.model import DiffEICModel

TINY = DiffEICConfig(N=16, M=24)
#: The compressor variants beside the shipped design (concat + no context, the ``model`` fixture).
VARIANTS = {
    "sft": replace(TINY, z0_modulation="sft", sft_channels=8),
    "checkerboard": replace(TINY, context="checkerboard"),
    "sft+slices": replace(TINY, z0_modulation="sft", sft_channels=8, context="checkerboard", context_slices=(4, 4, 8, 8)),
}
SHIPPED = Path(__file__).resolve().parents[3] / "egc_lite" / "weights" / "diffeic"
#: config.json of the first egc-tiny rate point q1, written before the appended DiffEICConfig fields existed
#: (the rate points trained on other backbones then, in users' caches, look the same).
LEGACY_CONFIG = Path(__file__).parents[2] / "data" / "diffeic_legacy_config.json"


def _spread(comp: LatentCompressor) -> None:
    """Scale the last layers of the random analysis transforms so that y and the hyper-latent span
    several integers (a fresh model's values all round to zero, which would make coding tests trivial)."""
    with torch.no_grad():
        (comp.g_a_sft.out if comp.g_a_sft is not None else comp.g_a2[-1]).weight.mul_(60)
        (comp.h_a.out if isinstance(comp.h_a, HyperAnalysisSFT) else comp.h_a[-1]).weight.mul_(40)


@pytest.fixture(scope="module")
def model(tiny_backbone):
    m = DiffEICModel.for_backbone(TINY, tiny_backbone, seed=0).eval()
    with torch.no_grad():  # spread y and the hyper-latent over several integers (fresh values all round to 0)
        m.compressor.g_a2[-1].weight.mul_(60)
        m.compressor.h_a[-1].weight.mul_(40)
    update_tables(m.compressor)
    return m


@pytest.fixture(scope="module")
def batch(tiny_backbone, smooth_image):
    x = smooth_image(64, 128, grid=(8, 16), seed=2, batch=2)
    with torch.no_grad():
        return x, tiny_backbone.encode(x)


@pytest.fixture(scope="module")
def variants(tiny_backbone):
    out = {}
    for name, cfg in VARIANTS.items():
        m = DiffEICModel.for_backbone(cfg, tiny_backbone, seed=1).eval()
        _spread(m.compressor)
        update_tables(m.compressor)
        out[name] = m
    return out
