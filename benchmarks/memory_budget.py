"""Peak memory of encoding and decoding against the kit's computed budget (prints a table).

    python benchmarks/memory_budget.py [--codecs guide diffeic textinv] [--megapixels 0.1 1 3 12]
                                       [--steps 10] [--modes fast latent]

Every encode and every decode runs in a fresh process whose peak resident set the kernel keeps
(:func:`egc_lite.evaluate.memory.process_peak_bytes`, ``VmHWM``: no spike is missed; on CUDA the allocator's
peak is added as its own column). The photo is a training photo (``$EGC_DATA/photos-train``, else the embedded
``coffee.png``) resized to a 4:3 frame of the given megapixels. Beside each measured peak: the
kit's computed estimate (:func:`egc_lite.codecs.base.Codec.memory_estimate`, what the encoder checks
before writing and the decoder before decoding) and their ratio, which should lie in [1, 1.5].
Steps only change the time, not the peak: a few keep the big sizes quick.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

GIB = 2**30


def photo(megapixels: float):
    """A photo of about ``megapixels`` (4:3, sides multiples of 8) as a (3, H, W) tensor in [0, 1]."""
    from PIL import Image

    from egc_lite.data import pil_to_tensor

    root = Path(os.environ.get("EGC_DATA", "")) / "photos-train"
    files = sorted(root.glob("*.jpg")) + sorted(root.glob("*.png")) if root.is_dir() else []
    src = files[0] if files else Path(__file__).resolve().parents[1] / "egc_lite" / "assets" / "coffee.png"
    w = int((megapixels * 1e6 * 4 / 3) ** 0.5) // 8 * 8
    h = w * 3 // 4 // 8 * 8
    return pil_to_tensor(Image.open(src).convert("RGB").resize((w, h), Image.BICUBIC))


def child(args: argparse.Namespace) -> None:
    """One encode or decode, in this (fresh) process; prints a JSON line."""
    import torch

    from egc_lite.codecs import CompressOptions, load_codec
    from egc_lite.coding.bitstream import decode_bitstream, encode_bitstream
    from egc_lite.evaluate.memory import process_peak_bytes

    codec = load_codec(args.codec, device=args.device)
    if args.codec == "textinv" and args.mode:
        from egc_lite.sampling.guidance import CompressionGuidanceConfig

        g = codec.config.guidance
        codec.config = replace(codec.config, guidance=CompressionGuidanceConfig(mode=args.mode, scale=g.scale, every=g.every,
                                                                                until=g.until))
    cuda = torch.device(args.device).type == "cuda" if args.device != "auto" else torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.stage == "encode":
        x = photo(args.megapixels)
        kw = {"quality": 3} if args.codec == "diffeic" else {"bpp": 0.05}
        if args.codec != "guide":
            kw["steps"] = args.steps
            if args.codec == "textinv":
                kw["inversion_steps"] = args.steps
        bs = codec.compress(x, CompressOptions(**kw))
        Path(args.file).write_bytes(encode_bitstream(bs))
        estimate = codec.memory_estimate(bs.height, bs.width, "encode", bs)
    else:
        bs = decode_bitstream(Path(args.file).read_bytes())
        estimate = codec.memory_estimate(bs.height, bs.width, "decode", bs)
        codec.decompress(bs)
    seconds = time.perf_counter() - t0
    peak = process_peak_bytes()
    cuda_peak = torch.cuda.max_memory_allocated() if cuda else None
    print(json.dumps({"size": f"{bs.width}x{bs.height}", "peak": peak, "cuda_peak": cuda_peak, "estimate": estimate,
                      "seconds": seconds}))


def run(codec: str, stage: str, megapixels: float, file: str, steps: int, mode: str | None, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", "--codec", codec, "--stage", stage, "--megapixels", str(megapixels),
           "--file", file, "--steps", str(steps), "--device", device] + (["--mode", mode] if mode else [])
    env = {**os.environ, "EGC_PROGRESS": "0", "EGC_DECODE_BUDGET_GB": os.environ.get("EGC_DECODE_BUDGET_GB", "1000")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1][:80]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", nargs="+", default=["guide", "diffeic"])
    ap.add_argument("--megapixels", nargs="+", type=float, default=[0.1, 0.5, 1, 3, 6, 12])
    ap.add_argument("--steps", type=int, default=10, help="sampling (and inversion) steps: the time, not the peak")
    ap.add_argument("--modes", nargs="+", default=["fast"], help="textinv's guidance modes to measure")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--codec", help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.megapixels = args.megapixels[0]
        return child(args)

    from egc_lite.evaluate.summary import print_table

    print(f"threads: {os.environ.get('OMP_NUM_THREADS', 'all')}, device: {args.device}, steps: {args.steps}; "
          "peaks are the process's (interpreter, torch and weights included)")

    def rows():
        with tempfile.TemporaryDirectory() as tmp:
            for codec in args.codecs:
                for mode in (args.modes if codec == "textinv" else [None]):
                    for mp in args.megapixels:
                        file = str(Path(tmp) / f"{codec}.egc")
                        for stage in ("encode", "decode"):
                            r = run(codec, stage, mp, file, args.steps, mode, args.device)
                            name = codec + (f" ({mode})" if mode else "")
                            if "error" in r:
                                yield [name, stage, f"{mp:g} Mpx", "-", "-", "-", "-", r["error"]]
                                break
                            yield [name, stage, r["size"], f"{r['estimate'] / GIB:.2f}", f"{r['peak'] / GIB:.2f}",
                                   f"{r['estimate'] / r['peak']:.2f}", f"{r['seconds']:.1f}",
                                   "" if r["cuda_peak"] is None else f"{r['cuda_peak'] / GIB:.2f}"]

    print_table(["codec", "stage", "size", "computed GiB", "measured GiB", "ratio", "seconds", "CUDA peak GiB"], rows())


if __name__ == "__main__":
    main()
