"""Plots of evaluation and sweep tables (matplotlib figures; the ``save_*`` functions write PNGs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .summary import summary_frame

#: Metric -> (axis label, larger is better).
METRICS = {"psnr": ("PSNR (dB)", True), "ms_ssim": ("MS-SSIM", True), "lf_psnr": ("LF-PSNR, 8x8 means (dB)", True),
           "sharpness": ("sharpness (1 = as sharp as the original)", None), "lpips": ("LPIPS", False),
           "dists": ("DISTS", False)}


def available_metrics(summary: pd.DataFrame) -> list[str]:
    """The metrics of :data:`METRICS` that hold at least one number in ``summary``."""
    return [m for m in METRICS if m in summary.columns and pd.to_numeric(summary[m], errors="coerce").notna().any()]


def plot_rd(rows: Sequence[dict], metrics: Sequence[str] | None = None, title: str = ""):
    """Rate-distortion curves: mean metric against mean bpp, one line per codec over its settings."""
    import matplotlib.pyplot as plt

    s = summary_frame(rows)
    metrics = [m for m in (metrics or available_metrics(s)) if m in available_metrics(s)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.6 * max(1, len(metrics)), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for codec, g in s.groupby("codec", sort=False):
            g = g.sort_values("bpp")
            ax.plot(g["bpp"], g[m], marker="o", label=codec)
        ax.set_xlabel("bits per pixel (from the file)")
        ax.set_ylabel(METRICS[m][0])
        ax.grid(alpha=0.3)
    if metrics:
        axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def perception_distortion_points(rows: Sequence[dict], distribution: dict | None = None) -> tuple[pd.DataFrame, str]:
    """Per (codec, setting): distortion (mean MSE) and a perception measure; returns the frame and the measure's name.

    The measure is FID where it was computed (``distribution``), else the **sharpness gap**
    :math:`|1 - \\text{sharpness}|`, a crude no-weights stand-in: how far the decodings' gradient
    statistics are from the originals'.
    """
    s = summary_frame(rows)
    df = pd.DataFrame([r for r in rows if r.get("status") == "ok"])
    if df.empty:
        return s.assign(mse=[], perception=[]), "none"
    df["mse"] = 10 ** (-pd.to_numeric(df["psnr"]) / 10)
    s = s.merge(df.groupby(["codec", "setting"], sort=False)["mse"].mean().reset_index(), on=["codec", "setting"])
    fid = {k: v.get("fid") for k, v in (distribution or {}).items()}
    if fid and all(isinstance(fid.get(f"{c} | {st}"), float) for c, st in zip(s["codec"], s["setting"])):
        s["perception"] = [fid[f"{c} | {st}"] for c, st in zip(s["codec"], s["setting"])]
        return s, "FID (HiFiC patches)"
    s["perception"] = (1 - s["sharpness"]).abs()
    return s, "sharpness gap |1 - sharpness|"


def plot_perception_distortion(rows: Sequence[dict], distribution: dict | None = None, title: str = ""):
    """Each (codec, setting) as a point in the distortion-perception plane (lower-left is better on both)."""
    import matplotlib.pyplot as plt

    s, name = perception_distortion_points(rows, distribution)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    for codec, g in s.groupby("codec", sort=False):
        ax.scatter(g["mse"], g["perception"], label=codec)
        for _, r in g.iterrows():
            ax.annotate(f"{r['bpp']:.3f}", (r["mse"], r["perception"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("distortion: mean MSE")
    ax.set_ylabel(f"perception: {name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "perception-distortion (labels: bpp)", fontsize=10)
    fig.tight_layout()
    return fig


def save_eval_figures(rows: Sequence[dict], folder: Path, distribution: dict | None = None) -> list[Path]:
    """``rd.png`` and ``perception_distortion.png`` in ``folder`` (nothing when no row succeeded)."""
    import matplotlib.pyplot as plt

    if not any(r.get("status") == "ok" for r in rows):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in (("rd", plot_rd(rows)), ("perception_distortion", plot_perception_distortion(rows, distribution))):
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------- sweeps


def plot_grid(table: pd.DataFrame, metrics: Sequence[str], x: str, y: str | None = None, title: str = ""):
    """Heatmaps of each metric over two swept parameters (``x`` columns, ``y`` rows), or lines over one."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        if y is None:
            g = table.groupby(x)[m].mean().sort_index()
            ax.plot(g.index, g.values, marker="o")
            ax.set_xlabel(x)
            ax.set_ylabel(m)
            ax.grid(alpha=0.3)
        else:
            pivot = table.pivot_table(index=y, columns=x, values=m, aggfunc="mean").sort_index().sort_index(axis=1)
            v = pivot.to_numpy(dtype=float)
            im = ax.imshow(v, origin="lower", cmap="viridis", aspect="auto")
            ax.set_xticks(range(v.shape[1]), [f"{c:g}" if isinstance(c, (int, float)) else str(c) for c in pivot.columns])
            ax.set_yticks(range(v.shape[0]), [f"{c:g}" if isinstance(c, (int, float)) else str(c) for c in pivot.index])
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            for i in range(v.shape[0]):
                for j in range(v.shape[1]):
                    if np.isfinite(v[i, j]):
                        ax.text(j, i, f"{v[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(m)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- gallery


def matched_rows(rows: Sequence[dict], image: str, target_bpp: float) -> list[dict]:
    """For each codec, the successful row of ``image`` whose rate is closest to ``target_bpp``."""
    best: dict[str, dict] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("image") == image:
            cur = best.get(r["codec"])
            if cur is None or abs(r["bpp"] - target_bpp) < abs(cur["bpp"] - target_bpp):
                best[r["codec"]] = r
    return list(best.values())


def plot_gallery(original, decodings: Sequence[tuple[str, object]], box: tuple[int, int, int] | None = None, title: str = ""):
    """The original and each ``(label, image)`` decoding side by side, cropped to ``box = (top, left, size)``."""
    import matplotlib.pyplot as plt

    from ..data import tensor_to_pil

    panels = [("original", original), *decodings]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (label, img) in zip(axes[0], panels):
        if box is not None:
            top, left, size = box
            img = img[:, top:top + size, left:left + size]
        ax.imshow(tensor_to_pil(img), interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
