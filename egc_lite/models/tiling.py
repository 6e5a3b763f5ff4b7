"""Exact tiling of convolution-only networks for large photos (bounded memory, same output).

A network made of convolutions, pointwise functions (ReLU, GDN, tanh) and nearest upsampling has a
finite receptive field: an output pixel depends only on the inputs within a radius :math:`r` of it
(:func:`receptive_radius`, read off the layers). Running it on overlapping windows, each the *core*
it is responsible for plus a *halo* of at least :math:`r` on every side, and keeping each window's
core only, gives the whole-image output exactly (up to the order of float additions), while holding
the feature maps of one window at a time: the memory of a 12-megapixel photo becomes that of a
window. Window starts are aligned to the network's total stride so that every strided convolution
sees the same sampling grid as on the whole image.

Used for the autoencoder's full-resolution passes (``AutoencoderTiny``, TAESD's class: plain
convolutions and ReLUs) and codec B's analysis :math:`g_a` up to stride 8. Networks with a global
operation (GroupNorm in ``AutoencoderKL``, taef2's pooled blocks, attention) are not exact under
tiling: :func:`is_tileable` says no for them and they run on the whole image.

The window layout depends on the image size only (:data:`AUTOENCODER_TILING`), never on the machine,
so a file decodes the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..progress import progress

#: Layers that keep the receptive field as it is (pointwise, or containers).
_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.SiLU)


@dataclass(frozen=True)
class TilingConfig:
    """Windows of ``core`` input pixels (plus the halo); whole-image below ``min_side`` on both sides."""

    core: int = 768  # input pixels each window is responsible for, per side
    min_side: int = 1024  # an input whose sides are both at most this runs whole (no tiling)

    def wants_tiles(self, height: int, width: int) -> bool:
        return max(height, width) > self.min_side


#: Tiling of the autoencoder's and codec B's full-resolution passes (image pixels).
AUTOENCODER_TILING = TilingConfig()


def receptive_radius(module: nn.Module) -> tuple[float, float]:
    """``(radius, stride)`` of a sequential convolutional ``module``, in *input* pixels: an output pixel
    depends on inputs at most ``radius`` away from the position it maps to; ``stride`` is input pixels
    per output pixel (8 for an encoder to /8, 1/8 for a decoder from /8).

    Layers are read in registration order (``nn.Sequential`` and blocks whose convolutions run one
    after another, with identity or 1x1 skips); ``nn.Upsample`` divides the stride. A layer the
    function does not know raises ``TypeError`` rather than guessing.
    """
    radius, stride = 0.0, 1.0

    def walk(m: nn.Module) -> None:
        nonlocal radius, stride
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            k, d = m.kernel_size[0], m.dilation[0]
            if isinstance(m, nn.ConvTranspose2d):
                stride /= m.stride[0]
                radius += math.ceil(k / m.stride[0]) * stride
            else:
                radius += (k // 2) * d * stride
                stride *= m.stride[0]
        elif isinstance(m, nn.Upsample):
            factor = m.scale_factor[0] if isinstance(m.scale_factor, tuple) else m.scale_factor
            stride /= float(factor)
        elif type(m).__name__ == "GDN" or isinstance(m, _POINTWISE):
            return  # pointwise over space (GDN mixes channels at one position)
        elif any(True for _ in m.children()) and not any(True for _ in m.parameters(recurse=False)):
            for child in m.children():  # a container: its layers in order
                walk(child)
        else:
            raise TypeError(f"receptive_radius does not know the layer {type(m).__name__}")

    walk(module)
    return radius, stride


def is_tileable(module: nn.Module) -> bool:
    """Whether ``module`` is convolutions and pointwise layers only (exact under :func:`run_tiled`)."""
    try:
        receptive_radius(module)
    except TypeError:
        return False
    return True


def windows(size: int, core: int, align: int) -> Iterator[tuple[int, int]]:
    """Core intervals ``[a, b)`` covering ``0..size``: ``core`` long (rounded down to ``align``), the last shorter."""
    step = max(align, core // align * align)
    for a in range(0, size, step):
        yield a, min(a + step, size)


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, radius: float, scale: float,
              align: int, config: TilingConfig = AUTOENCODER_TILING, desc: str = "tiles") -> torch.Tensor:
    """``fn(x)`` computed window by window (module docstring).

    ``radius`` is ``fn``'s receptive radius in input pixels, ``scale`` output pixels per input pixel
    (1/8 for an encoder, 8 for a decoder), ``align`` the input grid window starts keep (the total
    downsampling of ``fn``, or 1). Below ``config.min_side`` it is ``fn(x)`` itself.
    """
    h, w = x.shape[-2:]
    if not config.wants_tiles(h, w):
        return fn(x)
    halo = math.ceil(radius / align) * align
    core = max(config.core, align)
    rows, cols = list(windows(h, core, align)), list(windows(w, core, align))
    out: torch.Tensor | None = None
    for (y0, y1), (x0, x1) in progress([(r, c) for r in rows for c in cols], desc=desc):
        a0, b0 = max(y0 - halo, 0), max(x0 - halo, 0)
        a1, b1 = min(y1 + halo, h), min(x1 + halo, w)
        part = fn(x[..., a0:a1, b0:b1])
        s = part.shape[-1] / (b1 - b0)  # output pixels per input pixel, as the network produced them
        if abs(s - scale) > 1e-9:
            raise ValueError(f"the tiled function scales by {s:g}, not {scale:g}: check its stride")
        core_part = part[..., round((y0 - a0) * s):round((y1 - a0) * s), round((x0 - b0) * s):round((x1 - b0) * s)]
        if out is None:
            out = part.new_empty((*part.shape[:-2], round(h * s), round(w * s)))
        out[..., round(y0 * s):round(y1 * s), round(x0 * s):round(x1 * s)] = core_part
    assert out is not None
    return out
