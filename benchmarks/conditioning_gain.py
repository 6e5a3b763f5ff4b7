"""Does egc-tiny's UNet read its conditioning? A training diagnostic (prints a table).

    python benchmarks/conditioning_gain.py --ckpt ~/ckpt/egc-tiny [--crops 32] [--weights ema|unet]

Loads a ``unet`` phase checkpoint (``unet.pt`` and ``latents.pt`` of `egc train backbone`) and, on
random latent crops of the training photos, compares at each level t the denoising loss
:math:`\\|\\epsilon-\\epsilon_\\theta(z_t,t,e)\\|^2` under three conditions, with the same noises:
the null embedding, the token encoder's tokens of that crop, and the tokens of another crop.
A UNet that uses its conditioning shows "tokens" below "null" and "other crop's" above it.
(Textual inversion, `backbone_targets.py`, optimizes an embedding per image and can find more.)
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from egc_lite.evaluate.summary import print_table
from egc_lite.models.tiny import ImageTokenEncoder, build_components
from egc_lite.training.backbone import checkpoint_arch, latent_crops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder of the unet phase")
    ap.add_argument("--crops", type=int, default=32)
    ap.add_argument("--crop", type=int, default=256, help="crop side in pixels (latent side / 8)")
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 50, 150, 300, 500, 700, 900, 999])
    ap.add_argument("--weights", choices=("ema", "unet"), default="ema", help="the EMA copy (what export ships) or the raw weights")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    state = torch.load(args.ckpt / "unet.pt", map_location="cpu", weights_only=False)
    arch = checkpoint_arch(state)
    comps = build_components(arch)
    unet = comps.unet.eval()
    unet.load_state_dict(state[args.weights])
    encoder = ImageTokenEncoder(arch).eval()
    encoder.load_state_dict(state["encoder"])
    bank = torch.load(args.ckpt / "latents.pt", map_location="cpu", weights_only=False)
    z0 = latent_crops(bank, args.crops, args.crop // 8, random.Random(args.seed)) * state["latent_scale"]
    alphas = comps.scheduler.alphas_cumprod
    with torch.no_grad():
        tokens = encoder(z0)
        conditions = {"null": state["null_cond"].expand_as(tokens), "tokens": tokens, "other crop's": tokens.roll(1, 0)}
        print(f"{args.ckpt} step {state['step']}, {args.weights} weights, {args.crops} crops of {args.crop} px")
        totals = dict.fromkeys(conditions, 0.0)

        def cells(t, loss: dict[str, float]) -> list[str]:
            return [str(t), *(f"{v:.4f}" for v in loss.values()), f"{100 * (1 - loss['tokens'] / loss['null']):+.1f}%"]

        def levels():
            for t in args.levels:
                eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
                zt = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * eps
                tt = torch.full((z0.shape[0],), t)
                loss = {k: float((unet(zt, tt, encoder_hidden_states=c).sample - eps).pow(2).mean()) for k, c in conditions.items()}
                for k in totals:
                    totals[k] += loss[k] / len(args.levels)
                yield cells(t, loss)
            yield cells("mean", totals)

        print_table(["t", *(f"loss, {name}" for name in conditions), "tokens vs null"], levels())


if __name__ == "__main__":
    main()
