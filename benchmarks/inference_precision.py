"""Float32 against bf16 inference on one backbone (prints a few lines; not a timed test).

    python benchmarks/inference_precision.py [--backbone egc-tiny] [--steps 50] [--threads 1]

For each precision, the backbone is loaded with ``precision=`` set explicitly (``EGC_PRECISION`` is
ignored here) and samples one 768x512 image: ``--steps`` DDIM steps with classifier-free guidance
(s_f = 3, seed 0), then the VAE decode. It prints the times, then how far the bf16 image is from the
float32 one (the whole run, in 8-bit levels and PSNR) and how far the bf16 *decoder alone* is (both
decoders given the float32 run's latent). bf16 is emulated, and slow, on CPUs without AMX or
AVX-512 BF16 (``egc_lite.precision.cpu_has_fast_bf16`` says which this is).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from egc_lite.backbone import load_backbone
from egc_lite.metrics import psnr
from egc_lite.precision import cpu_has_fast_bf16
from egc_lite.progress import set_progress
from egc_lite.sampling.ddim import SamplerConfig, ddim_sample


def run(spec: str, precision: str, steps: int, size: tuple[int, int]) -> dict:
    """Load ``spec`` at ``precision``, sample one image; the times, the final latent and the image."""
    b = load_backbone(spec, device="cpu", precision=precision)
    assert b.inference_precision == precision, b.inference_precision
    h, w = size
    shape = (h // b.vae_factor, w // b.vae_factor)
    cfg = SamplerConfig(steps=steps, guidance_scale=3.0, seed=0)
    ddim_sample(b, b.null_cond, shape, SamplerConfig(steps=1, guidance_scale=3.0))  # warm-up (oneDNN primitives)
    t0 = time.perf_counter()
    z = ddim_sample(b, b.null_cond, shape, cfg)
    t1 = time.perf_counter()
    with torch.no_grad():
        x = b.decode(z).clamp(0, 1)
    t2 = time.perf_counter()
    return {"backbone": b, "sample_s": t1 - t0, "decode_s": t2 - t1, "z": z, "x": x}


def levels(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Max and mean absolute difference of two [0, 1] images in 8-bit levels."""
    d = ((a * 255).round() - (b * 255).round()).abs()
    return float(d.max()), float(d.mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="egc-tiny")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_progress(False)
    torch.set_num_threads(args.threads)
    os.environ.pop("EGC_PRECISION", None)  # both precisions are asked for explicitly
    print(f"{args.backbone}, {args.width}x{args.height}, {args.steps} DDIM steps with CFG, {torch.get_num_threads()} thread(s), "
          f"fast bf16 on this CPU: {cpu_has_fast_bf16()}")
    out = {p: run(args.backbone, p, args.steps, (args.height, args.width)) for p in ("fp32", "bf16")}
    for p, r in out.items():
        print(f"  {p}: sampling {r['sample_s']:.1f} s, VAE decode {r['decode_s']:.2f} s, total {r['sample_s'] + r['decode_s']:.1f} s")
    f32, b16 = out["fp32"], out["bf16"]
    speed = (f32["sample_s"] + f32["decode_s"]) / (b16["sample_s"] + b16["decode_s"])
    print(f"  bf16 speed-up: {speed:.2f}x (sampling {f32['sample_s'] / b16['sample_s']:.2f}x, decode {f32['decode_s'] / b16['decode_s']:.2f}x)")
    mx, mean = levels(b16["x"], f32["x"])
    print(f"  whole run, bf16 vs fp32 image: max {mx:.0f} levels, mean {mean:.2f} levels, PSNR {psnr(b16['x'][0], f32['x'][0]):.1f} dB")
    with torch.no_grad():
        dec = b16["backbone"].decode(f32["z"]).clamp(0, 1)
    mx, mean = levels(dec, f32["x"])
    print(f"  decoder alone (the fp32 run's latent): max {mx:.0f} levels, mean {mean:.2f} levels, PSNR {psnr(dec[0], f32['x'][0]):.1f} dB")


if __name__ == "__main__":
    main()
