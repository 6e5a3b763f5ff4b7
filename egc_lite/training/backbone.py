"""Training of ``egc-tiny`` on the training photos (never on Kodak).

Three phases, each resumable from ``<ckpt>/<phase>.pt``:

1. ``vae``: the whole autoencoder on random crops (L1 + MSE + a tiny KL weight); an
   ``AutoencoderKL``, or with ``arch.vae_type="tiny"`` an ``AutoencoderTiny`` (deterministic latent:
   no sampling, no KL term).
2. ``decoder``: the encoder is frozen (the latent space no longer moves) and only the decoder
   keeps training, so it can run beside phase 3, and the UNet and the codecs trained on the
   latents stay valid.

Pixel losses alone give blur (the minimiser is a posterior mean), so phases 1 and 2 can add
an adversarial term (``adv_weight`` > 0, from step ``adv_start``): a PatchGAN critic with
spectral normalisation and the hinge loss, as SD's autoencoder is trained (there with a
perceptual loss too, whose VGG weights cannot be fetched here), and a low-frequency term
(``lf_weight``: L1 between 8x8 block means) that holds colour and layout while the critic
pushes detail.
3. ``unet``: the UNet and the conditioning encoder on latents of the frozen encoder: the
   noise-prediction loss :math:`\\mathbb{E}_{t,\\epsilon}\\|\\epsilon-\\epsilon_\\theta(z_t,t,e)\\|^2`
   with ``e`` from :class:`~egc_lite.models.tiny.ImageTokenEncoder`, replaced by the null embedding with
   probability ``p_uncond`` (classifier-free guidance needs both).

``export`` writes the diffusers folder that :func:`egc_lite.backbone.load_backbone` reads.
Runs on CPU or CUDA; under ``accelerate launch`` each process trains on its own seeded stream
and gradients are averaged by Accelerate.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.autoencoder import decoder_last_layer, is_tiny, load_vae, save_vae, vae_latent
from ..models.tiny import ImageTokenEncoder, TinyBackboneConfig, build_components
from ..precision import autocast, prepare_module, resolve_precision
from ..progress import progress
from .loop import CropSampler, append_log, data_folders, save_checkpoint
from .losses import (
    DenoisingLoss,
    PatchDiscriminator,
    ReconstructionLoss,
    adaptive_adversarial_weight,
    hinge_critic_loss,
    sample_timesteps,
    start_with_small_posterior_noise,
)

EGC_TINY_CONFIG = TinyBackboneConfig(global_cond_heads=4)
DEFAULT_LR = 4e-4


@dataclass
class BackboneTrainConfig:
    """Options of one training phase."""

    phase: str = "vae"  # vae | decoder | unet
    ckpt_dir: str = "checkpoints/egc-tiny"
    data_dir: str | None = None  # one folder or several joined by os.pathsep; None: the training photos folder
    steps: int = 1000
    batch_size: int = 8
    crop: int = 128
    lr: float | None = None  # None: DEFAULT_LR for a new run, the checkpoint's rates when resuming
    kl_weight: float = 1e-6
    p_uncond: float = 0.15
    snr_gamma: float | None = None  # Min-SNR weighting of the UNet loss (Hang et al. 2023); None: plain eps-MSE
    t_sampling: str = "uniform"  # unet phase: uniform | low-mid (sample_timesteps: more of the levels the codecs decode at)
    cond_lr_scale: float = 1.0  # unet phase: learning-rate factor of the conditioning path (_is_conditioning)
    ema_decay: float = 0.999
    adv_weight: float = 0.0  # vae/decoder phases: adversarial gradient / reconstruction gradient (adaptive_adversarial_weight); 0 = off
    adv_start: int = 0  # step from which the critic trains and the adversarial term counts
    lf_weight: float = 0.0  # vae/decoder phases: weight of the L1 between 8x8 block means (colour and layout)
    precision: str = "auto"  # auto | fp32 | bf16 (egc_lite.precision: bf16 only where the hardware runs it fast)
    seed: int = 0
    log_every: int = 25
    save_every: int = 200
    threads: int | None = None
    device: str = "auto"
    max_minutes: float | None = None
    arch: TinyBackboneConfig = EGC_TINY_CONFIG
    init_from: str | None = None  # an exported folder (e.g. the shipped egc-tiny) to start from when no checkpoint exists
    vae_weights: str | None = None  # arch.vae_type "taef2": the folder of taef2's released files (vae.pt is made from them)
    scales: tuple[float, ...] = (1.0, 0.75, 0.6, 0.45)  # pre-scaled copies of each photo (CropSampler; the unet phase's bank)


# ---------------------------------------------------------------------------------- the latent bank
@torch.no_grad()
def latent_bank(vae, sampler: CropSampler, path: Path, dev: torch.device, precision: str = "fp32") -> list[torch.Tensor]:
    """Deterministic latents (:func:`~egc_lite.models.autoencoder.vae_latent`, unscaled) of every pre-scaled
    photo, computed once and cached (float16).

    The encoder is frozen once phase 1 ends, so UNet training crops these instead of encoding
    image crops at every step (a crop of the latent stands in for the latent of the crop). They are
    encoded in the training ``precision`` (bf16 where fast: 2.8x faster for taef2 on an AVX-512 BF16 CPU);
    they are training data, not symbols of a file, so float32 is not needed.
    """
    if path.exists():
        return load_latent_bank(path)
    encoder = prepare_module(vae, precision) if precision == "bf16" else vae
    bank = []
    for img in progress(sampler.pyramid, desc="encoding photos"):
        x = img[None].float().div(255).to(dev)
        h, w = x.shape[-2:]
        x = x[..., : h // 8 * 8, : w // 8 * 8]
        if precision == "bf16":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev, precision):
            bank.append(vae_latent(encoder, x * 2 - 1)[0].float().cpu().contiguous().half())
    torch.save(bank, path)
    return [z.float() for z in bank]


def load_latent_bank(path: Path) -> list[torch.Tensor]:
    """A cached latent bank (:func:`latent_bank`) as float32 tensors."""
    return [z.float() for z in torch.load(path, map_location="cpu", weights_only=False)]


def latent_crops(bank: list[torch.Tensor], n: int, size: int, rng: random.Random) -> torch.Tensor:
    """``n`` random ``size x size`` crops of the latent bank, flipped half of the time."""
    out = []
    for _ in range(n):
        z = bank[rng.randrange(len(bank))]
        _, h, w = z.shape
        c = min(size, h, w)
        y, x = rng.randrange(h - c + 1), rng.randrange(w - c + 1)
        t = z[:, y : y + c, x : x + c]
        if rng.random() < 0.5:
            t = t.flip(-1)
        if c != size:
            t = F.interpolate(t[None], size=(size, size), mode="bilinear")[0]
        out.append(t)
    return torch.stack(out)


def _state_from_export(folder: Path, phase: str, ckpt: Path) -> dict:
    """A step-0 checkpoint built from an exported folder, so training can go on from shipped
    weights when the original checkpoints are gone (the optimizer starts afresh)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    vae = load_vae(folder).float()
    index = folder / "model_index.json"
    arch = json.loads(index.read_text()).get("config") if index.exists() else None
    config = {"arch": arch} if arch else {}
    if not (ckpt / "vae.pt").exists():  # later phases read the VAE (and its architecture) from here
        save_checkpoint(ckpt / "vae.pt", {"vae": vae.state_dict(), "step": 0, "config": config})
    if phase in ("vae", "decoder"):  # the folder's autoencoder (kl or tiny), whatever the command line's architecture says
        return {"vae": vae.state_dict(), "step": 0, "opt": None, "config": config}
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True).float()
    return {"unet": unet.state_dict(), "ema": unet.state_dict(), "encoder": load_file(folder / "token_encoder.safetensors"),
            "null_cond": load_file(folder / "null_cond.safetensors")["null_cond"], "step": 0, "opt": None}


def _load_unet(unet, weights: dict, partial: bool) -> None:
    """Load UNet weights; ``partial`` (a start from exported weights) lets modules that the older
    architecture lacked (the pooled-token path) keep their zero initialisation."""
    missing, unexpected = unet.load_state_dict(weights, strict=not partial)
    new = [k for k in missing if not k.startswith("add_embedding.")]
    if unexpected or new:
        raise ValueError(f"UNet weights do not fit this architecture: missing {new[:5]}, unexpected {unexpected[:5]}")


def _is_conditioning(name: str) -> bool:
    """Parameters of the conditioning path: token encoder, null embedding, cross-attention, pooled path."""
    return name.startswith(("encoder.", "null_cond", "unet.add_embedding.")) or ".attn2." in name


def _param_groups(model: nn.Module, cfg: BackboneTrainConfig) -> list[dict]:
    """AdamW groups: everything at ``lr``; in the unet phase the conditioning path in a second group
    at ``lr * cond_lr_scale``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    lr = DEFAULT_LR if cfg.lr is None else cfg.lr
    if cfg.phase != "unet":
        return [{"params": [p for _, p in named], "lr": lr}]
    return [{"params": [p for n, p in named if not _is_conditioning(n)], "lr": lr},
            {"params": [p for n, p in named if _is_conditioning(n)], "lr": lr * cfg.cond_lr_scale}]


def _regroup_optimizer_state(saved: dict, model: nn.Module, groups: list[dict]) -> dict:
    """A saved optimizer state laid out for ``groups``: checkpoints written with all parameters in
    one group (before the conditioning group existed) are split, moments kept."""
    if len(saved["param_groups"]) == len(groups):
        return saved
    if len(saved["param_groups"]) != 1:
        raise ValueError(f"optimizer state with {len(saved['param_groups'])} groups does not fit {len(groups)}")
    old_index = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    hyper = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    state, new_groups, i = {}, [], 0
    for g in groups:
        ids = []
        for p in g["params"]:
            if old_index[id(p)] in saved["state"]:
                state[i] = saved["state"][old_index[id(p)]]
            ids.append(i)
            i += 1
        new_groups.append({**hyper, "params": ids})
    return {"state": state, "param_groups": new_groups}


def pretrained_vae_checkpoint(cfg: BackboneTrainConfig, ckpt: Path) -> Path:
    """``vae.pt`` made from taef2's released files (``cfg.vae_weights``), with its licence text: the ``unet``
    phase then trains in its latent space, and ``export`` ships the weights with the licence beside them."""
    from ..errors import ParameterError
    from ..models.taef2 import from_released

    if cfg.phase != "unet":
        raise ParameterError("taef2 is pretrained: only the unet phase trains on it (its vae and decoder phases do not run)")
    if not cfg.vae_weights:
        raise ParameterError("a taef2 backbone needs --vae-weights DIR (the folder with taef2_encoder.pth, taef2_decoder.pth, LICENSE)")
    folder = Path(cfg.vae_weights).expanduser()
    vae = from_released(folder)
    licence = folder / "LICENSE"
    if not licence.is_file():
        raise ParameterError(f"{licence} is missing: taef2's MIT licence must travel with its weights")
    path = ckpt / "vae.pt"
    save_checkpoint(path, {"vae": vae.state_dict(), "step": 0, "config": {"arch": asdict(cfg.arch)}, "license": licence.read_text()})
    return path


# ---------------------------------------------------------------------------------- phases
def train(cfg: BackboneTrainConfig) -> Path:
    """Run (or resume) one phase; returns the checkpoint path.

    Runs under Accelerate: ``accelerate launch -m egc_lite.cli train backbone ...`` trains on
    several GPUs (each process draws its own seeded crops; gradients are averaged); a plain
    call trains on one device. Only the main process logs and saves.
    """
    from accelerate import Accelerator

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = Accelerator(cpu=cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()))
    dev = acc.device
    torch.manual_seed(cfg.seed + acc.process_index)
    ckpt = Path(cfg.ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    sampler = CropSampler(data_folders(cfg.data_dir), scales=tuple(cfg.scales), seed=cfg.seed + acc.process_index, min_side=cfg.crop)
    path = ckpt / f"{cfg.phase}.pt"
    if cfg.arch.vae_type == "taef2" and not (ckpt / "vae.pt").exists() and acc.is_main_process:
        pretrained_vae_checkpoint(cfg, ckpt)
    acc.wait_for_everyone()
    state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    if state is None and cfg.init_from:
        state = _state_from_export(Path(cfg.init_from), cfg.phase, ckpt)
    cfg = replace(cfg, arch=run_arch(cfg, ckpt, state))
    comps = build_components(cfg.arch, seed=cfg.seed)
    vae = comps.vae
    start = time.time()
    first = state["step"] if state is not None else 0
    sampler.rng.seed(cfg.seed * 1_000_003 + acc.process_index * 7919 + first)  # resumable stream

    if cfg.phase in ("vae", "decoder"):
        if state is not None:
            vae.load_state_dict(state["vae"])
        elif cfg.phase == "decoder":
            vae.load_state_dict(torch.load(ckpt / "vae.pt", map_location="cpu", weights_only=False)["vae"])
        elif not is_tiny(vae):
            start_with_small_posterior_noise(vae)
        model = ReconstructionLoss(vae, cfg.kl_weight, freeze_encoder=cfg.phase == "decoder", lf_weight=cfg.lf_weight)
        extra: dict = {}
    elif cfg.phase == "unet":
        vae.load_state_dict(torch.load(ckpt / "vae.pt", map_location="cpu", weights_only=False)["vae"])
        vae.requires_grad_(False).eval().to(dev)
        model = DenoisingLoss(comps.unet, ImageTokenEncoder(cfg.arch), comps.null_cond, comps.scheduler.alphas_cumprod, cfg.p_uncond,
                              cfg.snr_gamma, cfg.arch.prediction_type)
        if state is not None:
            _load_unet(model.unet, state["unet"], partial=state["opt"] is None)
            model.encoder.load_state_dict(state["encoder"])
            model.null_cond.data.copy_(state["null_cond"])
        ema = copy.deepcopy(model.unet).requires_grad_(False).to(dev)
        if state is not None:
            _load_unet(ema, state["ema"], partial=state["opt"] is None)
        bank = latent_bank(vae, sampler, ckpt / "latents.pt", dev, resolve_precision(dev, cfg.precision)) if acc.is_main_process else None
        acc.wait_for_everyone()
        bank = bank or load_latent_bank(ckpt / "latents.pt")
        latent_scale = (state or {}).get("latent_scale") or float(1.0 / torch.cat([z.flatten() for z in bank]).std())
        extra = {"latent_scale": latent_scale}
    else:
        raise ValueError(f"unknown phase {cfg.phase!r}: use vae, decoder or unet")

    groups = _param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    if state is not None and state.get("opt") is not None:
        opt.load_state_dict(_regroup_optimizer_state(state["opt"], model, groups))
        if cfg.lr is not None:  # a resumed run given a learning rate switches to it
            for group, fresh in zip(opt.param_groups, groups):
                group["lr"] = fresh["lr"]
    precision = resolve_precision(dev, cfg.precision)
    model = prepare_module(model, precision)
    critic = critic_opt = None
    if cfg.adv_weight > 0 and cfg.phase != "unet":
        critic = prepare_module(PatchDiscriminator(), precision).to(dev)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=groups[0]["lr"], betas=(0.5, 0.9), weight_decay=0.0)
        if state is not None and state.get("critic") is not None:
            critic.load_state_dict(state["critic"])
            critic_opt.load_state_dict(state["critic_opt"])
        critic, critic_opt = acc.prepare(critic, critic_opt)
    model, opt = acc.prepare(model, opt)
    n_train = comps.scheduler.config.num_train_timesteps
    running = 0.0
    for step in progress(range(first, cfg.steps), desc=f"egc-tiny {cfg.phase}", total=cfg.steps - first):
        if cfg.phase == "unet":
            z0 = latent_crops(bank, cfg.batch_size, cfg.crop // 8, sampler.rng).to(dev) * latent_scale
            t = sample_timesteps(z0.shape[0], n_train, cfg.t_sampling, dev)
            drop = torch.rand(z0.shape[0], device=dev) < cfg.p_uncond
            with autocast(dev, precision):
                loss = model(z0, t, torch.randn_like(z0), drop)
            record = {"loss": loss}
        else:
            x = sampler.batch(cfg.batch_size, cfg.crop).to(dev)
            if precision == "bf16":
                x = x.contiguous(memory_format=torch.channels_last)
            adversarial = critic is not None and step >= cfg.adv_start
            with autocast(dev, precision):
                loss, mse, kl, xr = model(x)
                if adversarial:  # the generator's hinge term; the critic's gradients are not kept
                    critic.requires_grad_(False)
                    gen_loss = -critic(xr).float().mean()
                    critic.requires_grad_(True)
            if adversarial:
                weight = cfg.adv_weight * adaptive_adversarial_weight(loss, gen_loss, decoder_last_layer(acc.unwrap_model(model).vae))
                loss = loss + weight * gen_loss
            record = {"mse": mse, "kl": kl}
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        if cfg.phase != "unet" and adversarial:  # the critic's step, after the generator's backward used it
            with autocast(dev, precision):
                critic_loss = hinge_critic_loss(critic(x).float(), critic(xr.detach()).float())
            critic_opt.zero_grad(set_to_none=True)
            acc.backward(critic_loss)
            critic_opt.step()
            record.update({"gen": gen_loss.detach(), "critic": critic_loss.detach(), "adv_weight": weight})
        inner = acc.unwrap_model(model)
        if cfg.phase == "unet":
            with torch.no_grad():
                d = min(cfg.ema_decay, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), inner.unet.parameters()):
                    pe.lerp_(p, 1 - d)
        running += record["loss" if cfg.phase == "unet" else "mse"].item()
        done = step + 1
        if done % cfg.log_every == 0 and acc.is_main_process:
            mean = running / cfg.log_every
            rec = {"step": done, "minutes": (time.time() - start) / 60}
            rec.update({"loss": mean} if cfg.phase == "unet" else {"mse": mean, "psnr": -10 * math.log10(mean), "kl": float(record["kl"].detach())})
            rec.update({k: float(record[k]) for k in ("gen", "critic", "adv_weight") if k in record})
            append_log(ckpt / f"{cfg.phase}_log.jsonl", rec)
        if done % cfg.log_every == 0:
            running = 0.0
        timeout = cfg.max_minutes is not None and (time.time() - start) / 60 > cfg.max_minutes
        if (done % cfg.save_every == 0 or done == cfg.steps or timeout) and acc.is_main_process:
            blob = {"opt": opt.state_dict(), "step": done, "config": asdict(cfg), **extra}
            if cfg.phase == "unet":
                blob.update({"unet": inner.unet.state_dict(), "ema": ema.state_dict(), "encoder": inner.encoder.state_dict(),
                             "null_cond": inner.null_cond.detach().cpu()})
            else:
                blob["vae"] = inner.vae.state_dict()
                if critic is not None:
                    blob.update({"critic": acc.unwrap_model(critic).state_dict(), "critic_opt": critic_opt.state_dict()})
            save_checkpoint(path, blob)
        if timeout:
            break
    return path


# ---------------------------------------------------------------------------------- export
VAE_FIELDS = ("vae_type", "vae_channels", "vae_layers_per_block", "vae_norm_groups", "vae_blocks", "latent_channels")


def run_arch(cfg: BackboneTrainConfig, ckpt: Path, state: dict | None) -> TinyBackboneConfig:
    """The architecture a phase trains: a resumed phase keeps its checkpoint's; the ``decoder`` and
    ``unet`` phases take the autoencoder's part from ``vae.pt`` (their latents are that VAE's)."""
    if state is not None and state.get("config", {}).get("arch") is not None:
        return checkpoint_arch(state)
    arch = cfg.arch
    if cfg.phase not in ("decoder", "unet") or not (ckpt / "vae.pt").exists():
        return arch
    vae_state = torch.load(ckpt / "vae.pt", map_location="cpu", weights_only=False)
    if vae_state.get("config", {}).get("arch") is not None:
        vae_arch = checkpoint_arch(vae_state)
        arch = replace(arch, **{k: getattr(vae_arch, k) for k in VAE_FIELDS})
    return arch


def checkpoint_arch(state: dict) -> TinyBackboneConfig:
    """The architecture a training checkpoint was made with (``EGC_TINY_CONFIG`` when it has none)."""
    arch = state.get("config", {}).get("arch")
    if arch is None:
        return EGC_TINY_CONFIG
    return TinyBackboneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})


def vae_from_checkpoint(path: str | Path):
    """The float32 autoencoder (``AutoencoderKL`` or ``AutoencoderTiny``) of a ``vae.pt`` / ``decoder.pt`` training checkpoint (for measuring it before export)."""
    from ..models.tiny import build_vae

    state = torch.load(path, map_location="cpu", weights_only=False)
    vae = build_vae(checkpoint_arch(state))
    vae.load_state_dict(state["vae"])
    return vae.eval()


def export_vae(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Replace only the autoencoder of the exported backbone in ``out_dir`` by the checkpoint's
    (``decoder.pt`` when that phase ran, else ``vae.pt``), keeping the folder's latent scale.

    Meant for a decoder fine-tune (phase ``decoder``): the encoder, and so the latent space that
    the UNet and the codecs were trained on, is unchanged; only the images decoded from it change.
    """
    from ..errors import ModelNotFoundError, ParameterError

    ckpt, out = Path(ckpt_dir), Path(out_dir)
    if not (out / "vae" / "config.json").exists():
        raise ModelNotFoundError(f"{out} has no vae/: export the whole backbone first (egc train export without --vae-only)")
    if not any((ckpt / f).exists() for f in ("decoder.pt", "vae.pt")):
        raise ModelNotFoundError(f"{ckpt} holds no decoder.pt or vae.pt: train the vae or decoder phase first")
    vae = load_vae(out)
    state = torch.load(ckpt / ("decoder.pt" if (ckpt / "decoder.pt").exists() else "vae.pt"), map_location="cpu", weights_only=False)
    encoder_before = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    vae.load_state_dict(state["vae"])
    moved = [k for k, v in encoder_before.items() if not torch.allclose(v.float(), vae.state_dict()[k].float(), atol=1e-3)]
    if moved:
        raise ParameterError(f"the checkpoint's encoder differs from the one in {out} ({moved[0]}, ...): "
                         "its latents would not fit the UNet; export the whole backbone instead")
    save_vae(vae.half(), out / "vae")
    index = out / "model_index.json"
    meta = json.loads(index.read_text()) if index.exists() else {}
    meta["vae_steps"] = state["step"]
    index.write_text(json.dumps(meta, indent=1))
    return out


def export_backbone(ckpt_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the trained phases as a diffusers folder (safetensors) that ``load_backbone`` reads.

    Weights are stored in float16. The VAE comes from ``decoder.pt`` when that phase ran (same encoder, better decoder), else
    from ``vae.pt``; the UNet is the EMA copy from ``unet.pt``. The conditioning encoder is kept
    beside the weights (``token_encoder.safetensors``) for reference; the codecs do not use it.
    """
    from safetensors.torch import save_file

    from ..backbone import NULL_COND_FILE
    from ..weights import EGC_TINY_DIR

    ckpt = Path(ckpt_dir)
    out = Path(out_dir) if out_dir else EGC_TINY_DIR
    vae_state = torch.load(ckpt / ("decoder.pt" if (ckpt / "decoder.pt").exists() else "vae.pt"), map_location="cpu", weights_only=False)
    unet_state = torch.load(ckpt / "unet.pt", map_location="cpu", weights_only=False)
    arch = checkpoint_arch(unet_state)
    comps = build_components(arch, seed=0)
    comps.vae.load_state_dict(vae_state["vae"])
    comps.vae.register_to_config(scaling_factor=float(unet_state["latent_scale"]))
    comps.unet.load_state_dict(unet_state["ema"])
    out.mkdir(parents=True, exist_ok=True)
    # stored in float16 (half the bytes in git); load_backbone casts to the run's dtype
    save_vae(comps.vae.half(), out / "vae")
    if vae_state.get("license"):  # a pretrained autoencoder's licence travels with its weights
        (out / "vae" / "LICENSE").write_text(vae_state["license"])
    comps.unet.half().save_pretrained(out / "unet", safe_serialization=True)
    comps.scheduler.save_pretrained(out / "scheduler")
    save_file({"null_cond": unet_state["null_cond"].float().contiguous()}, out / NULL_COND_FILE)
    encoder = ImageTokenEncoder(arch)
    encoder.load_state_dict(unet_state["encoder"])
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, out / "token_encoder.safetensors")
    (out / "model_index.json").write_text(json.dumps({"_class_name": "egc_lite.Backbone", "name": "egc-tiny",
                                                       "config": arch.to_dict(),
                                                       "vae_steps": vae_state["step"], "unet_steps": unet_state["step"]}, indent=1))
    return out
