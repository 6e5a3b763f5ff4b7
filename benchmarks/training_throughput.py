"""Training throughput of backbone candidates, float32 against bf16 autocast + channels_last.

    python benchmarks/training_throughput.py [--threads 1] [--repeats 3] [--only unet|vae]

Prints, per candidate, seconds per training step (forward, backward, AdamW) in each precision
and their ratio, measured in one run (so a noisy machine affects both alike), and which
precision ``egc_lite.precision`` picks here. On a CPU with AMX or AVX-512 BF16 the wide
candidates gain most; on an AVX2-only CPU bf16 is emulated and loses everywhere.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from egc_lite.precision import autocast, cpu_has_fast_bf16, prepare_module, resolve_precision
from egc_lite.tiny import TinyBackboneConfig, build_unet, build_vae

UNET_CANDIDATES = {
    "unet (32, 64, 128) x1": TinyBackboneConfig(unet_channels=(32, 64, 128)),
    "unet (64, 128, 256) x2": TinyBackboneConfig(unet_channels=(64, 128, 256), unet_layers_per_block=2, unet_norm_groups=32),
    "unet (128, 256, 512) x2": TinyBackboneConfig(unet_channels=(128, 256, 512), unet_layers_per_block=2, unet_norm_groups=32),
}
VAE_CANDIDATES = {
    "vae (16, 32, 64, 128)": TinyBackboneConfig(),
    "vae (32, 64, 128, 128) 8 groups": TinyBackboneConfig(vae_channels=(32, 64, 128, 128), vae_norm_groups=8),
    "vae (64, 128, 256, 256) 16 groups": TinyBackboneConfig(vae_channels=(64, 128, 256, 256), vae_norm_groups=16),
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
        return (model.decode(model.encode(batch).latent_dist.mean).sample.float() - batch).abs().mean()

    return vae, x, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("unet", "vae"), default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU with fast bf16 (AMX or AVX-512 BF16): {cpu_has_fast_bf16()}; egc_lite picks {resolve_precision('cpu')} here; "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s)")
    cases = []
    if args.only in (None, "unet"):
        cases += [(name, _unet_case(replace(cfg), args.batch_size, 32)) for name, cfg in UNET_CANDIDATES.items()]
    if args.only in (None, "vae"):
        cases += [(name, _vae_case(cfg, args.batch_size, 128)) for name, cfg in VAE_CANDIDATES.items()]
    print(f"{'candidate':36s} {'params':>8s} {'fp32 s/step':>12s} {'bf16 s/step':>12s} {'bf16 speed-up':>14s}")
    for name, (model, batch, loss) in cases:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        fp32 = _step_seconds(model, batch, loss, "fp32", args.repeats)
        bf16 = _step_seconds(model, batch, loss, "bf16", args.repeats)
        print(f"{name:36s} {params:7.1f}M {fp32:12.2f} {bf16:12.2f} {fp32 / bf16:13.2f}x", flush=True)


if __name__ == "__main__":
    main()
