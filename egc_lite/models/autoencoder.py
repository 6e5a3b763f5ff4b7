"""The three autoencoder classes the kit runs, behind one small interface.

* ``AutoencoderKL``: Stable Diffusion's VAE (egc-tiny's default): GroupNorm, a mid block, a Gaussian
  posterior whose mean is the latent the kit reads.
* ``AutoencoderTiny``: TAESD's class (plain 3x3 convolutions and ReLUs, no normalisation, a
  deterministic latent; Stable Diffusion users load it as a fast decoder). Its encoder keeps one width
  on every level (diffusers builds it so), and its decoder soft-clamps latents to [-3, 3].

* ``TAEF2``: the pretrained taef2 (:mod:`egc_lite.models.taef2`, egc-tiny's autoencoder from v4): TAESD's
  layout with pooled mid-blocks, 32 latent channels, a deterministic latent.

All three map images in [-1, 1] to latents /8 and back; the UNet sees ``latent * scaling_factor`` for
both (TAESD's released weights carry ``scaling_factor`` 1.0: their latents are already SD's scaled ones).
Code that needs a property of "the VAE" asks this module instead of an attribute of one class.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from torch import nn

from ..errors import ModelNotFoundError
from .taef2 import TAEF2
from .tiling import AUTOENCODER_TILING, TilingConfig, is_tileable, receptive_radius, run_tiled

#: The classes a ``vae/`` folder may name in its ``config.json`` (``_class_name``).
VAE_CLASSES: dict[str, type] = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny, "TAEF2": TAEF2}
AnyVAE = AutoencoderKL | AutoencoderTiny | TAEF2


def is_tiny(vae: nn.Module) -> bool:
    """Whether ``vae`` has a deterministic latent and no KL term (``AutoencoderTiny`` or ``TAEF2``)."""
    return isinstance(vae, (AutoencoderTiny, TAEF2))


def vae_latent(vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The deterministic, unscaled latent of images ``x`` in [-1, 1]: the posterior mean of an
    ``AutoencoderKL``, the output of an ``AutoencoderTiny``."""
    out = vae.encode(x)
    return out.latents if is_tiny(vae) else out.latent_dist.mean


def encode_tiled(vae: nn.Module, x: torch.Tensor, config: TilingConfig = AUTOENCODER_TILING) -> torch.Tensor:
    """:func:`vae_latent` of ``x``, window by window on a large image where the encoder is convolutions
    only (exact, :mod:`.tiling`); whole otherwise."""
    if not is_tiny(vae) or not is_tileable(vae.encoder):
        return vae_latent(vae, x)
    f = vae_downsampling(vae.config)
    radius, _ = receptive_radius(vae.encoder)
    return run_tiled(lambda part: vae_latent(vae, part), x, radius, 1 / f, f, config, desc="VAE encoder tiles")


def decode_tiled(vae: nn.Module, z: torch.Tensor, config: TilingConfig = AUTOENCODER_TILING) -> torch.Tensor:
    """``vae.decode(z).sample``, window by window (``config`` in image pixels) on a large image where the
    decoder is convolutions only (exact, :mod:`.tiling`); whole otherwise."""
    if not is_tiny(vae) or not is_tileable(vae.decoder):
        return vae.decode(z).sample
    f = vae_downsampling(vae.config)
    radius, _ = receptive_radius(vae.decoder)
    latent_config = TilingConfig(core=max(1, config.core // f), min_side=config.min_side // f)
    return run_tiled(lambda part: vae.decode(part).sample, z, radius, f, 1, latent_config, desc="VAE decoder tiles")


def vae_downsampling(config) -> int:
    """Spatial factor between image and latent (8 for SD, TAESD and egc-tiny), from a VAE's config."""
    cfg = dict(config)
    if cfg.get("downsampling_factor"):
        return int(cfg["downsampling_factor"])
    widths = cfg.get("encoder_block_out_channels") or cfg["block_out_channels"]
    return 2 ** (len(widths) - 1)


def encoder_modules(vae: nn.Module) -> list[nn.Module]:
    """The modules that make the latent (frozen when only the decoder trains)."""
    return [vae.encoder] if is_tiny(vae) else [vae.encoder, vae.quant_conv]


def decoder_modules(vae: nn.Module) -> list[nn.Module]:
    """The modules that turn a latent into an image (those that run in bf16 at inference)."""
    post = getattr(vae, "post_quant_conv", None)
    return [vae.decoder] if post is None else [post, vae.decoder]


def decoder_last_layer(vae: nn.Module) -> nn.Parameter:
    """The weight of the decoder's last convolution (where the adversarial weight is balanced)."""
    if isinstance(vae, TAEF2):
        return vae.decoder[-1].weight
    return vae.decoder.layers[-1].weight if is_tiny(vae) else vae.decoder.conv_out.weight


def enable_gradient_checkpointing(vae: nn.Module) -> None:
    """Recompute activations in backward passes; for ``AutoencoderTiny`` in the decoder only, since
    diffusers 0.42's ``EncoderTiny`` skips its [-1, 1] -> [0, 1] input rescaling on the checkpointed
    path (a checkpointed encoder would return another latent when gradients are on); for ``TAEF2`` in the
    decoder (the pass compression guidance back-propagates through)."""
    if isinstance(vae, TAEF2):
        vae.checkpoint_decoder = True
        return
    vae.enable_gradient_checkpointing()
    if is_tiny(vae):
        vae.encoder.gradient_checkpointing = False


def save_vae(vae: nn.Module, folder: Path) -> None:
    """``save_pretrained`` (safetensors) into ``folder``, leaving out of an ``AutoencoderTiny``'s
    ``config.json`` the ``block_out_channels`` key that diffusers 0.42 registers but does not accept
    back (loading a folder that has it prints a config warning)."""
    folder = Path(folder)
    vae.save_pretrained(folder, safe_serialization=True)
    if is_tiny(vae):
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config.pop("block_out_channels", None)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def vae_class_in(folder: Path) -> type:
    """The class a ``vae/`` folder's ``config.json`` names (``AutoencoderKL`` when it names none, or when
    the file is missing: loading then fails with diffusers' message)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return AutoencoderKL
    try:
        name = json.loads(path.read_text()).get("_class_name", "AutoencoderKL")
    except (ValueError, AttributeError) as exc:
        raise ModelNotFoundError(f"cannot read {path}: {exc}") from None
    if name not in VAE_CLASSES:
        raise ModelNotFoundError(f"{path} names {name!r}: egc_lite runs the autoencoders {', '.join(VAE_CLASSES)}")
    return VAE_CLASSES[name]


def load_vae(folder: Path, subfolder: str = "vae", **kw) -> AnyVAE:
    """``from_pretrained`` of ``folder/subfolder`` with the class its config names (local files only)."""
    cls = vae_class_in(Path(folder) / subfolder)
    return cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, **kw)
