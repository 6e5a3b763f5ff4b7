"""Figure of egc-tiny: unconditional samples, samples from inverted embeddings, VAE reconstructions.

    python benchmarks/backbone_samples.py [--backbone egc-tiny] [--out figures/egc_tiny_samples.png]

Row 1: samples from the null embedding (classifier-free guidance off: s_f = 0 means
unconditional). Row 2: Kodak crops; row 3: samples conditioned on each crop's inverted
embedding (s_f = 3, no compression guidance: the embedding alone); row 4: VAE reconstructions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from egc_lite.backbone import load_backbone  # noqa: E402
from egc_lite.codecs.textual_inversion import InversionConfig, invert_embedding  # noqa: E402
from egc_lite.data import load_kodak  # noqa: E402
from egc_lite.progress import set_progress  # noqa: E402
from egc_lite.sampling.ddim import SamplerConfig, ddim_sample  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="egc-tiny")
    ap.add_argument("--images", type=int, nargs="+", default=[3, 7, 14, 21, 23])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--inversion-steps", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("figures/egc_tiny_samples.png"))
    args = ap.parse_args()
    set_progress(False)
    b = load_backbone(args.backbone, device="cpu")
    n, s = len(args.images), args.size
    fig, axes = plt.subplots(4, n, figsize=(2.4 * n, 9.6))
    lat = (s // 8, s // 8)
    for j, idx in enumerate(args.images):
        x = load_kodak(idx)
        h, w = x.shape[1:]
        crop = x[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        with torch.no_grad():
            z0 = b.encode(crop[None])
            rec = b.decode(z0)[0].clamp(0, 1)
            uncond = b.decode(ddim_sample(b, b.null_cond, lat, SamplerConfig(steps=args.steps, guidance_scale=0.0, seed=j)))[0].clamp(0, 1)
        emb = invert_embedding(b, z0, InversionConfig(steps=args.inversion_steps, lmbda=0.0, seed=j)).embedding
        with torch.no_grad():
            cond = b.decode(ddim_sample(b, emb, lat, SamplerConfig(steps=args.steps, guidance_scale=3.0, seed=j)))[0].clamp(0, 1)
        for i, (img, title) in enumerate([(uncond, "unconditional"), (crop, f"kodim{idx:02d} crop"),
                                          (cond, "inverted embedding"), (rec, "VAE reconstruction")]):
            axes[i, j].imshow(img.permute(1, 2, 0).numpy())
            axes[i, j].set_title(title, fontsize=8)
            axes[i, j].axis("off")
    fig.suptitle(f"{args.backbone}: {args.steps} DDIM steps, {s}x{s}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
