"""Memory budget of decoding: a file's claims are checked before anything is allocated.

A header names the image size, and every tensor a decoder builds follows from it (latents,
UNet activations and attention maps, the VAE decoder's feature maps). A hostile file with a
valid checksum can claim a size its payloads were never made for (say 8 x 65535 beside the
payloads of a 64 x 64 image) and make a decoder ask for gigabytes. Decoders therefore call
:func:`check_decode` with an estimate of their peak memory (:func:`backbone_decode_bytes`)
before they decode a single symbol, and refuse with a :class:`~egc_lite.errors.BitstreamError`
above :func:`decode_budget_bytes`.

The estimate is *computed*, not measured, and deliberately conservative: it counts every
attention map as materialised (``batch x heads x tokens^2`` in float32, as PyTorch's math
kernel does on a CPU; flash or memory-efficient kernels on a GPU need far less) and about a dozen
feature maps per resolution level.
"""

from __future__ import annotations

import math
import os

import torch

from ..errors import BitstreamError

#: Default budget when ``EGC_DECODE_BUDGET_GB`` is not set (also capped at half the machine's memory).
DEFAULT_BUDGET_GB = 12.0  # SD 1.5 at 768x512 in the default guidance mode ("fast") is computed at 9.0 GiB
#: Feature maps alive per UNet / VAE level (resnets, norms, skip connections; a rough, generous count).
MAPS_PER_LEVEL = 12


def _machine_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def decode_budget_bytes() -> int:
    """``$EGC_DECODE_BUDGET_GB`` GiB if set, else :data:`DEFAULT_BUDGET_GB` GiB capped at half the RAM."""
    env = os.environ.get("EGC_DECODE_BUDGET_GB", "").strip()
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            pass
    budget = int(DEFAULT_BUDGET_GB * 2**30)
    ram = _machine_bytes()
    return min(budget, ram // 2) if ram else budget


def _heads(cfg: dict, level: int, width: int) -> int:
    """Attention heads of a UNet level (diffusers reads ``attention_head_dim`` as heads when
    ``num_attention_heads`` is unset)."""
    h = cfg.get("num_attention_heads") or cfg.get("attention_head_dim") or 8
    h = h[level] if isinstance(h, (list, tuple)) else h
    return max(1, int(h))


def unet_bytes(cfg: dict, h: int, w: int, batch: int, elt: int = 4) -> int:
    """Computed peak of one UNet (or control module) pass on a ``h x w`` latent (module docstring)."""
    widths = list(cfg["block_out_channels"])
    types = list(cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * len(widths)))
    maps, attn = 0, 0
    for i, c in enumerate(widths):
        hw = math.ceil(h / 2**i) * math.ceil(w / 2**i)
        maps += MAPS_PER_LEVEL * batch * c * hw * elt
        if "Attn" in types[i] or i == len(widths) - 1:  # the mid block attends at the last level
            attn = max(attn, batch * _heads(cfg, i, c) * hw * hw * 4)
    return maps + attn


def vae_decoder_bytes(cfg: dict, height: int, width: int, batch: int, elt: int = 4) -> int:
    """Computed peak of the VAE decoder producing a ``height x width`` image: an ``AutoencoderKL``'s
    (its mid block's attention unless ``mid_block_add_attention`` is off) or an ``AutoencoderTiny``'s
    (no attention; its ``decoder_block_out_channels`` run coarse to fine)."""
    tiny = "decoder_block_out_channels" in cfg
    widths = list(reversed(cfg["decoder_block_out_channels"])) if tiny else list(cfg["block_out_channels"])
    maps = sum(MAPS_PER_LEVEL * batch * c * math.ceil(height / 2**i) * math.ceil(width / 2**i) * elt
               for i, c in enumerate(widths))
    attn = 0
    if not tiny and cfg.get("mid_block_add_attention", True):
        tokens = math.ceil(height / 2 ** (len(widths) - 1)) * math.ceil(width / 2 ** (len(widths) - 1))
        attn = batch * tokens * tokens * 4
    return maps + attn


def backbone_decode_bytes(backbone, height: int, width: int, batch: int = 2, grad: str = "none",
                          extra_unet_cfg: dict | None = None) -> int:
    """Computed peak bytes of sampling and decoding a ``height x width`` image with ``backbone``.

    ``batch`` counts the UNet's batch (2 with classifier-free guidance); ``grad`` says which
    feature maps compression guidance keeps for a backward pass, tripling them: ``"none"``,
    ``"decoder"`` (the VAE decoder only: guidance mode ``fast``) or ``"all"`` (UNet and decoder:
    mode ``full``); ``extra_unet_cfg`` adds a control module's pass (codec B).
    """
    if grad not in ("none", "decoder", "all"):
        raise ValueError(f"grad must be 'none', 'decoder' or 'all', got {grad!r}")
    m = backbone.size_multiple
    hp, wp = -(-height // m) * m, -(-width // m) * m
    h, w = hp // backbone.vae_factor, wp // backbone.vae_factor
    elt = 2 if backbone.dtype in (torch.float16, torch.bfloat16) else 4
    unet = unet_bytes(dict(backbone.unet.config), h, w, batch, elt)
    if extra_unet_cfg is not None:
        unet += unet_bytes(extra_unet_cfg, h, w, batch, 4)
    vae = vae_decoder_bytes(dict(backbone.vae.config), hp, wp, 1, elt)
    return (3 if grad == "all" else 1) * unet + (1 if grad == "none" else 3) * vae


def check_decode(estimate: int, what: str) -> None:
    """Refuse a file whose decoding would need more than the budget (before allocating anything)."""
    budget = decode_budget_bytes()
    if estimate > budget:
        raise BitstreamError(
            f"{what} would need about {estimate / 2**30:.1f} GiB to decode (computed), more than the "
            f"{budget / 2**30:.1f} GiB budget: the header's image size does not fit this file or this machine "
            "(set EGC_DECODE_BUDGET_GB to allow more)"
        )


def check_payload_bytes(n_bytes: int, n_symbols: int, what: str) -> None:
    """A range-coded payload cannot be longer than its symbols can fill: the encoder refuses streams
    over 32 bits per symbol (:mod:`egc_lite.coding.range_coding`), so more bytes mean a header of another image."""
    from .range_coding import MIN_CODED_SYMBOLS

    limit = 4 * (max(n_symbols, MIN_CODED_SYMBOLS) + 4)
    if n_bytes > limit:
        raise BitstreamError(
            f"the {what} payload is {n_bytes} bytes, more than {n_symbols} symbols can fill ({limit}): "
            "the header's image size does not match the payloads"
        )
