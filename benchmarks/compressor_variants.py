"""Cost of codec B's compressor variants: parameters per part and encode / decode time of one image.

For each variant of :class:`~egc_lite.models.diffeic.compressor.LatentCompressor` (``z0_modulation`` concat / sft,
``context`` none / checkerboard, with or without channel slices) at the shipped width (N=64, M=96):
the parameter counts (``encoder_only``: g_a and h_a, which the decoder never runs), and the minimum
over ``--runs`` of ``compress`` (analysis, hyper-analysis, both range coders, and the decode of its own
bytes) and ``decompress`` (both decoders and g_s) on a 768x512 image (Kodak 23 when ``EGC_DATA`` holds
it, else a smooth random image), on ``--threads`` CPU threads. The weights are random, scaled so that
``y`` spans several integers; the shipped rate point q3 is timed too, for scale. The backbone's VAE
is not run (``z0`` is random): its cost is the same for every variant. Nothing here is a test.

    python benchmarks/compressor_variants.py [--runs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from egc_lite.coding.entropy import update_tables
from egc_lite.evaluate.summary import print_table
from egc_lite.models.diffeic.compressor import LatentCompressor
from egc_lite.models.diffeic.config import DiffEICConfig
from egc_lite.models.diffeic.layers import HyperAnalysisSFT
from egc_lite.models.diffeic.model import load_compressor

VARIANTS = {
    "concat / none (shipped design)": DiffEICConfig(),
    "sft / none": DiffEICConfig(z0_modulation="sft"),
    "concat / checkerboard": DiffEICConfig(context="checkerboard"),
    "sft / checkerboard": DiffEICConfig(z0_modulation="sft", context="checkerboard"),
    "sft / checkerboard, slices 8,8,16,32,32": DiffEICConfig(z0_modulation="sft", context="checkerboard",
                                                             context_slices=(8, 8, 16, 32, 32)),
}


def image() -> tuple[torch.Tensor, str]:
    """Kodak 23 (768x512) when on disk, else a smooth random image of that size."""
    path = Path(os.environ.get("EGC_DATA", "")) / "kodak" / "kodim23.png"
    if os.environ.get("EGC_DATA") and path.is_file():
        from egc_lite.data import load_image

        return load_image(path)[None], "Kodak 23"
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 24, 36, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(512, 768), mode="bicubic").clamp(0, 1), "a smooth random image"


def spread(comp: LatentCompressor) -> LatentCompressor:
    """Scale the random analysis transforms' last layers so that y and w span several integers."""
    with torch.no_grad():
        (comp.g_a_sft.out if comp.g_a_sft is not None else comp.g_a2[-1]).weight.mul_(4)
        (comp.h_a.out if isinstance(comp.h_a, HyperAnalysisSFT) else comp.h_a[-1]).weight.mul_(4)
    update_tables(comp)
    return comp


def timed(comp: LatentCompressor, x: torch.Tensor, z0: torch.Tensor, runs: int) -> tuple[float, float, int]:
    """Minimum encode and decode seconds over ``runs`` (after one warm-up) and the file's payload bytes."""
    out = comp.compress(x, z0)
    enc, dec = [], []
    for _ in range(runs):
        t = time.perf_counter()
        out = comp.compress(x, z0)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        c = comp.decompress(out["strings"], out["shape"])
        dec.append(time.perf_counter() - t)
        assert torch.equal(c, out["c"])
    return min(enc), min(dec), sum(len(s) for s in out["strings"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, what = image()
    z0 = torch.randn(1, 4, x.shape[-2] // 8, x.shape[-1] // 8, generator=torch.Generator().manual_seed(1))
    print(f"{what}, {x.shape[-1]}x{x.shape[-2]}, {args.threads} thread(s), min of {args.runs} runs")
    rows = {name: spread(LatentCompressor.from_config(cfg).eval()) for name, cfg in VARIANTS.items()}
    shipped = Path(__file__).resolve().parents[1] / "egc_lite" / "weights" / "diffeic" / "q3"
    if (shipped / "config.json").is_file():
        rows["shipped q3 (trained weights)"] = load_compressor(shipped)

    def measured():
        for name, comp in rows.items():
            torch.manual_seed(0)
            n = comp.parameter_counts()
            enc, dec, size = timed(comp, x, z0, args.runs)
            yield [name, f"{n['total'] / 1e6:.2f}", f"{n['encoder_only'] / 1e6:.2f}", f"{n['context'] / 1e6:.2f}", f"{enc:.3f}",
                   f"{dec:.3f}", size]

    print_table(["variant", "params M", "enc-only M", "context M", "encode s", "decode s", "bytes"], measured())


if __name__ == "__main__":
    main()
