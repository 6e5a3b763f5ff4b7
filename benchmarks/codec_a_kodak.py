"""Codec A on Kodak next to the guide codec and WebP/AVIF at the same rate (prints a table).

    python benchmarks/codec_a_kodak.py [--images 1 2 3 ...] [--targets 0.05 0.1] [--figures figures]

For every image and target: codec A's file (bpp from its size), decoded with the file's s_c and
with s_c = 0 (the ablation), the guide codec alone, and WebP/AVIF at the highest quality that fits
(or their floor when they cannot go that low: the table says how many missed). Side-by-side PNGs
of the first image go to ``--figures``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from egc_lite.backbone import load_backbone
from egc_lite.codecs import CompressOptions, TextInvCodec
from egc_lite.data import load_kodak
from egc_lite.evaluate import ResultTable, add_reference_rows, score
from egc_lite.progress import set_progress


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="egc-tiny")
    ap.add_argument("--images", type=int, nargs="+", default=[1, 5, 15, 23])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--inversion-steps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    args = ap.parse_args()
    set_progress(False)
    b = load_backbone(args.backbone, device="cpu")
    codec = TextInvCodec(b)
    table = ResultTable()
    for k, idx in enumerate(args.images):
        x = load_kodak(idx)
        for target in args.targets:
            rate = f"{target:g}"
            t0 = time.perf_counter()
            bs = codec.compress(x, CompressOptions(bpp=target, steps=args.steps, inversion_steps=args.inversion_steps))
            t_enc = time.perf_counter() - t0
            rate_bpp = bs.bpp()
            cfg, *_ = codec.decode_parameters(bs)
            outs, rows = {}, {}
            for name, g in (("textinv", cfg.guidance), ("textinv s_c=0", replace(cfg.guidance, scale=0.0))):
                t0 = time.perf_counter()
                outs[name] = codec.decompress(bs, guidance=g)
                rows[name] = table.add(rate, name, score(outs[name], x, rate_bpp, t_enc, time.perf_counter() - t0, rate_bpp > target))
            outs.update(add_reference_rows(table, rate, x, target))
            if k == 0:
                table.save_side_by_side(rate, x, outs, args.figures / f"codec_a_kodim{idx:02d}_{target:g}bpp.png")
            print(f"kodim{idx:02d} @ {target}: textinv {rate_bpp:.4f} bpp, {rows['textinv'].psnr:.2f} dB "
                  f"(s_c=0: {rows['textinv s_c=0'].psnr:.2f} dB), enc {t_enc:.0f} s, dec {rows['textinv'].dec_s:.0f} s", flush=True)
    print("\n" + table.format(f"{args.backbone}, Kodak images {args.images}, CPU {torch.get_num_threads()} threads"))


if __name__ == "__main__":
    main()
