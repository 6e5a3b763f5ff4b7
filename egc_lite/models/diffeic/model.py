"""One DiffEIC rate point: :class:`DiffEICModel` (compressor + control module) and its files
(``config.json`` + ``model.safetensors``, probability tables included)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ...errors import ModelNotFoundError
from .compressor import LatentCompressor
from .config import CONFIG_FILE, WEIGHTS_FILE, DiffEICConfig, unet_summary
from .control import CONTROL_CLASSES


class DiffEICModel(nn.Module):
    """Compressor + control module of one rate point (float32; the backbone stays frozen and apart)."""

    def __init__(self, cfg: DiffEICConfig, unet_cfg: dict, latent_channels: int = 4, vae_factor: int = 8, unet=None) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.unet_cfg = dict(unet_cfg)
        self.latent_channels, self.vae_factor = latent_channels, vae_factor
        self.compressor = LatentCompressor.from_config(cfg, latent_channels, vae_factor)
        self.control = CONTROL_CLASSES[cfg.control](self.unet_cfg, cfg, latent_channels, unet=unet)

    @classmethod
    def for_backbone(cls, cfg: DiffEICConfig, backbone, seed: int = 0) -> DiffEICModel:
        """A freshly initialised model (seeded) for ``backbone``."""
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = cls(cfg, unet_summary(backbone.unet), backbone.latent_channels, backbone.vae_factor, unet=backbone.unet)
        finally:
            torch.random.set_rng_state(state)
        return model.float().to(backbone.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the compressor and the control module."""
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"compressor": n(self.compressor), "control": n(self.control)}

    def predict_noise(self, unet, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor,
                      scale: float = 1.0) -> torch.Tensor:
        """:math:`\\hat\\epsilon` of the frozen ``unet`` steered by ``c`` (differentiable w.r.t. this model), float32;
        ``scale`` multiplies every control residual (0: the plain UNet). The control module and the UNet run
        under the caller's autocast: training's (:class:`~egc_lite.training.losses.DiffEICLoss`), or the backbone's inference precision
        (:func:`~egc_lite.codecs.diffeic.steered_denoiser`)."""
        dev = self.device
        b = z_t.shape[0]
        c = c.to(dev, torch.float32)
        if c.shape[0] != b:
            c = c.expand(b, -1, -1, -1)
        return self.control.steer(unet, z_t.to(dev, torch.float32), t.to(dev), cond.to(dev, torch.float32), c, scale).float()

    def fingerprint(self) -> int:
        """A 32-bit hash of the configuration and every weight and table (files store it)."""
        h = hashlib.sha256(json.dumps({"cfg": self.config.identity_dict(), "unet": self.unet_cfg}, sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            v = v.detach().cpu()
            v = v.float() if v.is_floating_point() else v
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.contiguous().numpy().tobytes())
        return int.from_bytes(h.digest()[:4], "little")

    def check_backbone(self, backbone) -> None:
        """Raise :class:`ModelNotFoundError` when ``backbone``'s UNet or latent space differ from this model's."""
        if unet_summary(backbone.unet) != self.unet_cfg or backbone.latent_channels != self.latent_channels \
                or backbone.vae_factor != self.vae_factor:
            raise ModelNotFoundError(
                f"this DiffEIC model was trained for another backbone than {backbone.backbone_id!r} "
                "(UNet or latent shape differ): train one for it with `egc train diffeic --backbone ...`"
            )


# ---------------------------------------------------------------------------------- save / load
def save_diffeic(model: DiffEICModel, out_dir: str | Path, backbone_id: str, extra: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors``.

    The ``EntropyBottleneck``'s quantiles are refitted by bisection and the probability tables
    built once, here (in ``model`` too), so every decoder loads the same tables.
    """
    from safetensors.torch import save_file

    from ...coding.entropy import update_tables

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    update_tables(model.compressor, force=True, update_quantiles=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, out / WEIGHTS_FILE)
    meta = {"_class_name": "egc_lite.DiffEICModel", "backbone_id": backbone_id, "config": model.config.to_dict(),
            "unet": model.unet_cfg, "latent_channels": model.latent_channels, "vae_factor": model.vae_factor,
            "parameters": model.parameter_counts(), **(extra or {})}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    return out


def load_diffeic(folder: str | Path, backbone=None, device: str | torch.device | None = None) -> DiffEICModel:
    """Load a folder written by :func:`~egc_lite.training.diffeic.export_diffeic` / :func:`save_diffeic` (tables loaded, not rebuilt).

    With ``backbone``, the model goes to its device and must match its UNet and backbone id.
    """
    from safetensors.torch import load_file

    from ...coding.entropy import fit_table_buffers

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ModelNotFoundError(
            f"no DiffEIC model in {folder} (looked for {CONFIG_FILE} and {WEIGHTS_FILE}): train one with "
            "`egc train diffeic --lmbda L --ckpt DIR` and write it there with `egc train diffeic-export --ckpt DIR --out FOLDER`"
        )
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        cfg = DiffEICConfig.from_dict(meta["config"])
        model = DiffEICModel(cfg, meta["unet"], int(meta["latent_channels"]), int(meta["vae_factor"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"{folder / CONFIG_FILE} is not a DiffEIC configuration ({exc})") from None
    model.backbone_id = meta.get("backbone_id", "")
    state = load_file(folder / WEIGHTS_FILE)
    fit_table_buffers(model, state)
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    if backbone is not None:
        if model.backbone_id and model.backbone_id != backbone.backbone_id:
            raise ModelNotFoundError(
                f"the DiffEIC model in {folder} was trained for backbone {model.backbone_id!r}, not "
                f"{backbone.backbone_id!r}: train one for this backbone with `egc train diffeic --backbone ...`"
            )
        model.check_backbone(backbone)
        device = device or backbone.device
    return model.to(device or "cpu")


def load_compressor(folder: str | Path) -> LatentCompressor:
    """Only the compressor of a saved model (CPU, eval): enough to decode content variables, and
    it needs neither diffusers nor the backbone."""
    from safetensors.torch import load_file

    from ...coding.entropy import fit_table_buffers

    folder = Path(folder)
    meta = json.loads((folder / CONFIG_FILE).read_text())
    cfg = DiffEICConfig.from_dict(meta["config"])
    comp = LatentCompressor.from_config(cfg, int(meta["latent_channels"]), int(meta["vae_factor"]))
    prefix = "compressor."
    state = {k[len(prefix):]: v for k, v in load_file(folder / WEIGHTS_FILE).items() if k.startswith(prefix)}
    fit_table_buffers(comp, state)
    comp.load_state_dict(state)
    return comp.eval().requires_grad_(False)
