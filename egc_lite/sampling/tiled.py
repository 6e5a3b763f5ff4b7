"""Tiled denoising: the UNet run on overlapping windows of a large latent, blended into one noise prediction.

A photo's latent can be far larger than what the UNet saw in training, and self-attention costs grow with
the square of its tokens. :func:`tiled_denoiser` turns a denoiser of one window into a
:class:`~egc_lite.sampling.ddim.Denoiser` of the whole latent: each window of :func:`tile_windows` is denoised on
its own and the predictions are blended with weights that ramp smoothly (:math:`\\sin^2`) across each overlap and
are 1 inside a window and at the latent's borders,

.. math::
    \\hat\\epsilon(p) = \\frac{\\sum_i w_i(p)\\,\\hat\\epsilon_i(p)}{\\sum_i w_i(p)}.

The sum is formed as a running interpolation (``lerp`` by :math:`w_i / \\sum_{j\\le i} w_j`), so where the windows
agree (a pointwise denoiser) the blend returns their value exactly, and a point covered by one window takes its
prediction unchanged.

Determinism: the layout is a pure function of the latent size and :data:`DEFAULT_TILES` (never of the machine or
a memory budget), and the sampler's noise is drawn for the whole latent from the file's seed before any tiling
(:func:`~egc_lite.sampling.ddim.ddim_sample`), so each window reads its part of the same noise and a file decodes to
the same pixels wherever it is decoded. A latent that fits one tile (an image up to 1024 px a side with
:data:`DEFAULT_TILES`) runs the window denoiser once on the whole latent: exactly the untiled computation.

Codec B's control module reads the same window of its content variables: the window denoiser receives the window
``(y0, y1, x0, x1)`` in latent pixels (:func:`egc_lite.codecs.diffeic.steered_denoiser`).

Measured on egc-tiny v3 (CPU, one thread, shared machine, ``/work/scratch22`` scripts of issue 22):

* attention: diffusers' ``AttnProcessor2_0`` calls ``F.scaled_dot_product_attention``, which on a CPU runs the flash
  kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``, bf16 and float32 alike), so no tokens-squared map is
  formed: one untiled UNet call at a 504x376 latent (a 4000x3000 photo) adds 548 MiB to the peak (a map at half
  resolution would take 18 GB) and takes 171 s; with :data:`DEFAULT_TILES` (20 windows) it adds 94 MiB and takes 40 s,
  since attention's cost grows with the square of a window's tokens. Windows of 64 or 96 took 15-20% less time, of 160
  more; 128 is kept because photos up to 1024 px then decode untiled, exactly as before tiling existed, and a larger
  window sees more context (the tiled decode moves towards the untiled one as windows grow, below);
* seams: codec B, quality 3, on a 1024x768 training photo with windows forced to 64/16 (6 windows): tiled vs
  untiled 39.7 dB PSNR, 19.22 vs 19.20 dB against the photo; with 96/24 (2 windows) 49.3 dB; with
  :data:`DEFAULT_TILES` on a 1536x1024 training photo (2 windows) 44.9 dB, 18.88 dB against the photo either way. No
  seam by eye in the difference images (gain 4, window borders drawn) or in 2x crops at the window borders; the
  horizontal gradient at the windows' edges is the untiled decode's to 1%.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from ..backbone import Backbone
from ..errors import ParameterError
from ..progress import progress
from .ddim import Denoiser, unet_denoiser

#: A window of the latent in latent pixels: rows ``y0:y1``, columns ``x0:x1``.
Window = tuple[int, int, int, int]


class WindowDenoiser(Protocol):
    """Predicts the noise of one window ``z_t[..., y0:y1, x0:x1]`` (float32, the window's shape)."""

    def __call__(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, window: Window) -> torch.Tensor: ...


@dataclass(frozen=True)
class TileConfig:
    """The tile layout's parameters, in latent pixels. A latent side longer than ``tile`` is split into windows of
    at most ``tile`` that overlap their neighbours by at least ``overlap``."""

    tile: int = 128
    overlap: int = 32

    def validate(self, multiple: int = 1) -> None:
        """Raise :class:`ParameterError` unless the tile is a positive multiple of ``multiple`` and the overlap is in
        ``[0, tile / 2]``."""
        if self.tile < 1 or self.tile % multiple:
            raise ParameterError(f"tile must be a positive multiple of {multiple} latent pixels, got {self.tile}")
        if not 0 <= 2 * self.overlap <= self.tile:
            raise ParameterError(f"overlap must be in 0..tile/2 ({self.tile // 2}), got {self.overlap}")


#: The layout every decoder uses (files decode to the same pixels only when it does not change): 128 latent pixels
#: (1024 image pixels with a factor-8 autoencoder) with 32 of overlap.
DEFAULT_TILES = TileConfig()
_override: TileConfig | None = None


def current_tiles() -> TileConfig:
    """The layout in force: :data:`DEFAULT_TILES`, unless :func:`use_tiles` set another."""
    return _override if _override is not None else DEFAULT_TILES


@contextlib.contextmanager
def use_tiles(config: TileConfig) -> Iterator[TileConfig]:
    """Decode with another layout inside the ``with`` block (tests and measurements only: a file decodes to its
    reference pixels only under :data:`DEFAULT_TILES`)."""
    global _override
    before, _override = _override, config
    try:
        yield config
    finally:
        _override = before


def latent_multiple(backbone: Backbone) -> int:
    """The UNet's size multiple in latent pixels (its downsampling): windows start and end on it."""
    return max(1, backbone.size_multiple // backbone.vae_factor)


def _round_up(n: float, m: int) -> int:
    return int(math.ceil(n / m)) * m


def split_side(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Intervals ``[a, b)`` covering ``0..length``: one when ``length <= tile``, else the fewest windows of
    equal size (at most ``tile``, a multiple of ``multiple``) spread evenly, starting on multiples of ``multiple``, the
    last flush with the border, each overlapping the next by at least ``overlap``."""
    TileConfig(tile, overlap).validate(multiple)
    if length % multiple:
        raise ParameterError(f"a latent side of {length} is not a multiple of the UNet's {multiple}")
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    while True:  # the fewest windows, then the smallest size, whose rounded starts keep every overlap
        for size in range(_round_up((length + (n - 1) * overlap) / n, multiple), tile + 1, multiple):
            starts = [(i * (length - size) // (n - 1)) // multiple * multiple for i in range(n - 1)] + [length - size]
            if all(starts[i] + size - starts[i + 1] >= overlap for i in range(n - 1)):
                return [(a, a + size) for a in starts]
        n += 1


def tile_windows(h: int, w: int, tile: int = DEFAULT_TILES.tile, overlap: int = DEFAULT_TILES.overlap,
                 multiple: int = 1) -> list[Window]:
    """The windows ``(y0, y1, x0, x1)`` of an ``h`` x ``w`` latent, row by row (:func:`split_side` on each side)."""
    rows, cols = split_side(h, tile, overlap, multiple), split_side(w, tile, overlap, multiple)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def _ramp(n: int, rising: bool) -> torch.Tensor:
    """:math:`\\sin^2(\\frac{\\pi}{2}\\frac{k + 1/2}{n})` for ``k < n`` (reversed when falling): never 0 or 1, and a rising and
    a falling ramp of one length sum to 1 point by point."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    r = torch.sin(0.5 * math.pi * k / n) ** 2
    return r if rising else r.flip(0)


def _side_weights(intervals: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Each interval's 1-D weight: 1, ramping up across the overlap with the previous interval and down across the
    overlap with the next one (a border of the latent keeps weight 1)."""
    out = []
    for i, (a, b) in enumerate(intervals):
        wgt = torch.ones(b - a, dtype=torch.float64)
        if i > 0 and intervals[i - 1][1] > a:
            n = intervals[i - 1][1] - a
            wgt[:n] *= _ramp(n, rising=True)
        if i + 1 < len(intervals) and intervals[i + 1][0] < b:
            n = b - intervals[i + 1][0]
            wgt[b - a - n:] *= _ramp(n, rising=False)
        out.append(wgt)
    return out


def window_weights(windows: list[Window]) -> list[torch.Tensor]:
    """The blending weight of each window, shape ``(y1 - y0, x1 - x0)`` float32, all positive: the product of its rows'
    and its columns' 1-D ramps (:func:`_side_weights`). Where windows overlap the weights of a row of windows sum to 1
    (complementary ramps); the blend divides by the sum anyway (:func:`tiled_denoiser`)."""
    rows = sorted({(y0, y1) for y0, y1, _, _ in windows})
    cols = sorted({(x0, x1) for _, _, x0, x1 in windows})
    ry = dict(zip(rows, _side_weights(rows)))
    rx = dict(zip(cols, _side_weights(cols)))
    return [(ry[(y0, y1)][:, None] * rx[(x0, x1)][None, :]).float() for y0, y1, x0, x1 in windows]


def blend_weights(h: int, w: int, windows: list[Window]) -> list[torch.Tensor]:
    """Each window's share of the blend, placed in the ``h`` x ``w`` latent (zero outside the window): they sum to 1
    at every point the windows cover (for figures and checks; the sampler blends window by window)."""
    total = torch.zeros(h, w, dtype=torch.float64)
    placed = []
    for (y0, y1, x0, x1), wgt in zip(windows, window_weights(windows)):
        full = torch.zeros(h, w, dtype=torch.float64)
        full[y0:y1, x0:x1] = wgt.double()
        total += full
        placed.append(full)
    return [(p / total.clamp_min(1e-30)).float() for p in placed]


def needs_tiling(h: int, w: int, config: TileConfig | None = None) -> bool:
    """Whether an ``h`` x ``w`` latent is split (a side longer than the tile)."""
    config = config or current_tiles()
    return max(h, w) > config.tile


def tiled_denoiser(denoise_window: WindowDenoiser, multiple: int = 1, config: TileConfig | None = None) -> Denoiser:
    """A whole-latent :class:`~egc_lite.sampling.ddim.Denoiser` from a window denoiser (module docstring); ``multiple``
    is the UNet's size multiple in latent pixels (:func:`latent_multiple`), ``config`` the layout (default
    :func:`current_tiles` when this is called). A latent within one tile is passed whole, window ``(0, h, 0, w)``."""
    config = config or current_tiles()
    config.validate(multiple)
    cache: dict[tuple[int, int], tuple[list[Window], list[torch.Tensor]]] = {}

    def denoise(z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h, w = (int(n) for n in z_t.shape[-2:])
        if not needs_tiling(h, w, config):
            return denoise_window(z_t, t, cond, (0, h, 0, w))
        if (h, w) not in cache:
            windows = tile_windows(h, w, config.tile, config.overlap, multiple)
            cache[(h, w)] = windows, window_weights(windows)
        windows, weights = cache[(h, w)]
        out: torch.Tensor | None = None
        total = torch.zeros(h, w, dtype=torch.float32, device=z_t.device)
        for (y0, y1, x0, x1), wgt in progress(list(zip(windows, weights)), desc="tiles"):
            eps = denoise_window(z_t[..., y0:y1, x0:x1].contiguous(), t, cond, (y0, y1, x0, x1)).float()
            if out is None:
                out = torch.zeros(*eps.shape[:-2], h, w, dtype=torch.float32, device=eps.device)
            wgt = wgt.to(eps.device)
            seen = total[y0:y1, x0:x1] + wgt
            total[y0:y1, x0:x1] = seen
            # running weighted mean: exact where the windows agree, and a lone window's prediction unchanged
            out[..., y0:y1, x0:x1] = torch.lerp(out[..., y0:y1, x0:x1], eps, wgt / seen)
        return out

    return denoise


def tiled_unet_denoiser(backbone: Backbone, config: TileConfig | None = None) -> Denoiser:
    """The backbone's UNet (:func:`~egc_lite.sampling.ddim.unet_denoiser`) run window by window (:func:`tiled_denoiser`)."""
    plain = unet_denoiser(backbone)
    return tiled_denoiser(lambda z_t, t, cond, window: plain(z_t, t, cond), latent_multiple(backbone), config)
