"""Codec A's embedding prior, fitted once per backbone on training photos (``egc train textinv-prior``).

The prior (:class:`~egc_lite.codecs.textual_inversion.EmbeddingPrior`) is a zero-mean Gaussian per embedding
channel for the quantized symbols :math:`(e - e_\\varnothing)/\\Delta`; its scales are measured here on embeddings
inverted without the rate term, and the command line writes them to the user's prior folder
(:func:`egc_lite.weights.prior_path`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..codecs.textual_inversion import EmbeddingPrior, InversionConfig, invert_embedding
from ..data import pad_to_multiple
from ..progress import progress


def fit_embedding_prior(backbone: Backbone, images: list[torch.Tensor], config: InversionConfig | None = None,
                        max_side: int = 384) -> EmbeddingPrior:
    """Fit the prior's per-channel scales on training images (never on the benchmark).

    Each image (3, H, W) is downscaled to at most ``max_side`` pixels, inverted without the rate
    term, and :math:`\\sigma_d` is the RMS of :math:`e - e_\\varnothing` over images and optimized
    tokens, per channel :math:`d`.
    """
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
        res = invert_embedding(backbone, z0.float(), replace(config, seed=k), EmbeddingPrior(torch.ones(backbone.cond_dim)))
        residuals.append((res.embedding[:, sl] - backbone.null_cond.float()[:, sl]).reshape(-1, backbone.cond_dim).cpu())
    r = torch.cat(residuals)
    return EmbeddingPrior(sigma=r.pow(2).mean(0).sqrt().clamp_min(1e-4), fitted=True, source="fitted")

