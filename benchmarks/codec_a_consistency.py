"""Codec A with and without ILVR low-frequency consistency (beyond the paper), against the guide codec.

    PYTHONPATH=. python benchmarks/codec_a_consistency.py [--images 23 5] [--size 384x256 | --size full] [--bpp 0.05]
        [--until 0.5 1.0] [--out results/consistency]

Each image is compressed once by codec A (the file carries ``consistency: ilvr``, so its bytes include the
three header fields); the same file is decoded with the paper's decoder (consistency ``none``), with latent ILVR
for each ``--until``, with the pixel-space projection alone and with both. Rows: PSNR, LF-PSNR (8x8 block means) and sharpness (gradient magnitude over the
original's), beside the guide codec alone at the same bytes and codec A's own guide upsampled. A strip
(original | guide codec | none | ilvr ...) per image goes to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

from egc_lite.backbone import load_backbone
from egc_lite.codecs import CompressOptions, TextInvCodec
from egc_lite.codecs.guide_codec import GuideCodec
from egc_lite.data import load_kodak, pil_to_tensor, save_image, tensor_to_pil
from egc_lite.guide import decode_guide
from egc_lite.metrics import lf_psnr, psnr, sharpness
from egc_lite.progress import set_progress
from egc_lite.sampling.consistency import ConsistencyConfig


def _resize(x: torch.Tensor, size: str) -> torch.Tensor:
    if size == "full":
        return x
    w, h = (int(v) for v in size.lower().split("x"))
    return pil_to_tensor(tensor_to_pil(x).resize((w, h), Image.LANCZOS))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, nargs="+", default=[23, 5], help="Kodak numbers")
    ap.add_argument("--size", default="384x256", help="WxH to downscale to (PIL Lanczos), or 'full'")
    ap.add_argument("--bpp", type=float, default=0.05)
    ap.add_argument("--until", type=float, nargs="+", default=[0.5, 1.0], help="ILVR's fraction of the steps")
    ap.add_argument("--backbone", default="egc-tiny")
    ap.add_argument("--out", type=Path, default=Path("results/consistency"))
    args = ap.parse_args()
    set_progress(False)
    codec = TextInvCodec(load_backbone(args.backbone, device="cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    print("| image | row | bpp | PSNR | LF-PSNR | sharpness | s |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for n in args.images:
        x = _resize(load_kodak(n), args.size)
        h, w = x.shape[1:]
        t0 = time.perf_counter()
        bs = codec.compress(x, CompressOptions(bpp=args.bpp, consistency="ilvr", consistency_until=args.until[0]))
        rows = {}
        g = GuideCodec().compress(x, CompressOptions(bpp=bs.bpp()))
        rows["guide codec, same bytes"] = (GuideCodec().decompress(g), g.bpp(), 0.0)
        rows[f"codec A's own guide (f={bs.params['f']})"] = (
            decode_guide(bs.sections["guide"], (h, w), bs.params["f"])[1], 8 * len(bs.sections["guide"]) / (h * w), 0.0)
        notes.append(f"kodim{n:02d} {w}x{h}: {bs.num_bytes()} bytes, guide factor {bs.params['f']}, "
                     f"compress {time.perf_counter() - t0:.0f} s")
        modes = [("none (the paper)", ConsistencyConfig())]
        modes += [(f"ilvr until {u}", ConsistencyConfig("ilvr", u)) for u in args.until]
        modes += [("pixel", ConsistencyConfig("pixel")), (f"ilvr+pixel until {args.until[0]}", ConsistencyConfig("ilvr+pixel", args.until[0]))]
        for label, cc in modes:
            t = time.perf_counter()
            y = codec.decompress(bs, consistency=cc)
            rows[f"codec A, {label}"] = (y, bs.bpp(), time.perf_counter() - t)
        strip = [x]
        for label, row in rows.items():
            y, rate, secs = row
            y = pil_to_tensor(tensor_to_pil(y))  # 8-bit, as a PNG would hold it
            strip.append(y)
            print(f"| kodim{n:02d} | {label} | {rate:.4f} | {psnr(y, x):.2f} | {lf_psnr(y, x):.2f} | {sharpness(y, x):.3f} "
                  f"| {secs:.0f} |", flush=True)
        save_image(torch.cat(strip, dim=2), args.out / f"kodim{n:02d}_{w}x{h}.png")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
