"""Classic codecs and the guide codec on Kodak at extreme rates.

For every Kodak image and each target rate (default 0.05 and 0.1 bpp) this runs

* JPEG, WebP and AVIF (Pillow) at the highest quality whose file fits the target
  (:func:`egc_lite.baselines.compress_at_bpp`), and
* the guide codec (:mod:`egc_lite.guide`: block-average downsampling by 4, 8 or 16,
  WebP at the highest quality that fits, bicubic upsampling),

and prints, per codec and target, the mean achieved bpp, PSNR and MS-SSIM of the
8-bit decoded image against the original (and LPIPS / DISTS when their weights are
present), plus how many images could not reach the target (those still count in the
means, at the lowest quality's rate).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/baselines_kodak.py [--targets 0.05 0.1] [--limit N] [--csv out.csv]

Images come from ``$EGC_DATA/kodak``, else ``../shared/data/kodak`` next to the
repository, else :func:`egc_lite.data.kodak_paths` (which may download them).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import PIL
import torch
from PIL import features

from egc_lite.baselines import CLASSIC_CODECS, classic_available, classic_unavailable_reason, compress_at_bpp
from egc_lite.data import load_image, pil_to_tensor, tensor_to_pil
from egc_lite.guide import decode_guide, guide_quality_for_bpp
from egc_lite.metrics import bpp, compute_metrics, metric_availability, metric_notes

GUIDE_FACTORS = (4, 8, 16)
GUIDE_CODEC = "webp"


def kodak_files(limit: int | None) -> list[Path]:
    """The Kodak PNGs to run on (sorted), at most ``limit`` of them."""
    env = os.environ.get("EGC_DATA", "").strip()
    candidates = [Path(env) / "kodak"] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak")
    for folder in candidates:
        files = sorted(folder.glob("kodim*.png"))
        if files:
            return files[:limit] if limit else files
    from egc_lite.data import kodak_paths

    files = kodak_paths()
    return files[:limit] if limit else files


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels, as a decoder writing a PNG would."""
    return (x.clamp(0, 1) * 255).round() / 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--csv", type=Path, default=None, help="also write per-image rows to this CSV file")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    names = ["psnr", "ms_ssim"] + [n for n in ("lpips", "dists") if metric_availability(n).available]
    files = kodak_files(args.limit)
    codecs = [c for c in CLASSIC_CODECS if classic_available(c)]
    for c in CLASSIC_CODECS:
        if c not in codecs:
            print(f"skipping {c}: {classic_unavailable_reason(c)}")
    print(
        f"{len(files)} Kodak images from {files[0].parent}; Pillow {PIL.__version__}, "
        f"libjpeg {features.version('jpg')}, libwebp {features.version('webp')}, libavif {features.version('avif')}"
    )
    for name, note in metric_notes(["lpips", "dists"]).items():
        print(f"{name}: {note}")

    rows: list[dict] = []
    t0 = time.time()
    for path in files:
        x = load_image(path)
        H, W = x.shape[-2:]
        img = tensor_to_pil(x)
        for target in args.targets:
            for codec in codecs:
                res = compress_at_bpp(img, codec, target)
                y = pil_to_tensor(res.image)
                rows.append(
                    dict(
                        image=path.name,
                        codec=codec,
                        target=target,
                        quality=res.quality,
                        bpp=res.bpp,
                        reached=res.reached_target,
                        **compute_metrics(x, y, names),
                    )
                )
            for f in GUIDE_FACTORS:
                q, data = guide_quality_for_bpp(x, target, f, GUIDE_CODEC)
                _, up = decode_guide(data, (H, W), f)
                rate = bpp(len(data), H, W)
                rows.append(
                    dict(
                        image=path.name,
                        codec=f"guide/{f} ({GUIDE_CODEC})",
                        target=target,
                        quality=q,
                        bpp=rate,
                        reached=rate <= target,
                        **compute_metrics(x, quantize(up), names),
                    )
                )
        print(f"  {path.name} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    groups: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["codec"])].append(r)
    header = f"{'target':>6}  {'codec':<16} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}"
    header += "".join(f" {n.upper():>7}" for n in names[2:]) + f" {'quality':>8}  not reached"
    print()
    print(header)
    print("-" * len(header))
    for (target, codec), rs in groups.items():
        n = len(rs)
        mean = {k: sum(r[k] for r in rs) / n for k in ["bpp", "quality"] + names}
        misses = sum(not r["reached"] for r in rs)
        line = f"{target:>6g}  {codec:<16} {mean['bpp']:>7.4f} {mean['psnr']:>7.2f} {mean['ms_ssim']:>8.4f}"
        line += "".join(f" {mean[k]:>7.4f}" for k in names[2:])
        line += f" {mean['quality']:>8.1f}  {misses}/{n}"
        print(line)
    print(
        f"\n{len(files)} images, {time.time() - t0:.0f} s; means include images that missed the target "
        "(at the codec's lowest rate); quality is the mean chosen setting (0-100)"
    )
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"per-image rows written to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
