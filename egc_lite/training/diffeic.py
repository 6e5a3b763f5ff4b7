"""Training of one DiffEIC rate point (codec B) on the training photos, on top of a frozen backbone;
its checkpoint and export; and, for the notebooks, the shipped rate points or one trained on the spot
(:func:`load_or_train_rate_points`).

Training objective (the paper's total loss; :func:`train_diffeic`)

.. math::
    \\mathcal{L} = \\mathbb{E}_{t,\\epsilon}\\,\\|\\epsilon - \\hat\\epsilon\\|_2^2
    + \\lambda_a\\,\\|c - z_0\\|_2^2 + \\lambda\\,R,\\qquad
    R = \\frac{-\\log_2 p(\\tilde y\\mid\\hat w) - \\log_2 p(\\tilde w)}{H W},

with the space-alignment weight :math:`\\lambda_a = 2` and :math:`t` uniform over the 1000
training steps. :math:`R` divides by the pixels of the training crops (the codec's file rate
divides by the true image area). As in the reference, the rate uses the noisy proxy
:math:`\\tilde y = y + u` while :math:`g_s` and :math:`h_s` see straight-through rounded values,
and the ``EntropyBottleneck``'s quantiles are fitted by CompressAI's auxiliary loss with a
separate optimizer.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..codecs.diffeic import QUALITY_LAMBDA, DiffEICCodec
from ..errors import ModelNotFoundError, ParameterError
from ..models.diffeic.config import COMPRESSOR_STRIDE, DiffEICConfig
from ..models.diffeic.model import DiffEICModel, load_diffeic, save_diffeic
from ..precision import training_precision
from ..progress import progress
from .loop import CropSampler, append_log, data_folders, save_checkpoint
from .losses import DiffEICLoss


@dataclass
class DiffEICTrainConfig:
    """Options of one DiffEIC training run (one rate point)."""

    ckpt_dir: str = "checkpoints/diffeic"
    data_dir: str | None = None  # one folder or several joined by os.pathsep; None: the training photos folder
    model: DiffEICConfig = field(default_factory=DiffEICConfig)
    steps: int = 20000
    batch_size: int = 8
    crop: int = 128  # a multiple of 64
    lr: float = 1e-4
    aux_lr: float = 1e-3
    seed: int = 0
    log_every: int = 25
    save_every: int = 200
    threads: int | None = None
    max_minutes: float | None = None
    init_from: str | None = None  # another rate point's checkpoint (folder or .pt) to start from: same architecture, fresh optimizers
    precision: str = "auto"  # of the UNet + control prediction (egc_lite.precision.training_precision); the rate stays float32

    def validate(self) -> None:
        self.model.validate()
        if self.crop % COMPRESSOR_STRIDE or self.crop < COMPRESSOR_STRIDE:
            raise ParameterError(f"crop must be a positive multiple of {COMPRESSOR_STRIDE}, got {self.crop}")
        if self.steps < 0 or self.batch_size < 1:
            raise ParameterError("steps must be >= 0 and batch_size >= 1")


def _place_backbone(backbone, dev: torch.device):
    """Move a float32 backbone's UNet, VAE and null embedding to this process's device."""
    backbone.unet.to(dev)
    backbone.vae.to(dev)
    backbone.null_cond = backbone.null_cond.to(dev)
    backbone.device = dev
    return backbone


def train_diffeic(cfg: DiffEICTrainConfig, backbone, device: str = "auto") -> Path:
    """Train (or resume) one rate point on random crops of the training photos; returns the checkpoint.

    ``backbone`` is a loaded :class:`~egc_lite.backbone.Backbone` or a spec for
    :func:`~egc_lite.backbone.load_backbone`. The Accelerator is created first and the backbone
    (UNet and VAE) is placed on ``accelerator.device``, so under ``accelerate launch`` every rank
    holds its own copy on its own GPU. The checkpoint ``<ckpt_dir>/diffeic.pt`` holds the model,
    both optimizers, the step, the configuration, the backbone id and the UNet summary (so
    :func:`export_diffeic` needs no backbone). Losses go to ``<ckpt_dir>/diffeic_log.jsonl``;
    ``<ckpt_dir>/ranks.json`` says whether all ranks ended with equal weights (``ranks_equal``). Each process
    draws its own seeded crops; the main process saves.
    """
    from accelerate import Accelerator

    from ..backbone import load_backbone

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if isinstance(backbone, str):
        acc = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        backbone = load_backbone(backbone, device=acc.device, dtype=torch.float32)
    else:
        acc = Accelerator(cpu=backbone.device.type == "cpu")
        backbone = _place_backbone(backbone, acc.device)
    dev = acc.device
    ckpt = Path(cfg.ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    path = ckpt / "diffeic.pt"
    state = torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None
    if state is not None and state.get("backbone_id") != backbone.backbone_id:
        raise ParameterError(
            f"{path} was trained on backbone {state.get('backbone_id')!r}, not {backbone.backbone_id!r}: "
            "use another --ckpt folder"
        )
    if state is not None:
        cfg.model = DiffEICConfig.from_dict(state["config"]["model"])
    sampler = CropSampler(data_folders(cfg.data_dir), seed=cfg.seed + acc.process_index)
    first = state["step"] if state is not None else 0
    sampler.rng.seed(cfg.seed * 1_000_003 + acc.process_index * 7919 + first)  # resumable stream
    torch.manual_seed(cfg.seed * 7919 + acc.process_index + first)

    model = DiffEICModel.for_backbone(cfg.model, backbone, seed=cfg.seed)
    if state is not None:
        model.load_state_dict(state["model"])
    elif cfg.init_from:
        model.load_state_dict(_init_weights(Path(cfg.init_from), model))
    model.train()
    precision = training_precision(dev, next(backbone.unet.parameters()).dtype, cfg.precision)
    # fp16 (a float16 UNet): its backward underflows without loss scaling; bf16 and fp32 need none
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    loss_mod = DiffEICLoss(model, backbone.unet, backbone.null_cond, backbone.scheduler.alphas_cumprod,
                           backbone.prediction_type, precision).to(dev)
    named = list(model.named_parameters())
    main_params = [p for n, p in named if not n.endswith("quantiles")]
    aux_params = [p for n, p in named if n.endswith("quantiles")]
    opt = torch.optim.AdamW(main_params, lr=cfg.lr, weight_decay=0.0)
    aux_opt = torch.optim.AdamW(aux_params, lr=cfg.aux_lr, weight_decay=0.0)
    if state is not None:
        opt.load_state_dict(state["opt"])
        aux_opt.load_state_dict(state["aux_opt"])
    loss_mod, opt, aux_opt = acc.prepare(loss_mod, opt, aux_opt)
    n_train = backbone.scheduler.config.num_train_timesteps
    start = time.time()
    sums: dict[str, float] = {}
    done = first
    for step in progress(range(first, cfg.steps), desc=f"diffeic lambda={cfg.model.lmbda}", total=max(cfg.steps - first, 0)):
        x = sampler.batch(cfg.batch_size, cfg.crop).to(dev)
        with torch.no_grad():
            z0 = backbone.encode(x).float()
        t = torch.randint(0, n_train, (x.shape[0],), device=dev)
        out = loss_mod(x, z0, t, torch.randn_like(z0))
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        # One backward (one DDP pass): the aux loss only reaches the quantiles, which only aux_opt steps
        # (as CompressAI's example, where the quantiles also see the main loss's gradient).
        acc.backward(scaler.scale(out["loss"] + out["aux"]))
        scaler.unscale_(opt)
        scaler.unscale_(aux_opt)
        acc.clip_grad_norm_(main_params, 1.0)
        scaler.step(opt)  # skipped (and the scale lowered) when an fp16 gradient overflowed
        scaler.step(aux_opt)
        scaler.update()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        done = step + 1
        if done % cfg.log_every == 0:
            if acc.is_main_process:
                rec = {"step": done, "minutes": (time.time() - start) / 60}
                rec.update({k: v / cfg.log_every for k, v in sums.items()})
                append_log(ckpt / "diffeic_log.jsonl", rec)
            sums = {}
        timeout = cfg.max_minutes is not None and (time.time() - start) / 60 > cfg.max_minutes
        if (done % cfg.save_every == 0 or done == cfg.steps or timeout) and acc.is_main_process:
            save_checkpoint(path, _blob(acc.unwrap_model(loss_mod).model, opt, aux_opt, done, cfg, backbone.backbone_id))
        if timeout:
            break
    if state is None and done == first and acc.is_main_process:  # zero steps asked: still leave a checkpoint
        save_checkpoint(path, _blob(model, opt, aux_opt, done, cfg, backbone.backbone_id))
    prints = acc.gather(torch.tensor([acc.unwrap_model(loss_mod).model.fingerprint()], dtype=torch.int64, device=dev))
    if acc.is_main_process:
        record = {"step": done, "processes": acc.num_processes, "ranks_equal": bool((prints == prints[0]).all())}
        (ckpt / "ranks.json").write_text(json.dumps(record))
    return path


def _init_weights(src: Path, model: DiffEICModel) -> dict:
    """Weights of another rate point's checkpoint, to fine-tune at a new :math:`\\lambda` (the usual way
    to get several rate points for the price of one long run), or to carry a rate point over to a
    retrained backbone of the same architecture. Everything but ``lmbda`` must match."""
    src = src / "diffeic.pt" if src.is_dir() else src
    if not src.is_file():
        raise ModelNotFoundError(f"--init-from {src}: no DiffEIC checkpoint there (train one rate point first)")
    other = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(other, dict) or not {"config", "model", "unet"} <= other.keys():
        raise ParameterError(f"--init-from {src} is not a DiffEIC training checkpoint (diffeic.pt of `egc train diffeic`)")
    theirs = DiffEICConfig.from_dict(other["config"]["model"])
    if {**theirs.to_dict(), "lmbda": model.config.lmbda} != model.config.to_dict():
        raise ParameterError(f"--init-from {src} has another architecture ({theirs}); only lmbda may differ")
    if (other["unet"], other.get("latent_channels"), other.get("vae_factor")) != (model.unet_cfg, model.latent_channels, model.vae_factor):
        raise ParameterError(f"--init-from {src} was trained for a backbone of another UNet or VAE architecture; "
                             "train this rate point from scratch (no --init-from)")
    return other["model"]


def _blob(model: DiffEICModel, opt, aux_opt, step: int, cfg: DiffEICTrainConfig, backbone_id: str) -> dict:
    """A training checkpoint: enough to resume, and to export without the backbone."""
    return {"model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(), "step": step,
            "config": asdict(cfg), "backbone_id": backbone_id, "unet": model.unet_cfg,
            "latent_channels": model.latent_channels, "vae_factor": model.vae_factor}


def checkpoint_backbone_id(ckpt: str | Path) -> str:
    """The backbone id a training checkpoint (folder or ``diffeic.pt``) was trained for."""
    p = Path(ckpt)
    p = p / "diffeic.pt" if p.is_dir() else p
    if not p.is_file():
        raise ModelNotFoundError(f"no DiffEIC checkpoint at {p}: train one with `egc train diffeic --ckpt {p.parent}`")
    return str(torch.load(p, map_location="cpu", weights_only=False)["backbone_id"])


def export_diffeic(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write a trained checkpoint as ``config.json`` + ``model.safetensors`` for :func:`~egc_lite.models.diffeic.model.load_diffeic`.

    ``ckpt`` is the checkpoint folder (or its ``diffeic.pt``); see :func:`~egc_lite.models.diffeic.model.save_diffeic`.
    """
    p = Path(ckpt)
    p = p / "diffeic.pt" if p.is_dir() else p
    if not p.is_file():
        raise ModelNotFoundError(f"no DiffEIC checkpoint at {p}: train one with `egc train diffeic --ckpt {p.parent}`")
    state = torch.load(p, map_location="cpu", weights_only=False)
    cfg = DiffEICConfig.from_dict(state["config"]["model"])
    model = DiffEICModel(cfg, state["unet"], state["latent_channels"], state["vae_factor"])
    model.load_state_dict(state["model"])
    model.eval()
    source = state["config"].get("init_from")
    training = {"steps": state["step"], "lmbda": cfg.lmbda, "init_from": Path(source).name if source else None,
                **_log_summary(p.parent / "diffeic_log.jsonl")}
    return save_diffeic(model, out_dir, state["backbone_id"], extra={"steps": state["step"], "lmbda": cfg.lmbda, "training": training})


def _log_summary(log: Path, last: int = 8) -> dict:
    """Training minutes and the mean of the last ``last`` logged losses (for the model card)."""
    if not log.is_file():
        return {}
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not records:
        return {}
    tail = records[-last:]
    keys = [k for k in tail[-1] if k not in ("step", "minutes")]
    return {"minutes": round(sum(r["minutes"] for r in _run_ends(records)), 1),
            "final_losses": {k: sum(r[k] for r in tail) / len(tail) for k in keys}}


def _run_ends(records: list[dict]) -> list[dict]:
    """The last record of each training run in a log (``minutes`` restarts when a run resumes)."""
    ends = [a for a, b in zip(records, records[1:]) if b["minutes"] < a["minutes"]]
    return ends + records[-1:]


# ---------------------------------------------------------------------------------- shipped, or trained here
@dataclass
class RatePoints:
    """Codec B ready to run at some rate points (:func:`load_or_train_rate_points`): the shipped ones that fit
    the backbone, or one model trained there and then (quality 0)."""

    codec: DiffEICCodec
    qualities: list[int]  # the shipped qualities, or [0] for the model trained here
    main: int  # the quality that sections needing one model use
    trained_steps: int | None = None  # steps of the model trained here, in all (None: shipped rate points)
    lmbda: float | None = None  # its rate weight
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # its folder, removed with this object

    @property
    def trained_here(self) -> bool:
        return self.trained_steps is not None

    def label(self, q: int) -> str:
        """How rate point ``q`` is named in tables and figures."""
        return f"q{q} (lambda {QUALITY_LAMBDA[q]:g})" if q else f"trained here ({self.trained_steps} steps, lambda {self.lmbda:g})"


def load_or_train_rate_points(backbone, rate_points: str = "shipped", quality: int = 3, weights_dir: str | Path | None = None,
                              ckpt_dir: str | Path | None = None, steps: int = 200, batch_size: int = 4, crop: int = 128,
                              lmbda: float = 4.0, seed: int = 0) -> RatePoints:
    """Codec B's rate points for ``backbone``, as notebooks 03 and 04 use them (printing what it did).

    ``rate_points="shipped"``: every rate point in ``weights_dir`` (None: the user's and the package's,
    :meth:`~egc_lite.codecs.diffeic.DiffEICCodec.folder`) that loads for this backbone; the one nearest
    ``quality`` is :attr:`RatePoints.main`. When none does, or with ``rate_points="train"``, one model is
    trained here for ``steps`` steps of :func:`train_diffeic` on the training photos, in ``ckpt_dir`` (resumed
    when it holds a checkpoint) or a temporary folder, exported and loaded: a demonstration of the mechanics,
    not the shipped codec.
    """
    if rate_points not in ("shipped", "train"):
        raise ValueError(f"rate_points must be 'shipped' or 'train', got {rate_points!r}")
    shipped = DiffEICCodec(backbone, weights_dir=weights_dir)  # looks for <weights_dir>/q1 ... q5
    usable = {}
    if rate_points == "shipped":
        for q in shipped.available_qualities():
            try:
                usable[q] = shipped.model(q)
            except (ModelNotFoundError, ParameterError) as exc:  # e.g. made for another backbone
                print(f"shipped quality {q} not used: {exc}")
        if not usable:
            print(f"no shipped DiffEIC rate point for backbone {backbone.backbone_id!r} in {shipped.weights_dir}")
    if usable:
        qualities = sorted(usable)
        main = min(qualities, key=lambda q: (abs(q - quality), q))
        print(f"using the shipped rate points {qualities} from {shipped.weights_dir}; single-model sections use quality {main}")
        return RatePoints(shipped, qualities, main)

    scratch = None
    if ckpt_dir:
        work = Path(ckpt_dir).expanduser()
    else:
        scratch = tempfile.TemporaryDirectory(prefix="egc-diffeic-")
        work = Path(scratch.name)
    train_cfg = DiffEICTrainConfig(
        ckpt_dir=str(work), model=DiffEICConfig(lmbda=lmbda), steps=steps, batch_size=batch_size,
        crop=crop, seed=seed, log_every=max(1, steps // 20), save_every=max(1, steps),
    )
    resumed = (work / "diffeic.pt").exists()
    t0 = time.perf_counter()
    train_diffeic(train_cfg, backbone)  # resumes when ckpt_dir already holds a checkpoint
    export = export_diffeic(work, work / "export")  # config.json + model.safetensors, tables built once
    model = load_diffeic(export, backbone)
    done = json.loads((export / "config.json").read_text())["steps"]
    if resumed:
        how = f"continued from the checkpoint already in {work}"
    else:
        how = f"trained in this notebook, into {work}" + ("" if ckpt_dir else " (temporary)")
    print(f"NOTE: no shipped rate point is used. The model below was trained for {done} steps in all "
          f"(batch {batch_size}, {crop}x{crop} crops, lambda {lmbda:g}; {how}; "
          f"{time.perf_counter() - t0:.0f} s here).\nIt is a briefly trained demonstration model, "
          "NOT the shipped codec: its rates and images show the mechanics, not the codec's quality.")
    log_file = work / "diffeic_log.jsonl"
    if log_file.exists():
        import pandas as pd

        train_log = pd.DataFrame([json.loads(line) for line in log_file.read_text().splitlines()])
        if len(train_log):
            print(train_log[["step", "loss", "mse", "align", "bpp"]].iloc[[0, -1]].to_string(index=False))
    return RatePoints(DiffEICCodec(backbone, model=model), [0], 0, trained_steps=done, lmbda=lmbda, scratch=scratch)
