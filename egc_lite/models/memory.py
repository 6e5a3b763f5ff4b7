"""Computed peak memory of the kit's passes, from the networks' configurations and the image size.

Calibrated on measured peaks (``benchmarks/memory_budget.py`` prints computed against measured resident
memory from 0.1 to 12 megapixels; the aim is a ratio between 1 and 1.5). An estimate is the whole
process's peak:

* :data:`RUNTIME_BYTES` (the interpreter with torch and diffusers loaded) plus the weights' bytes;
* :data:`IMAGE_COPIES` float32 copies of the whole RGB image (input, padded, decoded, clamped, cropped);
* the largest stage: :data:`UNET_MAPS` feature maps per UNet level (attention through
  ``scaled_dot_product_attention``, whose fused kernels do not hold the tokens x tokens map; an
  ``AutoencoderKL``'s mid-block attention is counted as materialised), :data:`DECODER_MAPS` /
  :data:`ENCODER_MAPS` per autoencoder level. Passes that run window by window (:mod:`.tiling`) are
  counted for their largest window.

:mod:`egc_lite.coding.budget` compares these estimates with the machine's budget.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .tiling import AUTOENCODER_TILING, is_tileable, receptive_radius

GIB = 2**30
#: The process before any weights: Python, torch, diffusers, compressai and their libraries (1.3-1.4 GiB
#: resident measured on Linux x86-64 with codec B's rate point loaded).
RUNTIME_BYTES = int(1.45 * GIB)
#: The same without diffusers (the guide codec imports torch and the image codecs only: 0.75 GiB measured).
TORCH_RUNTIME_BYTES = int(0.85 * GIB)
#: Whole-image float32 RGB tensors alive at once around coding (fitted on measured peaks, rounded up).
IMAGE_COPIES = 6
#: Feature maps alive per UNet / control-module level during one pass (fitted on egc-tiny, rounded up).
UNET_MAPS = 14
#: Feature maps per level of an autoencoder's decoder and encoder (fitted on egc-tiny's AutoencoderTiny).
DECODER_MAPS, ENCODER_MAPS = 3.0, 3.6
#: A pass that keeps its activations for a backward pass holds this many times its maps (fitted on codec A's
#: ``fast`` mode, rounded up).
GRAD_FACTOR = 4
#: What one network pass holds besides its maps (workspace, small buffers).
PASS_OVERHEAD = 64 * 2**20


def module_bytes(*modules: nn.Module | None) -> int:
    """Bytes of the parameters and buffers of ``modules`` (each counted once)."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def image_bytes(height: int, width: int, copies: int = IMAGE_COPIES) -> int:
    """``copies`` float32 RGB images of ``height x width``."""
    return copies * 3 * 4 * height * width


def unet_bytes(cfg: dict, h: int, w: int, batch: int, elt: int = 4, window: tuple[int, int] | None = None) -> int:
    """Peak of one UNet (or control module) pass on a ``h x w`` latent, or on its largest ``window`` when the
    pass runs tile by tile (module docstring)."""
    if window is not None:
        h, w = min(h, window[0]), min(w, window[1])
    widths = list(cfg["block_out_channels"])
    maps = sum(UNET_MAPS * batch * c * math.ceil(h / 2**i) * math.ceil(w / 2**i) * elt for i, c in enumerate(widths))
    return maps + PASS_OVERHEAD


def _conv_stack_bytes(widths: list[int], height: int, width: int, batch: int, elt: int, maps: float) -> int:
    return int(sum(maps * batch * c * math.ceil(height / 2**i) * math.ceil(width / 2**i) * elt for i, c in enumerate(widths)))


def _tiled_extent(module: nn.Module | None, height: int, width: int, input_per_image: float) -> tuple[int, int]:
    """The image-pixel extent a (possibly tiled) autoencoder pass holds at once: its largest window."""
    T = AUTOENCODER_TILING
    if module is None or not T.wants_tiles(height, width) or not is_tileable(module):
        return height, width
    halo_image = math.ceil(receptive_radius(module)[0] / input_per_image)  # radius in image pixels
    halo_image = math.ceil(halo_image / 8) * 8 + 8
    return min(height, T.core + 2 * halo_image), min(width, T.core + 2 * halo_image)


def vae_decoder_bytes(cfg: dict, height: int, width: int, batch: int, elt: int = 4, decoder: nn.Module | None = None) -> int:
    """Peak of the VAE decoder producing a ``height x width`` image: an ``AutoencoderKL``'s (its mid block's
    attention counted as materialised unless ``mid_block_add_attention`` is off) or an ``AutoencoderTiny``'s
    (no attention; ``decoder_block_out_channels`` run coarse to fine), on its largest window when
    ``decoder`` is given and runs tile by tile."""
    tiny = "decoder_block_out_channels" in cfg
    widths = list(reversed(cfg["decoder_block_out_channels"])) if tiny else list(cfg["block_out_channels"])
    f = 2 ** (len(widths) - 1)
    height, width = _tiled_extent(decoder, height, width, 1 / f)
    attn = 0
    if not tiny and cfg.get("mid_block_add_attention", True):
        tokens = math.ceil(height / f) * math.ceil(width / f)
        attn = batch * tokens * tokens * 4
    return _conv_stack_bytes(widths, height, width, batch, elt, DECODER_MAPS) + attn + PASS_OVERHEAD


def vae_encoder_bytes(cfg: dict, height: int, width: int, encoder: nn.Module | None = None) -> int:
    """Peak of the VAE encoder (float32) on a ``height x width`` image (its largest window when tiled)."""
    widths = list(cfg.get("encoder_block_out_channels") or cfg["block_out_channels"])
    height, width = _tiled_extent(encoder, height, width, 1.0)
    attn = 0
    if "encoder_block_out_channels" not in cfg and cfg.get("mid_block_add_attention", True):
        f = 2 ** (len(widths) - 1)
        attn = (math.ceil(height / f) * math.ceil(width / f)) ** 2 * 4
    return _conv_stack_bytes(widths, height, width, 1, 4, ENCODER_MAPS) + attn + PASS_OVERHEAD


def conv_pass_bytes(module: nn.Module, height: int, width: int, elt: int = 4, maps: float = 3.0) -> int:
    """Peak of a convolution-only ``module`` on a ``height x width`` input (its largest window when it runs
    tile by tile): ``maps`` copies of its largest layer output."""
    height, width = _tiled_extent(module, height, width, 1.0)
    largest, stride = 0, 1.0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
            largest = max(largest, m.out_channels * math.ceil(height / stride) * math.ceil(width / stride))
    return int(maps * largest * elt) + PASS_OVERHEAD


def _padded(backbone, height: int, width: int) -> tuple[int, int]:
    m = backbone.size_multiple
    return -(-height // m) * m, -(-width // m) * m


def backbone_decode_bytes(backbone, height: int, width: int, batch: int = 2, grad: str = "none",
                          extra_unet_cfg: dict | None = None, extra_modules: tuple[nn.Module, ...] = (),
                          unet_window: tuple[int, int] | None = None, encoder_pass: bool = False) -> int:
    """Peak bytes of sampling and decoding a ``height x width`` image with ``backbone`` (module docstring).

    ``batch`` counts the UNet's batch (2 with classifier-free guidance); ``grad`` says which feature maps
    compression guidance keeps for a backward pass (:data:`GRAD_FACTOR` times them): ``"none"``, ``"decoder"``
    (the VAE decoder only: guidance mode ``fast``) or ``"all"`` (UNet and decoder: mode ``full``);
    ``extra_unet_cfg`` adds a control module's pass (codec B) and ``extra_modules`` its weights;
    ``unet_window`` is the latent window of a tiled UNet pass; ``encoder_pass`` counts a VAE encoder pass over the
    whole image while decoding (codec A encodes its enlarged guide in mode ``latent`` and with ILVR).
    """
    if grad not in ("none", "decoder", "all"):
        raise ValueError(f"grad must be 'none', 'decoder' or 'all', got {grad!r}")
    hp, wp = _padded(backbone, height, width)
    h, w = hp // backbone.vae_factor, wp // backbone.vae_factor
    elt = 2 if backbone.dtype in (torch.float16, torch.bfloat16) or getattr(backbone, "inference_precision", "") == "bf16" else 4
    unet = unet_bytes(dict(backbone.unet.config), h, w, batch, elt, unet_window)
    if extra_unet_cfg is not None:
        unet += unet_bytes(extra_unet_cfg, h, w, batch, elt, unet_window)
    decoder = getattr(backbone.vae, "decoder", None)
    if grad == "none":
        vae = vae_decoder_bytes(dict(backbone.vae.config), hp, wp, 1, elt, decoder)
    elif grad == "decoder":  # guidance's gradient through the decoder, window by window where it tiles
        vae = GRAD_FACTOR * vae_decoder_bytes(dict(backbone.vae.config), hp, wp, 1, elt, decoder)
    else:  # through the UNet and the whole image's decoder maps
        vae = GRAD_FACTOR * vae_decoder_bytes(dict(backbone.vae.config), hp, wp, 1, elt)
    if grad == "all":  # the backward pass through the UNet holds every window's maps: the whole latent's
        unet = unet_bytes(dict(backbone.unet.config), h, w, batch, elt) * GRAD_FACTOR
    stage = max(unet + (vae if grad != "none" else 0), vae)
    if encoder_pass:
        stage = max(stage, vae_encoder_bytes(dict(backbone.vae.config), hp, wp, getattr(backbone.vae, "encoder", None)))
    weights = module_bytes(backbone.unet, backbone.vae, *extra_modules)
    return RUNTIME_BYTES + weights + image_bytes(hp, wp) + stage


def backbone_encode_bytes(backbone, height: int, width: int, extra_modules: tuple[nn.Module, ...] = (),
                          extra_stage: int = 0) -> int:
    """Peak bytes of encoding a ``height x width`` image to the backbone's latent (the VAE encoder, float32),
    with ``extra_stage`` bytes of the codec's own largest pass and ``extra_modules``' weights."""
    hp, wp = _padded(backbone, height, width)
    encoder = getattr(backbone.vae, "encoder", None)
    stage = max(vae_encoder_bytes(dict(backbone.vae.config), hp, wp, encoder), extra_stage)
    weights = module_bytes(backbone.unet, backbone.vae, *extra_modules)
    return RUNTIME_BYTES + weights + image_bytes(hp, wp) + stage
