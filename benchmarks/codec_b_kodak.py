"""Codec B (DiffEIC) on Kodak, each shipped rate point next to WebP/AVIF, the guide codec and,
optionally, codec A at the rate it reached (prints a table).

    python benchmarks/codec_b_kodak.py [--images 1 2 ...] [--qualities 1 2 3] [--start-step 30]
                                       [--codec-a-images 23] [--figures figures]

Per image and quality: the DiffEIC file (bpp from its size; encoding is one forward pass of the
VAE encoder and the compressor, timed), decoded with the full DDIM run and, with
``--start-step``, from the content variables at that step (fewer steps); then the reference codecs
at the rate DiffEIC reached. Codec A costs minutes per image on a CPU, so it runs only on
``--codec-a-images``. Side-by-side PNGs of the first image go to ``--figures``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from egc_lite.backbone import load_backbone
from egc_lite.codecs import CompressOptions, DiffEICCodec, TextInvCodec
from egc_lite.data import load_kodak
from egc_lite.evaluate import ResultTable, add_reference_rows, score
from egc_lite.progress import set_progress


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="egc-tiny")
    ap.add_argument("--images", type=int, nargs="+", default=list(range(1, 25)))
    ap.add_argument("--qualities", type=int, nargs="+", default=None, help="default: every shipped rate point")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--start-step", type=int, default=None, help="also decode from the content variables at this step")
    ap.add_argument("--codec-a-images", type=int, nargs="*", default=[])
    ap.add_argument("--figures", type=Path, default=Path("figures"))
    args = ap.parse_args()
    set_progress(False)
    b = load_backbone(args.backbone, device="cpu")
    codec = DiffEICCodec(b)
    codec_a = TextInvCodec(b) if args.codec_a_images else None
    qualities = args.qualities or codec.available_qualities()
    table = ResultTable()
    for k, idx in enumerate(args.images):
        x = load_kodak(idx)
        for q in qualities:
            rate = f"q{q}"
            codec.model(q)  # load outside the timing
            outs = {}
            variants = [("diffeic", None)] + ([(f"diffeic start {args.start_step}", args.start_step)] if args.start_step else [])
            for name, start in variants:
                t0 = time.perf_counter()
                bs = codec.compress(x, CompressOptions(quality=q, steps=args.steps, start_step=start))
                t_enc = time.perf_counter() - t0
                rate_bpp = bs.bpp()
                t0 = time.perf_counter()
                outs[name] = codec.decompress(bs)
                table.add(rate, name, score(outs[name], x, rate_bpp, t_enc, time.perf_counter() - t0))
            reached = table.rows[(rate, "diffeic")][-1].bpp
            outs.update(add_reference_rows(table, rate, x, reached))
            if codec_a is not None and idx in args.codec_a_images:
                t0 = time.perf_counter()
                bs = codec_a.compress(x, CompressOptions(bpp=reached))
                t_enc = time.perf_counter() - t0
                t0 = time.perf_counter()
                outs["textinv"] = codec_a.decompress(bs)
                a_bpp = bs.bpp()
                table.add(rate, "textinv", score(outs["textinv"], x, a_bpp, t_enc, time.perf_counter() - t0, a_bpp > reached))
            if k == 0:
                table.save_side_by_side(rate, x, outs, args.figures / f"codec_b_kodim{idx:02d}_q{q}.png")
            r = table.rows[(rate, "diffeic")][-1]
            print(f"kodim{idx:02d} q{q}: {r.bpp:.4f} bpp, {r.psnr:.2f} dB, MS-SSIM {r.ms_ssim:.3f}, enc {r.enc_s:.2f} s, "
                  f"dec {r.dec_s:.1f} s", flush=True)
    print("\n" + table.format(f"{args.backbone}, Kodak images {args.images}, CPU {torch.get_num_threads()} threads"))


if __name__ == "__main__":
    main()
