"""``TAEF2``: the TAESD-family autoencoder with pooled mid-blocks (taef2, Ollin Boer Bohan, MIT licence).

taef2 is a tiny autoencoder distilled by its author from FLUX.2's autoencoder: 32 latent channels at
1/8 of the image's height and width, 1.34 M parameters per half, plain 3x3 convolutions and ReLUs.
diffusers 0.42's ``AutoencoderTiny`` builds the same stacks *without* the pooled branch that taef2's
deeper blocks carry, so the kit has this class of its own. The layout (one width, 64, everywhere):

* :class:`Block`: three 3x3 convolutions with ReLUs between them, added to the block's input (identity
  skip), then a ReLU. A *pooled* block first adds to its input a branch of two 1x1 convolutions
  (64 -> 256 -> 64, no biases) around a GroupNorm with 4 groups and a ReLU. The GroupNorm normalises over
  the whole image, so this branch is the only place where one pixel's output depends on pixels far away
  (a crop or tile of an image decodes slightly differently from the same region of the whole image).
* encoder: conv 3->64, a block, then three times [stride-2 conv without bias, three blocks] (the last
  three blocks pooled), conv 64->32;
* decoder: soft clamp :math:`3\\tanh(z/3)`, conv 32->64, ReLU, three pooled blocks, then three times
  [nearest 2x upsampling, conv without bias, blocks] (three, three, one), conv 64->3.

The released weights' keys are the stacks' indices (``encoder.N...``, ``decoder.N...`` here), so the
released files load into :attr:`encoder` / :attr:`decoder` unchanged (:func:`from_released`).

Interface: the same as diffusers' ``AutoencoderTiny``, so the kit's code paths do not change
(:mod:`egc_lite.autoencoder`): ``encode(x)`` takes images in [-1, 1] and returns an object with
``.latents``; ``decode(z)`` returns an object with ``.sample`` in [-1, 1]. The [0, 1] range the network
was trained on is handled inside. Latents are raw (standard deviation about 0.85 on photos); the
config's ``scaling_factor`` is what the UNet sees them multiplied by.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class SoftClamp(nn.Module):
    """:math:`m\\tanh(z/m)`: keeps latents within :math:`\\pm m` smoothly (the decoder's first layer)."""

    def __init__(self, magnitude: float = 3.0) -> None:
        super().__init__()
        self.magnitude = magnitude

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / self.magnitude) * self.magnitude


class Block(nn.Module):
    """A residual block of three 3x3 convolutions; ``pooled`` adds the global branch (module docstring)."""

    def __init__(self, width: int, pooled: bool = False, pool_width: int = 256, pool_groups: int = 4) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(width, width), nn.ReLU(), _conv(width, width), nn.ReLU(), _conv(width, width))
        self.pool = (
            nn.Sequential(nn.Conv2d(width, pool_width, 1, bias=False), nn.GroupNorm(pool_groups, pool_width), nn.ReLU(),
                          nn.Conv2d(pool_width, width, 1, bias=False))
            if pooled else None
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


def build_encoder(width: int, latent_channels: int, blocks: tuple[int, ...], pooled_from: int, pool_width: int = 256) -> nn.Sequential:
    """conv, ``blocks[0]`` blocks, then per further level a stride-2 conv and ``blocks[i]`` blocks, conv out;
    blocks on levels ``>= pooled_from`` are pooled."""
    layers: list[nn.Module] = [_conv(3, width)]
    for level, n in enumerate(blocks):
        if level > 0:
            layers.append(_conv(width, width, stride=2, bias=False))
        layers += [Block(width, level >= pooled_from, pool_width) for _ in range(n)]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(width: int, latent_channels: int, blocks: tuple[int, ...], pooled_until: int, pool_width: int = 256) -> nn.Sequential:
    """Soft clamp, conv, ReLU, ``blocks[0]`` blocks, then per further level upsampling, a conv and ``blocks[i]``
    blocks, conv out; blocks on levels ``< pooled_until`` are pooled (``blocks`` run coarse to fine)."""
    layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, width), nn.ReLU()]
    for level, n in enumerate(blocks):
        if level > 0:
            layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
        layers += [Block(width, level < pooled_until, pool_width) for _ in range(n)]
    layers.append(_conv(width, 3))
    return nn.Sequential(*layers)


@dataclass
class LatentOutput:
    """What ``encode`` returns (the field diffusers' ``AutoencoderTiny`` output has)."""

    latents: torch.Tensor


@dataclass
class SampleOutput:
    """What ``decode`` returns (images in [-1, 1], as diffusers' decoders)."""

    sample: torch.Tensor


class TAEF2(ModelMixin, ConfigMixin):
    """The taef2 autoencoder (module docstring), saved and loaded as a diffusers folder (``vae/``)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 32, width: int = 64, encoder_blocks: tuple[int, ...] = (1, 3, 3, 3),
                 decoder_blocks: tuple[int, ...] = (3, 3, 3, 1), pooled_levels: int = 1, scaling_factor: float = 1.0,
                 downsampling_factor: int = 8, pool_width: int = 256) -> None:
        super().__init__()
        if 2 ** (len(encoder_blocks) - 1) != downsampling_factor or len(decoder_blocks) != len(encoder_blocks):
            raise ValueError(f"{len(encoder_blocks)} encoder levels / {len(decoder_blocks)} decoder levels do not give "
                             f"a downsampling factor of {downsampling_factor}")
        levels = len(encoder_blocks)
        self.encoder = build_encoder(width, latent_channels, tuple(encoder_blocks), levels - pooled_levels, pool_width)
        self.decoder = build_decoder(width, latent_channels, tuple(decoder_blocks), pooled_levels, pool_width)
        self.checkpoint_decoder = False  # recompute the decoder's activations in backward passes (CUDA memory plan)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> LatentOutput:
        """Raw latents of images ``x`` in [-1, 1]."""
        z = self.encoder(x.add(1).div(2))
        return LatentOutput(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> SampleOutput:
        """Images in [-1, 1] (not clamped) from raw latents."""
        if self.checkpoint_decoder and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint_sequential

            x = checkpoint_sequential(self.decoder, 4, z, use_reentrant=False)
        else:
            x = self.decoder(z)
        x = x.mul(2).sub(1)
        return SampleOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> SampleOutput:
        return self.decode(self.encode(x).latents)


#: The released files of taef2 (github.com/madebyollin/taesd, commit 5cccb12d, 2025-12-27) and their sha256.
RELEASED_FILES = {
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}


def from_released(folder: str | Path) -> TAEF2:
    """A float32 :class:`TAEF2` with the released ``taef2_encoder.pth`` / ``taef2_decoder.pth`` in ``folder``
    (checksums verified: a file that is not the release is refused)."""
    import hashlib

    folder = Path(folder)
    model = TAEF2()
    for name, digest in RELEASED_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: taef2's released weights are {', '.join(RELEASED_FILES)}")
        found = hashlib.sha256(path.read_bytes()).hexdigest()
        if found != digest:
            raise ValueError(f"{path} is not taef2's released file (sha256 {found[:12]}..., expected {digest[:12]}...)")
        part = model.encoder if "encoder" in name else model.decoder
        part.load_state_dict({k: v.float() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()})
    return model.eval()
