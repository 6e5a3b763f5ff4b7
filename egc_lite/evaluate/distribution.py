"""Distribution metrics at the HiFiC protocol (Mentzer et al., 2020): FID and KID on patches.

A set of reconstructions is compared with the set of originals, not image by image. Each image
gives its non-overlapping ``p x p`` patches (p = 256), and a second pass gives those of the image
shifted by ``p / 2`` in both directions, so that patch borders fall elsewhere. Every patch goes
through the FID Inception network (2048 pooled features); FID is the Fréchet distance between the
two Gaussian fits, KID the unbiased squared MMD with the kernel :math:`(a \\cdot b / d + 1)^3`.

The Inception weights are pyiqa's FID file (``metric_availability("fid")`` tells whether it is on
disk); without it, :func:`distribution_metrics` returns the reason, never a number. With few images
(Kodak gives 8 patches per image, 192 in all) FID is biased upwards; KID is not, which is why both
are reported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ParameterError
from ..metrics import metric_availability

PATCH = 256


def hific_patches(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """The patches of one image ``(3, H, W)``: the ``patch``-grid, then the grid shifted by half a patch."""
    if x.dim() != 3:
        raise ParameterError(f"expected one image (3, H, W), got shape {tuple(x.shape)}")
    out = []
    for off in (0, patch // 2):
        h, w = x.shape[1] - off, x.shape[2] - off
        for i in range(h // patch):
            for j in range(w // patch):
                out.append(x[:, off + i * patch: off + (i + 1) * patch, off + j * patch: off + (j + 1) * patch])
    if not out:
        raise ParameterError(f"an image of {x.shape[2]}x{x.shape[1]} holds no {patch}x{patch} patch")
    return torch.stack(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets ``(N, d)``: :math:`|\\mu_a-\\mu_b|^2 + \\mathrm{tr}(\\Sigma_a+\\Sigma_b-2(\\Sigma_a\\Sigma_b)^{1/2})`."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as pytorch-fid does
        eps = 1e-6 * np.eye(sa.shape[0])
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> float:
    """KID: unbiased squared MMD with the cubic polynomial kernel, averaged over random subsets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b), subset_size)
    if n < 2:
        raise ParameterError("KID needs at least two feature vectors per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(subsets):
        x = a[rng.choice(len(a), n, replace=False)]
        y = b[rng.choice(len(b), n, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        total += ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()
    return float(total / subsets)


def _inception(device: torch.device):
    from pyiqa.archs.inception import InceptionV3

    return InceptionV3(output_blocks=(3,), resize_input=True, normalize_input=True).to(device).eval()


@torch.no_grad()
def inception_features(images: Sequence[torch.Tensor], model, device: torch.device, batch: int = 16) -> np.ndarray:
    """Pooled Inception features ``(N, 2048)`` of every HiFiC patch of ``images``."""
    patches = torch.cat([hific_patches(x) for x in images])
    feats = [model(patches[i:i + batch].to(device).float())[0].flatten(1).cpu() for i in range(0, len(patches), batch)]
    return torch.cat(feats).numpy()


def distribution_metrics(originals: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor],
                         device: str | torch.device = "cpu") -> dict[str, float | str]:
    """``{"fid": ..., "kid": ..., "patches": n}`` of ``reconstructions`` against ``originals``, or
    ``{"fid": "unavailable", "kid": "unavailable", "reason": ...}`` when the Inception weights are missing."""
    av = metric_availability("fid")
    if not av.available:
        return {"fid": "unavailable", "kid": "unavailable", "reason": av.reason}
    if len(originals) != len(reconstructions) or not originals:
        raise ParameterError("FID/KID need the same, non-zero number of originals and reconstructions")
    dev = torch.device(device)
    model = _inception(dev)
    fa, fb = inception_features(originals, model, dev), inception_features(reconstructions, model, dev)
    return {"fid": frechet_distance(fa, fb), "kid": kernel_inception_distance(fa, fb), "patches": int(len(fa))}
