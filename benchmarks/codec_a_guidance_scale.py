"""Choose codec A's compression guidance scale s_c on training photos (never on Kodak); prints a table.

    python benchmarks/codec_a_guidance_scale.py [--images DIR] [--limit 3] [--max-side 512] [--bpp 0.05]
        [--modes fast latent] [--sc 0.3 1 3] [--every 1 2] [--backbone egc-tiny] [--steps 50]

Each photo is compressed once (one inversion), then its file is decoded with every (mode, s_c, every) triple
(``TextInvCodec.decompress`` overrides the file's guidance), so the rows differ only in the decoder.
Rows: the mean over the photos of PSNR, LF-PSNR (8x8 block means: colour and layout) and sharpness
(gradient magnitude over the original's), each also as the difference to the guide codec at the same
bytes, and the decode seconds. The s_c chosen for a mode is the one with the best PSNR among those
whose LF-PSNR is within 0.5 dB of the guide's (the issue's consistency bound), else the best LF-PSNR.
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
from egc_lite.data import load_image, pil_to_tensor, tensor_to_pil, training_photos_dir
from egc_lite.evaluate.runner import score
from egc_lite.progress import set_progress
from egc_lite.sampling.guidance import GUIDANCE_MODES, CompressionGuidanceConfig


def _photos(folder: Path, limit: int, max_side: int) -> list[torch.Tensor]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:limit]
    out = []
    for p in paths:
        img = tensor_to_pil(load_image(p))
        scale = min(1.0, max_side / max(img.size))
        w, h = (round(v * scale) // 16 * 16 for v in img.size)
        out.append(pil_to_tensor(img.resize((w, h), Image.LANCZOS)))
    return out


def _scores(y: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """PSNR, LF-PSNR and sharpness of the 8-bit decoding (as a PNG holds it), by ``egc eval``'s metrics."""
    row = score(x, pil_to_tensor(tensor_to_pil(y)), learned={})
    return row["psnr"], row["lf_psnr"], row["sharpness"]



def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def _print_table(rows: dict, guide_rows: list[tuple[float, float, float]], key_header: list[str], what: str,
                 cells) -> tuple[tuple[float, float, float], dict]:
    """Print the guide codec's mean and one markdown row per key (the mean over the photos of PSNR, LF-PSNR,
    sharpness and decode seconds, PSNR and LF-PSNR also against the guide); returns both means."""
    guide = tuple(_mean([r[k] for r in guide_rows]) for k in range(3))
    gp, gl, gs = guide
    print(f"\n{len(guide_rows)} photos, {what}; guide codec at the same bytes: PSNR {gp:.2f}, LF-PSNR {gl:.2f}, sharpness {gs:.3f}")
    print("| " + " | ".join(key_header) + " | PSNR | vs guide | LF-PSNR | vs guide | sharpness | decode s |")
    print("|" + "---|" * (len(key_header) + 6))
    means = {}
    for key, r in rows.items():
        p, lf, sh, secs = means[key] = tuple(_mean([v[k] for v in r]) for k in range(4))
        print("| " + " | ".join(cells(key)) + f" | {p:.2f} | {p - gp:+.2f} | {lf:.2f} | {lf - gl:+.2f} | {sh:.3f} | {secs:.1f} |")
    return guide, means


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=None, help="folder of photos (default: the training photos)")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--bpp", type=float, default=0.05)
    ap.add_argument("--modes", nargs="+", default=["fast"], choices=GUIDANCE_MODES)
    ap.add_argument("--sc", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    ap.add_argument("--every", type=int, nargs="+", default=[1], help="guide every k-th step (the schedule's cost)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--backbone", default="egc-tiny")
    args = ap.parse_args()
    set_progress(False)
    codec = TextInvCodec(load_backbone(args.backbone, device="cpu"))
    photos = _photos(args.images or training_photos_dir(), args.limit, args.max_side)
    guide_rows, rows = [], {}
    for i, x in enumerate(photos):
        bs = codec.compress(x, CompressOptions(bpp=args.bpp, steps=args.steps))
        g = GuideCodec().compress(x, CompressOptions(bpp=bs.bpp()))
        guide_rows.append(_scores(GuideCodec().decompress(g), x))
        for mode in args.modes:
            for sc in args.sc:
                for every in args.every:
                    t0 = time.perf_counter()
                    y = codec.decompress(bs, guidance=CompressionGuidanceConfig(scale=sc, mode=mode, every=every))
                    rows.setdefault((mode, sc, every), []).append((*_scores(y, x), time.perf_counter() - t0))
        print(f"photo {i + 1}/{len(photos)}: {x.shape[2]}x{x.shape[1]}, {bs.bpp():.4f} bpp, guide factor {bs.params['f']}", flush=True)
    (gp, gl, _), means = _print_table(rows, guide_rows, ["mode", "s_c", "every"], f"<= {args.max_side} px, {args.bpp} bpp",
                                      cells=lambda key: [key[0], f"{key[1]:g}", str(key[2])])
    best: dict[str, tuple[tuple[bool, float], float, int]] = {}  # mode -> ((within the LF bound, PSNR or LF), s_c, every)
    for (mode, sc, every), (p, lf, _, _) in means.items():
        key = (lf >= gl - 0.5, p if lf >= gl - 0.5 else lf)
        if mode not in best or key > best[mode][0]:
            best[mode] = (key, sc, every)
    for mode, (_, sc, every) in best.items():
        print(f"chosen for {mode}: s_c {sc:g}, every {every}")


if __name__ == "__main__":
    main()
