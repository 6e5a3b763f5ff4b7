"""The ``egc`` command line.

``egc compress IMAGE -o FILE [--codec guide|textinv|diffeic] [--bpp T] [--quality N] [--seed S]``,
``egc decompress FILE -o PNG [--samples N]``, ``egc info FILE``, ``egc demo``, ``egc train ...``,
``egc eval [--codecs ...] [--bpp ...] [--quality ...]``, ``egc sweep GRID.yaml``.
A user mistake (a bad option included) prints one line ``egc: error: ...`` on stderr and exits
with status 2; success exits 0.

Each command imports what it needs when it runs: ``egc --help`` and ``egc info`` load no torch,
the guide codec no diffusers. Nothing in the package imports this module.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from .codecs import DEFAULT_BACKBONE, DEFAULT_CODEC
from .errors import EGCError
from .models.diffeic.config import SHIPPED_DESIGN

#: ``egc_lite.sampling.guidance.GUIDANCE_MODES``, repeated so that building the parser imports no torch (a test checks they agree).
GUIDANCE_MODE_CHOICES = ("fast", "full", "latent")


class _Parser(argparse.ArgumentParser):
    """argparse with the kit's error contract: one line on stderr, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(2, f"egc: error: {line} (see `{self.prog} --help`)\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="egc-tiny, a local SD folder or a hub id (default: egc-tiny)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_codec_files(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=None,
                   help="diffeic: a folder of rate points q1..q5 (default: the ones found for the backbone id)")
    p.add_argument("--prior", type=Path, default=None,
                   help="textinv: an embedding prior file (default: the one found for the backbone id)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="egc", description="Extreme generative image compression with latent diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress an image into an egc_lite file")
    c.add_argument("image", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True)
    c.add_argument("--codec", default=DEFAULT_CODEC, help=f"guide, textinv or diffeic (default: {DEFAULT_CODEC})")
    c.add_argument("--bpp", type=float, default=None, help="target rate in bits per pixel")
    c.add_argument("--quality", type=int, default=None, help="rate point (1 = lowest rate)")
    c.add_argument("--seed", type=int, default=0, help="decoder seed stored in the file (default 0)")
    c.add_argument("--steps", type=int, default=None, help="sampling steps stored in the file")
    c.add_argument("--sf", type=float, default=None, help="classifier-free guidance scale s_f")
    c.add_argument("--sc", type=float, default=None, help="compression guidance scale s_c (textinv)")
    c.add_argument("--guidance-mode", choices=GUIDANCE_MODE_CHOICES, default=None,
                   help="textinv: compression guidance on the decoded estimate (fast: the paper's distance; full: also "
                        "through the UNet) or the cheaper latent shortcut (no decoder pass); default: the codec's")
    c.add_argument("--start-step", type=int, default=None,
                   help="diffeic: start from the content variables at this step (default: 60%% of the steps; 0: from noise)")
    c.add_argument("--eta", type=float, default=None, help="diffeic: 0 = DDIM steps (default), 1 = ancestral DDPM-like steps")
    c.add_argument("--inversion-steps", type=int, default=None, help="textinv: optimization steps of the embedding")
    c.add_argument("--token-start", type=int, default=None,
                   help="textinv: first optimized token position (default: 1 after SD's BOS token, else 0)")
    c.add_argument("--n-tokens", type=int, default=None,
                   help="textinv: optimized positions (default: 4 on Stable Diffusion, all on egc-tiny)")
    c.add_argument("--embedding-share", type=float, default=None,
                   help="textinv: share of the byte budget for the embedding, the rest for the guide (default 0.15)")
    c.add_argument("--consistency", choices=("none", "ilvr", "pixel", "ilvr+pixel"), default=None,
                   help="textinv, beyond the paper: keep the output's low frequencies on the guide, by ILVR in latent space "
                        "and/or a pixel-space projection after decoding (default none, the paper's decoder)")
    c.add_argument("--consistency-until", type=float, default=None, help="textinv: fraction of the steps ilvr acts on (default 0.5)")
    _add_codec_files(c)
    _add_common(c)

    d = sub.add_parser("decompress", help="decode an egc_lite file to PNG")
    d.add_argument("file", type=Path)
    d.add_argument("-o", "--output", type=Path, required=True)
    d.add_argument("--samples", type=int, default=1, help="number of reconstructions (different decoder seeds)")
    _add_codec_files(d)
    _add_common(d)

    i = sub.add_parser("info", help="print a file's header")
    i.add_argument("file", type=Path)

    m = sub.add_parser("demo", help="one photo through the default codec, beside WebP; writes figures/demo.png")
    m.add_argument("--image", type=int, default=None,
                   help="Kodak image number (default: 23 if Kodak is on disk, else the photo shipped in the package)")
    m.add_argument("--codec", default=None, help="codec (default: the kit's default)")
    m.add_argument("--bpp", type=float, default=0.07)
    m.add_argument("--out", type=Path, default=Path("figures"))
    _add_common(m)

    t = sub.add_parser("train", help="train egc-tiny or a codec's learned parts")
    tsub = t.add_subparsers(dest="what", required=True)
    tb = tsub.add_parser("backbone", help="train egc-tiny (phases vae, decoder, unet; resumable)")
    tb.add_argument("--phase", choices=("vae", "decoder", "unet"), required=True)
    tb.add_argument("--ckpt", default="checkpoints/egc-tiny", help="checkpoint folder (outside the repository)")
    tb.add_argument("--data", default=None, help="training photo folders, joined by ':' (default: $EGC_DATA/photos-train)")
    tb.add_argument("--steps", type=int, default=1000)
    tb.add_argument("--batch-size", type=int, default=8)
    tb.add_argument("--crop", type=int, default=128)
    tb.add_argument("--lr", type=float, default=None,
                    help="learning rate (default 4e-4 for a new run; a resumed run keeps its checkpoint's rates unless given)")
    tb.add_argument("--snr-gamma", type=float, default=None, help="unet phase: Min-SNR loss weight gamma (the paper's choice is 5)")
    tb.add_argument("--t-sampling", choices=("uniform", "low-mid"), default="uniform",
                    help="unet phase: training levels; low-mid draws more of the low and middle noise levels the codecs decode at")
    tb.add_argument("--cond-lr-scale", type=float, default=1.0, help="unet phase: learning-rate factor of the conditioning path")
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument("--max-minutes", type=float, default=None)
    tb.add_argument("--threads", type=int, default=None)
    tb.add_argument("--device", default="auto")
    tb.add_argument("--init-from", default=None, help="start from an exported folder (e.g. egc_lite/weights/egc-tiny) when --ckpt is empty")
    tb.add_argument("--adv-weight", type=float, default=0.0,
                    help="vae/decoder: adversarial (PatchGAN, hinge) gradient relative to the reconstruction's (0 = off)")
    tb.add_argument("--adv-start", type=int, default=0, help="vae/decoder: step from which the critic and its term start")
    tb.add_argument("--lf-weight", type=float, default=0.0, help="vae/decoder: weight of the L1 between 8x8 block means (colour)")
    tb.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="auto: bf16 autocast only where the CPU (AMX, AVX-512 BF16) or GPU runs it fast")
    tb.add_argument("--vae-type", choices=("kl", "tiny", "taef2"), default=None,
                    help="new run: the autoencoder, kl (AutoencoderKL, the default) or tiny (AutoencoderTiny, TAESD's class: "
                         "plain convolutions, deterministic latent; widths 64,64,64,64 unless --vae-channels says), or taef2 "
                         "(the pretrained taef2, 32 latent channels: give --vae-weights; only the unet phase trains)")
    tb.add_argument("--vae-weights", default=None, help="--vae-type taef2: folder of taef2's released files and LICENSE")
    tb.add_argument("--schedule-shift", type=float, default=None,
                    help="new run: divide every noise level's SNR by shift^2 (1 = Stable Diffusion's schedule; about 3 for taef2's 32 channels)")
    tb.add_argument("--prediction-type", choices=("epsilon", "v_prediction"), default=None,
                    help="new run: what the UNet predicts (v_prediction weighs the noisy levels, where content forms, like a clean-image loss)")
    tb.add_argument("--scales", type=_float_list, default=None,
                    help="scales of each photo to crop from (default 1,0.75,0.6,0.45); the unet phase encodes each once")
    for name, what in (("vae-channels", "VAE widths per level"), ("unet-channels", "UNet widths per level"),
                       ("vae-blocks", "AutoencoderTiny blocks per encoder level, fine to coarse (TAESD: 1,3,3,3)")):
        tb.add_argument(f"--{name}", type=_int_list, default=None, help=f"new run: {what}, comma-separated (e.g. 64,128,256,256)")
    for name, what in (("latent-channels", "latent channels"), ("vae-norm-groups", "VAE GroupNorm groups"),
                       ("unet-layers", "UNet ResNet layers per level"), ("unet-norm-groups", "UNet GroupNorm groups")):
        tb.add_argument(f"--{name}", type=int, default=None, help=f"new run: {what} (a resumed run keeps its checkpoint's)")
    tp = tsub.add_parser("textinv-prior", help="fit codec A's embedding prior on training photos and save it beside the backbone")
    tp.add_argument("--backbone", default=DEFAULT_BACKBONE)
    tp.add_argument("--data", default=None, help="training photos folder (default: $EGC_DATA/photos-train)")
    tp.add_argument("--images", type=int, default=16)
    tp.add_argument("--inversion-steps", type=int, default=150)
    tp.add_argument("--token-start", type=int, default=None, help="first optimized position (default: as codec A)")
    tp.add_argument("--n-tokens", type=int, default=None, help="optimized positions (default: as codec A)")
    tp.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    tp.add_argument("--out", default=None,
                    help="file or folder to write the prior to (default: the user's prior folder for the backbone id, "
                         "~/.cache/egc_lite/priors/<id>/; never the model's folder)")
    td = tsub.add_parser("diffeic", help="train one DiffEIC rate point (codec B) on a frozen backbone (resumable)")
    td.add_argument("--lmbda", type=float, required=True, help="rate weight lambda (larger = fewer bits; reference: 1..16)")
    td.add_argument("--backbone", default=DEFAULT_BACKBONE)
    td.add_argument("--ckpt", default="checkpoints/diffeic", help="checkpoint folder (outside the repository)")
    td.add_argument("--data", default=None, help="training photo folders, joined by ':' (default: $EGC_DATA/photos-train)")
    td.add_argument("--steps", type=int, default=20000)
    td.add_argument("--batch-size", type=int, default=8)
    td.add_argument("--crop", type=int, default=128, help="crop side, a multiple of 64")
    td.add_argument("--lr", type=float, default=1e-4)
    td.add_argument("--n", type=int, default=64, help="hyper-latent channels N")
    td.add_argument("--m", type=int, default=96, help="latent channels M")
    td.add_argument("--control-ratio", type=float, default=0.2, help="control module width / UNet width")
    td.add_argument("--control", choices=("cddm", "narrow"), default=SHIPPED_DESIGN["control"],
                    help="control module: cddm (the reference's, default) or narrow (the first egc-tiny rate points')")
    td.add_argument("--z0-modulation", choices=("concat", "sft"), default=SHIPPED_DESIGN["z0_modulation"],
                    help="how the VAE latent enters the encoder: concatenated in g_a, or SFT layers in g_a and h_a (the reference's, the default)")
    td.add_argument("--sft-channels", type=int, default=32, help="width of the SFT condition maps (with --z0-modulation sft)")
    td.add_argument("--context", choices=("none", "checkerboard"), default=SHIPPED_DESIGN["context"],
                    help="entropy model context of y (default: the checkerboard context, as the shipped rate points)")
    td.add_argument("--context-slices", type=_int_list, default=(),
                    help="channel slices of the checkerboard context (ELIC style), comma-separated, summing to --m (e.g. 8,8,16,32,32)")
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--max-minutes", type=float, default=None)
    td.add_argument("--threads", type=int, default=None)
    td.add_argument("--device", default="auto")
    td.add_argument("--init-from", default=None, help="start from another rate point's checkpoint folder (fine-tune to this --lmbda)")
    td.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="of the denoiser's forward and backward (the rate stays float32); auto: bf16 where it is fast")
    tdx = tsub.add_parser("diffeic-export", help="write a DiffEIC checkpoint as a loadable rate point folder")
    tdx.add_argument("--ckpt", default="checkpoints/diffeic")
    tdx.add_argument("--out", default=None, help="output folder")
    tdx.add_argument("--quality", type=int, default=None,
                     help="write to the user's rate points for the checkpoint's backbone id (~/.cache/egc_lite/diffeic/<id>/q{N})")
    te = tsub.add_parser("export", help="write trained egc-tiny checkpoints as a diffusers folder")
    te.add_argument("--ckpt", default="checkpoints/egc-tiny")
    te.add_argument("--out", default=None, help="output folder (default: the package's weights/egc-tiny)")
    te.add_argument("--vae-only", action="store_true",
                    help="replace only the autoencoder of the backbone in --out (after a decoder fine-tune; the encoder must match)")
    _add_eval_and_sweep(sub)
    return parser


def _add_eval_and_sweep(sub) -> None:
    """``egc eval`` and ``egc sweep`` (their code lives in egc_lite.evaluate, imported when they run)."""
    e = sub.add_parser("eval", help="codecs x rates x images: one table, a summary and RD plots (resumable)")
    e.add_argument("--codecs", nargs="+", default=["guide", "jpeg", "webp", "avif"],
                   help="any of guide textinv diffeic jpeg webp avif (default: guide jpeg webp avif)")
    e.add_argument("--bpp", type=float, nargs="*", default=[], help="target rates")
    e.add_argument("--quality", type=int, nargs="*", default=[], help="quality points (diffeic/textinv 1..5, classic 0..100)")
    e.add_argument("--images", type=Path, default=None, help="folder of images (default: Kodak)")
    e.add_argument("--limit", type=int, default=None, help="the first N images only")
    e.add_argument("--max-side", type=int, default=None, help="downscale images to this longer side")
    e.add_argument("--out", type=Path, default=Path("results/eval"), help="results folder; reruns resume (default results/eval)")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--sf", type=float, default=None)
    e.add_argument("--sc", type=float, default=None)
    e.add_argument("--guidance-mode", choices=GUIDANCE_MODE_CHOICES, default=None, help="textinv: compression guidance mode")
    e.add_argument("--start-step", type=int, default=None)
    e.add_argument("--eta", type=float, default=None)
    e.add_argument("--inversion-steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--save-recon", action="store_true", help="also write every decoding as PNG under OUT/recon")
    e.add_argument("--fid", action="store_true", help="FID/KID at the HiFiC protocol (needs Inception weights; implies --save-recon)")
    _add_common(e)

    w = sub.add_parser("sweep", help="run a notebook over a parameter grid (papermill), gather one table (resumable)")
    w.add_argument("grid", type=Path, help="the grid file (YAML)")
    w.add_argument("--workers", type=int, default=1, help="parallel points (local processes or Dask workers)")
    w.add_argument("--engine", default="processes", help="processes (this machine) or dask (default: processes)")
    w.add_argument("--scheduler", default=None, help="dask: address of a running scheduler, e.g. tcp://node01:8786")
    w.add_argument("--cluster", default="local", help="dask: local, slurm or pbs (dask-jobqueue; options from the grid's 'cluster')")
    w.add_argument("--jobs", type=int, default=None, help="dask-jobqueue: number of batch jobs (default: --workers)")
    w.add_argument("--figures", type=Path, default=None, help="folder for the plots (default: OUT/figures)")
    w.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_sweep(args) -> int:
    from .evaluate.grid import RunOptions, load_spec, run_sweep

    opts = RunOptions(engine=args.engine, workers=args.workers, scheduler=args.scheduler, cluster=args.cluster,
                      jobs=args.jobs, figures=args.figures)
    r = run_sweep(load_spec(args.grid), opts)
    print(f"{r.ran} points run ({r.failed} failed), {r.skipped} already done, {r.seconds:.0f} s; results in {r.out}")
    return 1 if r.failed else 0


def cmd_eval(args) -> int:
    from .evaluate.runner import CodecOverrides, EvalConfig, run_eval

    ov = CodecOverrides(steps=args.steps, sf=args.sf, sc=args.sc, guidance_mode=args.guidance_mode, start_step=args.start_step, eta=args.eta,
                        inversion_steps=args.inversion_steps, seed=args.seed)
    cfg = EvalConfig(out=args.out, codecs=tuple(args.codecs), bpp=tuple(args.bpp), quality=tuple(args.quality),
                     images=args.images, limit=args.limit, max_side=args.max_side, backbone=args.backbone,
                     device=args.device, overrides=ov, save_recon=args.save_recon, fid=args.fid)
    r = run_eval(cfg)
    print(r.summary)
    print(f"\n{r.ran} rows run, {r.skipped} already done, {r.failed} failed, {r.seconds:.0f} s; tables and plots in {r.out}")
    return 0


def _progress(args: argparse.Namespace) -> None:
    if getattr(args, "no_progress", False):
        from .progress import set_progress

        set_progress(False)


def _make_codec(name: str, args: argparse.Namespace):
    """The codec ``name`` with the command line's backbone and codec files (prior, rate points, token window)."""
    from dataclasses import replace

    from .codecs import load_codec

    if name not in ("textinv", "diffeic"):
        return load_codec(name, args.backbone, args.device)
    from .backbone import load_backbone
    from .codecs import DiffEICCodec, TextInvCodec, TextInvConfig

    backbone = load_backbone(args.backbone, device=args.device)
    if name == "textinv":
        cfg = TextInvConfig(prior_path=str(args.prior) if args.prior else None)
        inv = cfg.inversion
        if getattr(args, "token_start", None) is not None:
            inv = replace(inv, token_start=args.token_start)
        if getattr(args, "n_tokens", None) is not None:
            inv = replace(inv, n_tokens=args.n_tokens)
        share = getattr(args, "embedding_share", None)
        return TextInvCodec(backbone, replace(cfg, inversion=inv, embedding_share=cfg.embedding_share if share is None else share))
    return DiffEICCodec(backbone, weights_dir=args.weights)


def cmd_compress(args: argparse.Namespace) -> int:
    from .codecs import CompressOptions
    from .coding.bitstream import write_bitstream
    from .data import load_image

    x = load_image(args.image)
    opts = CompressOptions(bpp=args.bpp, quality=args.quality, seed=args.seed, steps=args.steps,
                           guidance_scale=args.sf, compression_guidance=args.sc, guidance_mode=args.guidance_mode, start_step=args.start_step, eta=args.eta,
                           inversion_steps=args.inversion_steps, consistency=args.consistency,
                           consistency_until=args.consistency_until)
    codec = _make_codec(args.codec, args)
    t0 = time.perf_counter()
    bs = codec.compress(x, opts)
    n = write_bitstream(args.output, bs)
    h, w = x.shape[1:]
    note = ""
    if args.bpp is not None and bs.bpp() > args.bpp * 1.0001:
        note = f" (above the {args.bpp} bpp target: the codec cannot go lower on this image)"
    print(f"{args.output}: {n} bytes, {8 * n / (h * w):.4f} bpp, {w}x{h}, codec {bs.codec}, "
          f"{time.perf_counter() - t0:.1f} s{note}")
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from .coding.bitstream import read_bitstream
    from .data import save_image
    from .errors import ParameterError

    if not 1 <= args.samples <= 64:
        raise ParameterError(f"--samples must be in 1..64, got {args.samples}")
    bs = read_bitstream(args.file)
    codec = _make_codec(bs.codec, args)
    outputs = []
    for k in range(args.samples):
        x = codec.decompress(bs, sample=k)
        path = args.output if args.samples == 1 else args.output.with_name(f"{args.output.stem}_{k}{args.output.suffix or '.png'}")
        save_image(x, path)
        outputs.append(str(path))
    print(f"wrote {', '.join(outputs)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .coding.bitstream import describe, read_bitstream

    bs = read_bitstream(args.file)
    print(describe(bs, num_bytes=os.path.getsize(args.file)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .evaluate.demo import run_demo

    print(run_demo(image=args.image, codec=args.codec, bpp=args.bpp, out_dir=args.out, backbone=args.backbone, device=args.device))
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 64,128,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,0.6, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _arch_from_args(args: argparse.Namespace):
    """egc-tiny's default architecture with the command line's changes (a resumed phase keeps its checkpoint's)."""
    from dataclasses import replace

    from .models.tiny import TAESD_CHANNELS
    from .training.backbone import EGC_TINY_CONFIG

    names = {"vae_type": "vae_type", "vae_channels": "vae_channels", "vae_blocks": "vae_blocks", "unet_channels": "unet_channels",
             "latent_channels": "latent_channels", "vae_norm_groups": "vae_norm_groups", "unet_layers": "unet_layers_per_block",
             "unet_norm_groups": "unet_norm_groups"}
    names.update(schedule_shift="schedule_shift", prediction_type="prediction_type")
    changes = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}
    if changes.get("vae_type") == "taef2":
        changes.setdefault("latent_channels", 32)
    if changes.get("vae_type") == "tiny" and "vae_channels" not in changes:
        changes["vae_channels"] = TAESD_CHANNELS
    return replace(EGC_TINY_CONFIG, **changes)


def cmd_train(args: argparse.Namespace) -> int:
    if args.what == "backbone":
        from .training.backbone import BackboneTrainConfig, train

        cfg = BackboneTrainConfig(phase=args.phase, ckpt_dir=args.ckpt, data_dir=args.data, steps=args.steps,
                                  batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
                                  max_minutes=args.max_minutes, threads=args.threads, device=args.device,
                                  init_from=args.init_from, snr_gamma=args.snr_gamma, t_sampling=args.t_sampling,
                                  cond_lr_scale=args.cond_lr_scale, adv_weight=args.adv_weight, adv_start=args.adv_start,
                                  lf_weight=args.lf_weight, precision=args.precision, arch=_arch_from_args(args),
                                  vae_weights=args.vae_weights, **({"scales": tuple(args.scales)} if args.scales else {}))
        print(train(cfg))
        return 0
    if args.what == "textinv-prior":
        from .backbone import load_backbone
        from .codecs.textual_inversion import InversionConfig
        from .data import list_images, load_image, training_photos_dir
        from .training.textinv_prior import fit_embedding_prior
        from .weights import prior_path

        b = load_backbone(args.backbone, device=args.device)
        folder = Path(args.data) if args.data else training_photos_dir()
        images = [load_image(p) for p in list_images(folder)[: args.images]]
        cfg = InversionConfig(steps=args.inversion_steps, lmbda=0.0, token_start=args.token_start, n_tokens=args.n_tokens)
        prior = fit_embedding_prior(b, images, cfg)
        out = Path(args.out) if args.out else prior_path(b.backbone_id)
        print(prior.save(out), f"sigma mean {float(prior.sigma.mean()):.4f}")
        return 0
    if args.what == "diffeic":
        from .models.diffeic.config import DiffEICConfig
        from .training.diffeic import DiffEICTrainConfig, train_diffeic

        model = DiffEICConfig(N=args.n, M=args.m, control=args.control, control_ratio=args.control_ratio, lmbda=args.lmbda,
                              z0_modulation=args.z0_modulation, sft_channels=args.sft_channels, context=args.context,
                              context_slices=tuple(args.context_slices))
        cfg = DiffEICTrainConfig(ckpt_dir=args.ckpt, data_dir=args.data, model=model, steps=args.steps,
                                 batch_size=args.batch_size, crop=args.crop, lr=args.lr, seed=args.seed,
                                 max_minutes=args.max_minutes, threads=args.threads, init_from=args.init_from,
                                 precision=args.precision)
        print(train_diffeic(cfg, args.backbone, device=args.device))  # the Accelerator first, then the backbone on its device
        return 0
    if args.what == "diffeic-export":
        from .errors import ParameterError

        if (args.out is None) == (args.quality is None):  # checked before the slow imports
            raise ParameterError("give either --out FOLDER or --quality N")
        from .codecs.diffeic import QUALITY_LAMBDA
        from .training.diffeic import checkpoint_backbone_id, export_diffeic
        from .weights import rate_points_root

        if args.quality is not None and args.quality not in QUALITY_LAMBDA:
            raise ParameterError(f"--quality must be one of {sorted(QUALITY_LAMBDA)}, got {args.quality}")
        out = args.out or rate_points_root() / checkpoint_backbone_id(args.ckpt) / f"q{args.quality}"
        print(export_diffeic(args.ckpt, out))
        return 0
    if args.what == "export":
        from .training.backbone import export_backbone, export_vae

        if args.vae_only:
            from .weights import EGC_TINY_DIR

            print(export_vae(args.ckpt, args.out or EGC_TINY_DIR))
        else:
            print(export_backbone(args.ckpt, args.out))
        return 0
    return 2


COMMANDS = {"compress": cmd_compress, "decompress": cmd_decompress, "info": cmd_info, "demo": cmd_demo, "train": cmd_train,
            "eval": cmd_eval, "sweep": cmd_sweep}


def _quiet_dependencies() -> None:
    """Keep the terminal for egc's own messages: dependencies' deprecation notes are not the user's business."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("diffusers", "transformers", "bitsandbytes", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _one_line_warnings() -> None:
    """Print egc_lite's own warnings as ``egc: warning: ...`` (one line, no source line)."""
    import warnings

    from .errors import EGCWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EGCWarning):
            print(f"egc: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _progress(args)
    _quiet_dependencies()
    _one_line_warnings()
    try:
        return COMMANDS[args.command](args)
    except EGCError as exc:
        print(f"egc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("egc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
