"""Does egc-tiny's UNet read its conditioning? A training diagnostic (prints a table).

    python benchmarks/conditioning_gain.py --ckpt ~/ckpt/egc-tiny [--crops 32] [--weights ema|unet]
    python benchmarks/conditioning_gain.py --backbone egc_lite/weights/egc-tiny --photos DIR   # an exported backbone

Loads a ``unet`` phase checkpoint (``unet.pt`` and ``latents.pt`` of `egc train backbone`), or an exported
backbone folder with its ``token_encoder.safetensors`` (crops of ``--photos`` encoded by its autoencoder), and, on
random latent crops of the training photos, compares at each level t the denoising loss
:math:`\\|\\epsilon-\\epsilon_\\theta(z_t,t,e)\\|^2` (for a ``v_prediction`` UNet, the same on :math:`v`) under three conditions, with the same noises:
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
from egc_lite.models.tiny import ImageTokenEncoder, TinyBackboneConfig, build_components
from egc_lite.training.backbone import checkpoint_arch, latent_crops, load_latent_bank


def _from_export(folder: Path, photos: Path, crops: int, crop: int, seed: int):
    """UNet, token encoder, null embedding, scheduler and scaled latent crops of an exported backbone."""
    import json

    from safetensors.torch import load_file

    from egc_lite.backbone import load_backbone
    from egc_lite.data import list_images, load_image

    b = load_backbone(str(folder), device="cpu", precision="fp32")
    arch = json.loads((folder / "model_index.json").read_text())["config"]
    arch = TinyBackboneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
    encoder = ImageTokenEncoder(arch).eval()
    encoder.load_state_dict(load_file(folder / "token_encoder.safetensors"))
    rng = random.Random(seed)
    paths = list_images(photos)
    z0 = []
    for _ in range(crops):
        x = load_image(rng.choice(paths))
        h, w = x.shape[-2:]
        y, xx = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
        with torch.no_grad():
            z0.append(b.encode(x[None, :, y : y + crop, xx : xx + crop])[0])
    return b.unet, encoder, b.null_cond, b.scheduler, torch.stack(z0), "exported"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder of the unet phase")
    ap.add_argument("--backbone", type=Path, default=None, help="or an exported backbone folder (with token_encoder.safetensors)")
    ap.add_argument("--photos", type=Path, default=None, help="with --backbone: a folder of training photos to crop")
    ap.add_argument("--crops", type=int, default=32)
    ap.add_argument("--crop", type=int, default=256, help="crop side in pixels (latent side / 8)")
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 50, 150, 300, 500, 700, 900, 999])
    ap.add_argument("--weights", choices=("ema", "unet"), default="ema", help="the EMA copy (what export ships) or the raw weights")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    if args.backbone is not None:
        unet, encoder, null, scheduler, z0, what = _from_export(args.backbone, args.photos, args.crops, args.crop, args.seed)
        name = args.backbone
    else:
        state = torch.load(args.ckpt / "unet.pt", map_location="cpu", weights_only=False)
        arch = checkpoint_arch(state)
        comps = build_components(arch)
        unet = comps.unet.eval()
        unet.load_state_dict(state[args.weights])
        encoder = ImageTokenEncoder(arch).eval()
        encoder.load_state_dict(state["encoder"])
        bank = load_latent_bank(args.ckpt / "latents.pt")
        z0 = latent_crops(bank, args.crops, args.crop // 8, random.Random(args.seed)) * state["latent_scale"]
        null, scheduler, what, name = state["null_cond"], comps.scheduler, f"step {state['step']}, {args.weights} weights", args.ckpt
    alphas = scheduler.alphas_cumprod
    with torch.no_grad():
        tokens = encoder(z0)
        conditions = {"null": null.expand_as(tokens), "tokens": tokens, "other crop's": tokens.roll(1, 0)}
        print(f"{name} ({what}), {args.crops} crops of {args.crop} px")
        totals = dict.fromkeys(conditions, 0.0)

        def cells(t, loss: dict[str, float]) -> list[str]:
            return [str(t), *(f"{v:.4f}" for v in loss.values()), f"{100 * (1 - loss['tokens'] / loss['null']):+.1f}%"]

        def levels():
            for t in args.levels:
                eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
                zt = alphas[t].sqrt() * z0 + (1 - alphas[t]).sqrt() * eps
                tt = torch.full((z0.shape[0],), t)
                target = eps if scheduler.config.prediction_type == "epsilon" else alphas[t].sqrt() * eps - (1 - alphas[t]).sqrt() * z0
                loss = {k: float((unet(zt, tt, encoder_hidden_states=c).sample - target).pow(2).mean()) for k, c in conditions.items()}
                for k in totals:
                    totals[k] += loss[k] / len(args.levels)
                yield cells(t, loss)
            yield cells("mean", totals)

        print_table(["t", *(f"loss, {c}" for c in conditions), "tokens vs null"], levels())


if __name__ == "__main__":
    main()
