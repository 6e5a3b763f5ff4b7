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
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from egc_lite.backbone import load_backbone
from egc_lite.baselines import classic_available, compress_at_bpp
from egc_lite.bitstream import encode_bitstream
from egc_lite.codecs import CompressOptions, TextInvCodec, make_codec
from egc_lite.data import load_kodak, pil_to_tensor, tensor_to_pil
from egc_lite.demo import side_by_side
from egc_lite.metrics import ms_ssim, psnr
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
    guide = make_codec("guide")
    rows: dict[tuple[float, str], list[dict]] = defaultdict(list)
    for k, idx in enumerate(args.images):
        x = load_kodak(idx)
        h, w = x.shape[1:]
        for target in args.targets:
            opts = CompressOptions(bpp=target, steps=args.steps, inversion_steps=args.inversion_steps)
            t0 = time.perf_counter()
            bs = codec.compress(x, opts)
            t_enc = time.perf_counter() - t0
            n = len(encode_bitstream(bs))
            cfg, *_ = codec.decode_parameters(bs)
            outs = {}
            for name, g in (("textinv", cfg.guidance), ("textinv s_c=0", replace(cfg.guidance, scale=0.0))):
                t0 = time.perf_counter()
                y = pil_to_tensor(tensor_to_pil(codec.decompress(bs, guidance=g)))
                outs[name] = y
                rows[(target, name)].append({"bpp": 8 * n / (h * w), "psnr": psnr(y, x), "ms_ssim": ms_ssim(y, x),
                                             "enc": t_enc, "dec": time.perf_counter() - t0, "miss": 0})
            gb = guide.compress(x, CompressOptions(bpp=target))
            y = pil_to_tensor(tensor_to_pil(guide.decompress(gb)))
            outs["guide"] = y
            rows[(target, "guide")].append({"bpp": gb.bpp(), "psnr": psnr(y, x), "ms_ssim": ms_ssim(y, x), "enc": 0, "dec": 0,
                                            "miss": int(gb.bpp() > target)})
            for c in ("webp", "avif"):
                if not classic_available(c):
                    continue
                r = compress_at_bpp(tensor_to_pil(x), c, target)
                y = pil_to_tensor(r.image)
                outs[c] = y
                rows[(target, c)].append({"bpp": r.bpp, "psnr": psnr(y, x), "ms_ssim": ms_ssim(y, x), "enc": 0, "dec": 0,
                                          "miss": int(not r.reached_target)})
            if k == 0:
                args.figures.mkdir(parents=True, exist_ok=True)
                names = list(outs)
                labels = ["original"] + [f"{n_}: {rows[(target, n_)][-1]['bpp']:.3f} bpp {rows[(target, n_)][-1]['psnr']:.1f} dB" for n_ in names]
                side_by_side([x] + [outs[n_] for n_ in names], labels).save(args.figures / f"codec_a_kodim{idx:02d}_{target:g}bpp.png")
            print(f"kodim{idx:02d} @ {target}: textinv {rows[(target, 'textinv')][-1]['bpp']:.4f} bpp, "
                  f"{rows[(target, 'textinv')][-1]['psnr']:.2f} dB (s_c=0: {rows[(target, 'textinv s_c=0')][-1]['psnr']:.2f} dB), "
                  f"enc {t_enc:.0f} s, dec {rows[(target, 'textinv')][-1]['dec']:.0f} s", flush=True)
    print(f"\n{args.backbone}, Kodak images {args.images}, CPU {torch.get_num_threads()} threads")
    print(f"{'target':>6}  {'codec':15s} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8} {'enc s':>6} {'dec s':>6}  missed target")
    for (target, name), rs in rows.items():
        def m(key: str, rs: list[dict] = rs) -> float:
            return sum(r[key] for r in rs) / len(rs)

        print(f"{target:6.3f}  {name:15s} {m('bpp'):7.4f} {m('psnr'):7.2f} {m('ms_ssim'):8.4f} {m('enc'):6.1f} {m('dec'):6.1f}  "
              f"{sum(r['miss'] for r in rs)}/{len(rs)}")


if __name__ == "__main__":
    main()
