"""Cost of compression guidance, measured as ratios in one run (prints a table).

    python benchmarks/guidance_speed.py [--backbone egc-tiny] [--steps 50] [--size 768x512]

Decodes one codec-A file (Kodak image 23 by default) with the same sampler and seed, without
compression guidance and with each mode/schedule, and prints seconds and the ratio to the
unguided decode, plus the PSNR each reaches (guidance must still pull towards the original).
"""

from __future__ import annotations

import argparse
import time

import torch

from egc_lite.backbone import load_backbone
from egc_lite.codecs import CompressOptions, TextInvCodec
from egc_lite.data import load_kodak, pil_to_tensor, tensor_to_pil
from egc_lite.evaluate.summary import print_table
from egc_lite.metrics import psnr
from egc_lite.progress import set_progress
from egc_lite.sampling.guidance import CompressionGuidanceConfig

SCHEDULES = [
    ("no guidance (s_c = 0)", CompressionGuidanceConfig(scale=0.0)),
    ("latent, every step", CompressionGuidanceConfig(mode="latent")),
    ("fast, every 4th, first 50%", CompressionGuidanceConfig(mode="fast", every=4, until=0.5)),
    ("fast, every 2nd, first 60%", CompressionGuidanceConfig(mode="fast", every=2, until=0.6)),
    ("full, every 4th, first 50%", CompressionGuidanceConfig(mode="full", every=4, until=0.5)),
]
#: Slow rows, with --all: every step guided through the decoder.
SLOW_SCHEDULES = [
    ("fast, every step", CompressionGuidanceConfig(mode="fast")),
    ("full, every step", CompressionGuidanceConfig(mode="full")),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="egc-tiny")
    ap.add_argument("--image", type=int, default=23)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--bpp", type=float, default=0.07)
    ap.add_argument("--sc", type=float, default=None, help="s_c for the guided rows (default: the codec's)")
    ap.add_argument("--inversion-steps", type=int, default=100)
    ap.add_argument("--all", action="store_true", help="also the slow rows (every step through the decoder)")
    args = ap.parse_args()
    set_progress(False)
    b = load_backbone(args.backbone, device="cpu")
    codec = TextInvCodec(b)
    x = load_kodak(args.image)
    bs = codec.compress(x, CompressOptions(bpp=args.bpp, steps=args.steps, inversion_steps=args.inversion_steps))
    base_scale = args.sc if args.sc is not None else codec.config.guidance.scale
    print(f"kodim{args.image:02d} {x.shape[2]}x{x.shape[1]}, {bs.bpp():.4f} bpp, {args.steps} DDIM steps with CFG, "
          f"{torch.get_num_threads()} threads, s_c = {base_scale:g} where guided")

    def decodes():
        base = None
        for name, g in SCHEDULES + (SLOW_SCHEDULES if args.all else []):
            if g.scale > 0:
                g = CompressionGuidanceConfig(scale=base_scale, mode=g.mode, every=g.every, until=g.until)
            t0 = time.perf_counter()
            y = codec.decompress(bs, guidance=g)
            dt = time.perf_counter() - t0
            base = base or dt
            y8 = pil_to_tensor(tensor_to_pil(y))
            yield [name, f"{dt:.1f}", f"x{dt / base:.2f}", f"{psnr(y8, x):.2f}"]

    print_table(["compression guidance", "decode s", "vs unguided", "PSNR dB"], decodes())


if __name__ == "__main__":
    main()
