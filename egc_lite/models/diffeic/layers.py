"""The building blocks of codec B's compressor (:mod:`.compressor`): the strided convolutions of the
transforms, spatial feature transforms (SFT) that let the VAE latent modulate the analysis, and the
checkerboard context model of ``y``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


def _deconv(cin: int, cout: int, k: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=k // 2, output_padding=stride - 1)


def _fit(f: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """``f`` at spatial ``size``: average-pooled when larger, bilinearly upsampled when smaller."""
    size = tuple(size)
    if tuple(f.shape[-2:]) == size:
        return f
    if f.shape[-2] >= size[0] and f.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(f, size)
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


def _feature(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """A condition branch: 3x3 convolution (``stride``), GELU, 1x1 convolution."""
    return nn.Sequential(_conv(cin, cout, 3, stride), nn.GELU(), _conv(cout, cout, 1, 1))


class SFT(nn.Module):
    """Spatial feature transform (Wang et al. 2018, "Recovering Realistic Texture in Image
    Super-resolution by Deep Spatial Feature Transform", eq. 2): :math:`x \\odot (1 + \\gamma(f)) + \\beta(f)`,
    a per-pixel, per-channel scale and shift computed from a condition map ``f`` (resized to ``x``)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.shared = nn.Sequential(_conv(cond_channels, hidden, 3, 1), nn.LeakyReLU(0.2))
        self.gamma = _conv(hidden, channels, 3, 1)
        self.beta = _conv(hidden, channels, 3, 1)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.shared(_fit(f.to(x.dtype), x.shape[-2:]))
        return x * (1 + self.gamma(h)) + self.beta(h)


class SFTResBlock(nn.Module):
    """Residual block whose two 3x3 convolutions are each preceded by an :class:`SFT` and a leaky ReLU."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.sft0, self.sft1 = SFT(channels, cond_channels, hidden), SFT(channels, cond_channels, hidden)
        self.conv0, self.conv1 = _conv(channels, channels, 3, 1), _conv(channels, channels, 3, 1)

    def forward(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.leaky_relu(self.sft0(x, f), 0.2))
        return x + self.conv1(F.leaky_relu(self.sft1(h, f), 0.2))


class AnalysisSFT(nn.Module):
    """The z0-modulated part of :math:`g_a` (DiffEIC's encoder, encoder side only).

    ``before(h, z0)`` modulates g_a's stride-8 features by an SFT whose condition ``f8`` comes from
    :math:`z_0`; ``after(y, f8)`` modulates the stride-16 output by a stride-2 condition ``f16``
    (an SFT, an SFT residual block) and ends with a 3x3 convolution.
    """

    def __init__(self, N: int, M: int, latent_channels: int, P: int) -> None:
        super().__init__()
        self.feat8, self.sft8 = _feature(latent_channels, P), SFT(N, P, P)
        self.feat16, self.sft16 = _feature(P, P, 2), SFT(M, P, P)
        self.res = SFTResBlock(M, P, P)
        self.out = _conv(M, M, 3, 1)

    def before(self, h: torch.Tensor, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = _fit(self.feat8(z0.to(h.dtype)), h.shape[-2:])
        return self.sft8(h, f8), f8

    def after(self, y: torch.Tensor, f8: torch.Tensor) -> torch.Tensor:
        f16 = _fit(self.feat16(f8), y.shape[-2:])
        return self.out(self.res(self.sft16(y, f16), f16))


class HyperAnalysisSFT(nn.Module):
    """:math:`w = h_a(y, z_0)`, DiffEIC's latent-modulated hyper-analysis (stride 4 from ``y``).

    The condition starts from :math:`z_0`'s features pooled to ``y``'s grid and fused with ``y``; each
    of the three stages (stride 1, 2, 2) is a convolution followed by an :class:`SFT` under the
    condition brought to its resolution; a 3x3 convolution ends it.
    """

    def __init__(self, M: int, N: int, latent_channels: int, P: int) -> None:
        super().__init__()
        self.feat = _feature(latent_channels, P)
        self.fuse = nn.Sequential(_conv(M + P, P, 3, 1), nn.GELU(), _conv(P, P, 3, 1))
        self.convs = nn.ModuleList([_conv(M, N, 3, 1), _conv(N, N), _conv(N, N)])
        self.downs = nn.ModuleList([_feature(P, P, 2), _feature(P, P, 2)])
        self.sfts = nn.ModuleList(SFT(N, P, P) for _ in range(3))
        self.out = _conv(N, N, 3, 1)

    def forward(self, y: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        f = self.fuse(torch.cat([y, _fit(self.feat(z0.to(y.dtype)), y.shape[-2:])], dim=1))
        h = y
        for i, (conv, sft) in enumerate(zip(self.convs, self.sfts)):
            if i:
                f = self.downs[i - 1](f)
                h = F.leaky_relu(h)
            h = sft(conv(h), f)
        return self.out(h)


def _entropy_parameters(cin: int, cout: int) -> nn.Sequential:
    """1x1 convolutions from context + hyper features to (scales, means) (Minnen et al. 2018, fig. 4)."""
    a, b = cout * 5 // 3, cout * 4 // 3
    return nn.Sequential(_conv(cin, a, 1, 1), nn.GELU(), _conv(a, b, 1, 1), nn.GELU(), _conv(b, cout, 1, 1))


def checkerboard(h: int, w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The anchor mask of a ``h x w`` grid: True where ``i + j`` is even (He et al. 2021, fig. 3)."""
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return (i + j) % 2 == 0


class CheckerboardContext(nn.Module):
    """Checkerboard context (He et al. 2021, "Checkerboard Context Model for Efficient Learned Image
    Compression"), optionally over channel slices (He et al. 2022, ELIC).

    ``y``'s channels are split into ``slices`` (one slice of ``M`` = plain checkerboard). Slice ``k``
    is coded in two passes: the anchors (``i + j`` even) with parameters from the hyper features
    :math:`\\psi = h_s(\\hat w)` and the channel context :math:`g_{ch}(\\hat y_{<k})`, then the
    non-anchors with, in addition, the spatial context :math:`g_{sp}(\\hat y_k^{anchor})` (a 5x5
    convolution of the decoded anchors, zero elsewhere; He et al. eq. 6-7):

    .. math::
        (\\sigma, \\mu)_k^{a} = e^a_k(\\psi, g_{ch}(\\hat y_{<k})),\\qquad
        (\\sigma, \\mu)_k^{n} = e^n_k(\\psi, g_{ch}(\\hat y_{<k}), g_{sp}(\\hat y_k^{a})).
    """

    def __init__(self, M: int, slices: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.slices = tuple(slices) or (M,)
        self.spatial = nn.ModuleList(_conv(s, 2 * s, 5, 1) for s in self.slices)
        self.channel = nn.ModuleList(
            nn.Sequential(_conv(sum(self.slices[:k]), 2 * s, 5, 1), nn.GELU(), _conv(2 * s, 2 * s, 5, 1))
            for k, s in enumerate(self.slices) if k
        )
        self.anchor = nn.ModuleList(_entropy_parameters(2 * M + (2 * s if k else 0), 2 * s) for k, s in enumerate(self.slices))
        self.nonanchor = nn.ModuleList(_entropy_parameters(2 * M + (4 * s if k else 2 * s), 2 * s) for k, s in enumerate(self.slices))

    def run(self, psi: torch.Tensor, code) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The passes in coding order; returns :math:`(\\hat y, \\sigma, \\mu)` over all channels.

        ``code(lo, hi, mask, scales, means)`` quantises channels ``lo:hi`` at the positions of the
        boolean ``mask`` (H, W) under the given parameters (of shape (B, hi - lo, H, W)) and returns
        those values with zeros elsewhere: a straight-through rounding when training, the range coder's
        encoder or decoder when coding.
        """
        anchors = checkerboard(*psi.shape[-2:], device=psi.device)
        done: list[torch.Tensor] = []
        scales: list[torch.Tensor] = []
        means: list[torch.Tensor] = []
        lo = 0
        for k, s in enumerate(self.slices):
            extra = [self.channel[k - 1](torch.cat(done, dim=1))] if k else []
            s_a, m_a = self.anchor[k](torch.cat([psi, *extra], dim=1)).chunk(2, dim=1)
            y_a = code(lo, lo + s, anchors, s_a, m_a)
            s_n, m_n = self.nonanchor[k](torch.cat([psi, *extra, self.spatial[k](y_a)], dim=1)).chunk(2, dim=1)
            y_n = code(lo, lo + s, ~anchors, s_n, m_n)
            done.append(y_a + y_n)
            scales.append(torch.where(anchors, s_a, s_n))
            means.append(torch.where(anchors, m_a, m_n))
            lo += s
        return torch.cat(done, dim=1), torch.cat(scales, dim=1), torch.cat(means, dim=1)
