"""Sweeps over codec A's decoding scales :math:`(s_c, s_f)` and the interactive panel.

:func:`guidance_sweep` is a pure function: one bitstream, one original, a grid of compression
guidance scales :math:`s_c` and classifier-free guidance scales :math:`s_f`, and a table of
metrics for every cell (the paper's Figure 3 heatmaps). :func:`plot_heatmaps` draws it.
:class:`GuidancePanel` wires two ipywidgets sliders to :meth:`GuidancePanel.render`, which a
test can call without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from ..coding.bitstream import Bitstream
from ..data import png_bytes
from ..metrics import compute_metrics, metric_notes
from ..progress import progress


@dataclass
class SweepResult:
    """Metrics over the grid: ``values[name][i, j]`` for ``sc_values[i]``, ``sf_values[j]``."""

    sc_values: list[float]
    sf_values: list[float]
    values: dict[str, np.ndarray]
    unavailable: dict[str, str] = field(default_factory=dict)

    def best(self, name: str = "psnr", higher_is_better: bool = True) -> tuple[float, float, float]:
        """``(s_c, s_f, value)`` of the best cell for a metric."""
        v = self.values[name]
        idx = np.nanargmax(v) if higher_is_better else np.nanargmin(v)
        i, j = np.unravel_index(idx, v.shape)
        return self.sc_values[i], self.sf_values[j], float(v[i, j])


def decode_with_scales(codec, bs: Bitstream, sc: float, sf: float, sample: int = 0) -> torch.Tensor:
    """Decode ``bs`` with codec A, overriding the file's :math:`s_c` and :math:`s_f`."""
    cfg, *_ = codec.decode_parameters(bs)
    return codec.decompress(bs, sample=sample, guidance=replace(cfg.guidance, scale=float(sc)), guidance_scale=float(sf))


def guidance_sweep(codec, bs: Bitstream, original: torch.Tensor, sc_values: Sequence[float], sf_values: Sequence[float],
                   metrics: Sequence[str] = ("psnr", "ms_ssim", "lpips", "dists")) -> SweepResult:
    """Decode ``bs`` at every :math:`(s_c, s_f)` and score against ``original`` (3, H, W)."""
    notes = metric_notes(metrics)
    names = [m for m in metrics if m not in notes]
    values = {m: np.full((len(sc_values), len(sf_values)), np.nan) for m in names}
    cells = [(i, j) for i in range(len(sc_values)) for j in range(len(sf_values))]
    for i, j in progress(cells, desc="sweep"):
        y = decode_with_scales(codec, bs, sc_values[i], sf_values[j])
        y8 = torch.round(y * 255) / 255
        scores = compute_metrics(original, y8, names)
        for m in names:
            values[m][i, j] = scores[m]
    return SweepResult(list(map(float, sc_values)), list(map(float, sf_values)), values, notes)


def plot_heatmaps(result: SweepResult, title: str = ""):
    """One heatmap per metric over :math:`(s_c, s_f)`, values written in the cells."""
    import matplotlib.pyplot as plt

    names = list(result.values)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        v = result.values[name]
        im = ax.imshow(v, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(result.sf_values)), [f"{s:g}" for s in result.sf_values])
        ax.set_yticks(range(len(result.sc_values)), [f"{s:g}" for s in result.sc_values])
        ax.set_xlabel("$s_f$ (classifier-free guidance)")
        ax.set_ylabel("$s_c$ (compression guidance)")
        ax.set_title(name)
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                ax.text(j, i, f"{v[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if result.unavailable:
        fig.text(0.01, 0.01, "; ".join(f"{k}: {v}" for k, v in result.unavailable.items())[:200], fontsize=6)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


#: Slider range ``(min, max, step)`` of :math:`s_c` per guidance mode: a little past each mode's useful
#: range (about 0.05-0.4 for "latent", 0.3-1 for "fast" and "full"; see egc_lite.sampling.guidance).
SC_RANGES = {"latent": (0.0, 0.6, 0.01), "fast": (0.0, 2.0, 0.05), "full": (0.0, 2.0, 0.05)}
SF_RANGE = (0.0, 8.0, 0.5)


class GuidancePanel:
    """Two sliders (:math:`s_c`, :math:`s_f`) that redraw codec A's reconstruction of one file.

    The :math:`s_c` slider spans :data:`SC_RANGES` of the file's guidance mode unless ``sc_range`` is given.
    """

    def __init__(self, codec, bs: Bitstream, original: torch.Tensor, sc_range: tuple[float, float, float] | None = None,
                 sf_range: tuple[float, float, float] = SF_RANGE) -> None:
        self.codec, self.bs, self.original = codec, bs, original
        if sc_range is None:
            cfg, *_ = codec.decode_parameters(bs)
            sc_range = SC_RANGES[cfg.guidance.mode]
        self.sc_range, self.sf_range = sc_range, sf_range
        self.last: dict | None = None

    def render(self, sc: float, sf: float) -> dict:
        """Decode at ``(sc, sf)``; returns the image and its metrics (what the panel shows)."""
        y = decode_with_scales(self.codec, self.bs, sc, sf)
        y8 = torch.round(y * 255) / 255
        self.last = {"sc": float(sc), "sf": float(sf), "image": y8, **compute_metrics(self.original, y8, ("psnr", "ms_ssim"))}
        return self.last

    def widget(self):
        """The ipywidgets panel (sliders + image + metrics line)."""

        import ipywidgets as W


        cfg, *_ = self.codec.decode_parameters(self.bs)
        sc = W.FloatSlider(value=cfg.guidance.scale, min=self.sc_range[0], max=self.sc_range[1], step=self.sc_range[2],
                           description="s_c", continuous_update=False)
        sf = W.FloatSlider(value=cfg.sampler.guidance_scale, min=self.sf_range[0], max=self.sf_range[1], step=self.sf_range[2],
                           description="s_f", continuous_update=False)
        image = W.Image(format="png")
        label = W.Label()

        def redraw(_=None):
            out = self.render(sc.value, sf.value)
            image.value = png_bytes(out["image"])
            label.value = f"s_c={out['sc']:g}  s_f={out['sf']:g}  PSNR {out['psnr']:.2f} dB  MS-SSIM {out['ms_ssim']:.4f}"

        sc.observe(redraw, names="value")
        sf.observe(redraw, names="value")
        redraw()
        return W.VBox([W.HBox([sc, sf]), label, image])
