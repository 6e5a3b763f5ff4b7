"""Training throughput of backbone candidates, float32 against bf16 autocast + channels_last.

    python benchmarks/training_throughput.py [--threads 1] [--repeats 3] [--only unet|vae] [--match TEXT]
        [--batch-size 8] [--crop 128] [--precisions fp32,bf16] [--decode 768x512]

Prints, per candidate, seconds per training step (forward, backward, AdamW) in each precision
and their ratio, measured in one run (so a noisy machine affects both alike), and which
precision ``egc_lite.precision`` picks here. On a CPU with AMX or AVX-512 BF16 the wide
candidates gain most; on an AVX2-only CPU bf16 is emulated and loses everywhere.
The VAE candidates include ``AutoencoderTiny`` (TAESD's class) beside ``AutoencoderKL``; with
``--decode WxH`` each VAE candidate also reports the seconds to decode one latent of a W x H image
without gradients (as :meth:`egc_lite.backbone.Backbone.decode` runs it in each precision).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from egc_lite.evaluate.summary import print_table
from egc_lite.models.autoencoder import decoder_modules, vae_latent
from egc_lite.models.tiny import TAESD_CHANNELS, TinyBackboneConfig, build_unet, build_vae
from egc_lite.precision import autocast, cpu_has_fast_bf16, prepare_module, resolve_precision

UNET_CANDIDATES = {
    "unet (32, 64, 128) x1": TinyBackboneConfig(unet_channels=(32, 64, 128)),
    "unet (64, 128, 256) x2": TinyBackboneConfig(unet_channels=(64, 128, 256), unet_layers_per_block=2, unet_norm_groups=32),
    "unet (128, 256, 512) x2": TinyBackboneConfig(unet_channels=(128, 256, 512), unet_layers_per_block=2, unet_norm_groups=32),
}
VAE_CANDIDATES = {
    "vae (16, 32, 64, 128)": TinyBackboneConfig(),
    "vae (32, 64, 128, 128) 8 groups": TinyBackboneConfig(vae_channels=(32, 64, 128, 128), vae_norm_groups=8),
    "vae (64, 128, 256, 256) 16 groups": TinyBackboneConfig(vae_channels=(64, 128, 256, 256), vae_norm_groups=16),
    "vae (64, 128, 256, 256) 8 groups, 8 latents": TinyBackboneConfig(vae_channels=(64, 128, 256, 256), vae_norm_groups=8,
                                                                      latent_channels=8),
    "taesd (64 x 4), 8 latents": TinyBackboneConfig(vae_type="tiny", vae_channels=TAESD_CHANNELS, latent_channels=8),
    "taesd (64 x 4) blocks 1,2,2,2, 8 latents": TinyBackboneConfig(vae_type="tiny", vae_channels=TAESD_CHANNELS,
                                                                  vae_blocks=(1, 2, 2, 2), latent_channels=8),
    "taesd (32 x 4), 8 latents": TinyBackboneConfig(vae_type="tiny", vae_channels=(32,) * 4, latent_channels=8),
}


def _step_seconds(model: torch.nn.Module, batch, loss_fn, precision: str, repeats: int) -> float:
    model = prepare_module(model, precision)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(repeats + 1):  # the first step builds oneDNN primitives: not counted
        t0 = time.perf_counter()
        with autocast("cpu", precision):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def _unet_case(cfg: TinyBackboneConfig, batch_size: int, latent: int):
    unet = build_unet(cfg)
    z = torch.randn(batch_size, cfg.latent_channels, latent, latent)
    cond = torch.randn(batch_size, cfg.n_tokens, cfg.cond_dim)
    t = torch.randint(0, 1000, (batch_size,))

    def loss(model, batch):
        zz = batch.contiguous(memory_format=torch.channels_last) if model.conv_in.weight.is_contiguous(memory_format=torch.channels_last) else batch
        return (model(zz, t, encoder_hidden_states=cond).sample.float() - batch).pow(2).mean()

    return unet, z, loss


def _vae_case(cfg: TinyBackboneConfig, batch_size: int, crop: int):
    vae = build_vae(cfg)
    x = torch.rand(batch_size, 3, crop, crop) * 2 - 1

    def loss(model, batch):
        xx = batch.contiguous(memory_format=torch.channels_last) if next(model.parameters()).is_contiguous(
            memory_format=torch.channels_last) else batch
        return (model.decode(vae_latent(model, xx)).sample.float() - batch).abs().mean()

    return vae, x, loss


def _decode_seconds(vae: torch.nn.Module, latent_channels: int, width: int, height: int, precision: str, repeats: int) -> float:
    """Seconds to decode one latent of a ``width x height`` image without gradients (the decoder in
    ``channels_last`` under bf16, as the backbone's inference does)."""
    vae = vae.eval()
    for module in decoder_modules(vae):
        prepare_module(module, precision)
    z = torch.randn(1, latent_channels, height // 8, width // 8)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first call builds oneDNN primitives: not counted
            t0 = time.perf_counter()
            with autocast("cpu", precision):
                vae.decode(z)
            times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("unet", "vae"), default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128, help="VAE candidates: crop side")
    ap.add_argument("--match", default=None, help="only the candidates whose name contains this text")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 or both")
    ap.add_argument("--decode", default=None, help="VAE candidates: also time decoding one latent of a WxH image (e.g. 768x512)")
    args = ap.parse_args()
    precisions = [p for p in args.precisions.split(",") if p]
    torch.set_num_threads(args.threads)
    print(f"CPU with fast bf16 (AMX or AVX-512 BF16): {cpu_has_fast_bf16()}; egc_lite picks {resolve_precision('cpu')} here; "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s)")
    cases = []
    if args.only in (None, "unet"):
        cases += [(name, cfg, _unet_case(replace(cfg), args.batch_size, 32)) for name, cfg in UNET_CANDIDATES.items()]
    if args.only in (None, "vae"):
        cases += [(name, cfg, _vae_case(cfg, args.batch_size, args.crop)) for name, cfg in VAE_CANDIDATES.items()]
    cases = [c for c in cases if args.match is None or args.match in c[0]]
    print(f"batch {args.batch_size}, VAE crops {args.crop} px")
    both = {"fp32", "bf16"} <= set(precisions)
    head = ["candidate", "params M", *(f"{p} s/step" for p in precisions)] + (["speed-up"] if both else [])
    if args.decode:
        head += [f"{p} decode s" for p in precisions]

    def measured():
        for name, cfg, (model, batch, loss) in cases:
            params = sum(p.numel() for p in model.parameters()) / 1e6
            steps = {p: _step_seconds(model, batch, loss, p, args.repeats) for p in precisions}  # fp32 first: bf16 moves to channels_last
            row = [name, f"{params:.2f}", *(f"{steps[p]:.2f}" for p in precisions)]
            if both:
                row.append(f"{steps['fp32'] / steps['bf16']:.2f}x")
            if args.decode and name in VAE_CANDIDATES:
                w, h = (int(v) for v in args.decode.lower().split("x"))
                row += [f"{_decode_seconds(build_vae(cfg), cfg.latent_channels, w, h, p, args.repeats):.2f}" for p in precisions]
            elif args.decode:
                row += [""] * len(precisions)
            yield row

    print_table(head, measured())

if __name__ == "__main__":
    main()
