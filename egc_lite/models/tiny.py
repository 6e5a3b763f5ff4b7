"""Architecture of the kit's small backbones: ``egc-tiny`` and the tiny random test models.

They use exactly the classes of Stable Diffusion (``AutoencoderKL`` with /8 latents and 4
channels, ``UNet2DConditionModel`` with cross-attention, ``DDIMScheduler``), only narrower, so
that every code path of the kit is the one a GPU user runs with real weights. With
``vae_type="tiny"`` the autoencoder is diffusers' ``AutoencoderTiny`` (TAESD's class: plain
convolutions, no normalisation to shift colours, a deterministic latent; see
:mod:`egc_lite.models.autoencoder`). Measured on one thread of this repository's CPU (AMX, bf16 autocast,
batch 4 of 192-px crops, ``benchmarks/training_throughput.py``): TAESD's 64-channel autoencoder
(2.45 M parameters) takes 0.72 s per training step against 2.3-2.6 s for the ``AutoencoderKL``
(64, 128, 256, 256) with one layer per block (15.0 M), and decodes a 768x512 image in 0.3-0.5 s
against 1.4-1.6 s.

The conditioning of ``egc-tiny`` is a short sequence of ``n_tokens`` vectors of width
``cond_dim`` fed straight to the UNet's cross-attention (the role of SD's text embedding).
During training it is produced from the clean latent by :class:`ImageTokenEncoder` and
replaced by the learned null embedding a fraction of the time, so that an embedding carries
information about its image and classifier-free guidance has a null embedding to contrast
with. At compression time the encoder is not used: codec A inverts the embedding directly.

With ``global_cond_heads > 0`` the embedding also reaches every ResNet block through the time
embedding: the UNet is built with diffusers' ``addition_embed_type="text"`` (attention pooling of
the tokens, added to the timestep embedding, as Kandinsky/DeepFloyd-IF UNets do), to carry the
global statistics of an image (colour, brightness, texture) that a per-image embedding can
describe. The pooled path's last LayerNorm starts at zero, so a UNet trained without it can be
fine-tuned with it. Measured on egc-tiny: an inverted embedding lowered the denoising loss by 0.1%
with cross-attention alone (and 2-channel heads, see :func:`build_unet`), by 1.0% after a 1,700-step
fine-tune with both fixes: the conditioning is still hardly used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, UNet2DConditionModel
from torch import nn

from ..errors import ParameterError
from .autoencoder import AnyVAE, save_vae, vae_class_in

VAE_TYPES = ("kl", "tiny", "taef2")
#: TAESD's widths (one per level: diffusers' ``AutoencoderTiny`` keeps the encoder's width constant).
TAESD_CHANNELS = (64, 64, 64, 64)


@dataclass(frozen=True)
class TinyBackboneConfig:
    """Widths and depths of a small SD-class backbone.

    ``vae_type`` ``"kl"`` builds an ``AutoencoderKL`` (``vae_layers_per_block``, ``vae_norm_groups``);
    ``"tiny"`` an ``AutoencoderTiny`` with ``vae_blocks`` residual blocks per encoder level (fine to coarse,
    TAESD's (1, 3, 3, 3)), the decoder mirroring them, and one width for all levels; ``"taef2"`` the
    pretrained taef2's architecture (:mod:`egc_lite.models.taef2`, 32 latent channels; its widths are fixed).
    """

    vae_channels: tuple[int, ...] = (16, 32, 64, 128)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 4  # keep >= 4 channels per group: 2 per group removed colour from full images
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    unet_norm_groups: int = 16
    attention_head_dim: int = 32  # channels per attention head (see build_unet)
    n_tokens: int = 8
    cond_dim: int = 128
    sample_size: int = 32
    global_cond_heads: int = 0  # > 0: pooled-token path into the time embedding (module docstring)
    vae_type: str = "kl"  # kl | tiny (class docstring)
    vae_blocks: tuple[int, ...] = (1, 3, 3, 3)  # vae_type "tiny": residual blocks per encoder level
    schedule_shift: float = 1.0  # > 1: more noise at every level (build_scheduler), for latents with many channels
    prediction_type: str = "epsilon"  # or "v_prediction" (what the UNet outputs; train_backbone.DenoisingLoss)

    def __post_init__(self) -> None:
        if self.vae_type not in VAE_TYPES:
            raise ParameterError(f"vae_type must be one of {', '.join(VAE_TYPES)}, not {self.vae_type!r}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ParameterError(f"prediction_type must be epsilon or v_prediction, not {self.prediction_type!r}")
        if self.schedule_shift < 1:
            raise ParameterError(f"schedule_shift must be >= 1 (1 = Stable Diffusion's schedule), not {self.schedule_shift}")
        if self.vae_type == "taef2" and self.latent_channels != 32:
            raise ParameterError(f"taef2 has 32 latent channels, not {self.latent_channels}: use --latent-channels 32")
        if self.vae_type == "tiny":
            if len(set(self.vae_channels)) != 1:
                raise ParameterError(f"an AutoencoderTiny has one width on every level, not {self.vae_channels}: "
                                 f"use e.g. {','.join(map(str, TAESD_CHANNELS))} (TAESD's)")
            if len(self.vae_blocks) != len(self.vae_channels):
                raise ParameterError(f"vae_blocks {self.vae_blocks} needs one count per level of vae_channels {self.vae_channels}")

    def to_dict(self) -> dict:
        return asdict(self)


#: Configuration of the tiny random backbones used by the tests (fast, ~0.1 M parameters).
TEST_CONFIG = TinyBackboneConfig(
    vae_channels=(8, 8, 16, 16),
    vae_norm_groups=4,
    unet_channels=(16, 32),
    unet_norm_groups=8,
    global_cond_heads=2,
    attention_head_dim=8,
    n_tokens=4,
    cond_dim=16,
    sample_size=8,
)

#: :data:`TEST_CONFIG` with an ``AutoencoderTiny`` (8 channels, one block per level).
TEST_TINY_AE_CONFIG = replace(TEST_CONFIG, vae_type="tiny", vae_channels=(8, 8, 8, 8), vae_blocks=(1, 1, 1, 1))


def build_vae(cfg: TinyBackboneConfig) -> AnyVAE:
    """An ``AutoencoderKL`` (or, with ``vae_type="tiny"``, an ``AutoencoderTiny``) with /8 latents
    (needs 4 resolution levels)."""
    n = len(cfg.vae_channels)
    if cfg.vae_type == "taef2":
        from .taef2 import TAEF2

        return TAEF2(latent_channels=cfg.latent_channels)
    if cfg.vae_type == "tiny":
        return AutoencoderTiny(
            in_channels=3,
            out_channels=3,
            encoder_block_out_channels=cfg.vae_channels,
            decoder_block_out_channels=tuple(reversed(cfg.vae_channels)),
            num_encoder_blocks=cfg.vae_blocks,
            num_decoder_blocks=tuple(reversed(cfg.vae_blocks)),
            latent_channels=cfg.latent_channels,
            scaling_factor=1.0,
        )
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=cfg.sample_size * 8,
        mid_block_add_attention=False,
        scaling_factor=1.0,
    )


def build_unet(cfg: TinyBackboneConfig, **overrides) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` with cross-attention on all but the finest level (and the pooled path when asked)."""
    n = len(cfg.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    extra = {}
    if cfg.global_cond_heads > 0:
        extra = {"addition_embed_type": "text", "addition_embed_type_num_heads": cfg.global_cond_heads}
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers_per_block,
        norm_num_groups=cfg.unet_norm_groups,
        cross_attention_dim=cfg.cond_dim,
        # diffusers' UNet2DConditionModel reads ``attention_head_dim`` as the number of heads (a naming
        # quirk kept for SD checkpoints): give it heads per level so that each head has
        # ``cfg.attention_head_dim`` channels. (The first release passed 32 and got 32 heads of 2-4
        # channels: weak attention, and 3.5x slower on a CPU.)
        attention_head_dim=tuple(max(1, c // cfg.attention_head_dim) for c in cfg.unet_channels),
        **{**extra, **overrides},
    )
    if cfg.global_cond_heads > 0:
        nn.init.zeros_(unet.add_embedding.norm2.weight)
        nn.init.zeros_(unet.add_embedding.norm2.bias)
    return unet


def shifted_betas(shift: float, n_train: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> list[float]:
    """Betas of Stable Diffusion's scaled-linear schedule with every level's signal-to-noise ratio divided by
    ``shift**2``: :math:`\\mathrm{SNR}'_t = \\mathrm{SNR}_t/s^2`, i.e. :math:`\bar\alpha'_t = \bar\alpha_t/(\bar\alpha_t + s^2(1-\bar\alpha_t))`.

    A latent with many channels per position (taef2's 32 against SD's 4) keeps its content at a noise level
    that destroys a 4-channel latent's, since the content is spread over redundant channels; the same
    reasoning makes SD3 and FLUX shift their schedules for larger images (Esser et al. 2024, eq. 23, whose
    :math:`\alpha` is this ``shift``). Betas follow from :math:`\beta_t = 1-\bar\alpha'_t/\bar\alpha'_{t-1}`.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, n_train, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    shifted = abar / (abar + shift**2 * (1 - abar))
    prev = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return (1 - shifted / prev).tolist()


def build_scheduler(prediction_type: str = "epsilon", shift: float = 1.0) -> DDIMScheduler:
    """Stable Diffusion's noise schedule (scaled linear betas, 1000 steps; epsilon prediction, or
    ``"v_prediction"`` as SD 2.1 at 768 px); ``shift`` > 1 divides every level's SNR by ``shift**2``
    (:func:`shifted_betas`, stored as the scheduler's ``trained_betas``)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        trained_betas=shifted_betas(shift) if shift != 1 else None,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _coord_features(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """Sinusoidal features of normalised (y, x) in [0, 1], shape (h*w, dim): size-independent."""
    ys = torch.linspace(0, 1, h, device=device)
    xs = torch.linspace(0, 1, w, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    n_freq = dim // 4
    freqs = (2.0 ** torch.arange(n_freq, device=device)) * math.pi
    ang = grid[:, :, None] * freqs  # (hw, 2, n_freq)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(h * w, -1)


class ImageTokenEncoder(nn.Module):
    """Maps a clean latent (B, 4, h, w) to ``n_tokens`` conditioning vectors by attention pooling.

    Used only to train ``egc-tiny`` (it gives the UNet embeddings that describe their image);
    learned queries attend over conv features plus position features of normalised
    coordinates, so it works at any latent size.
    """

    def __init__(self, cfg: TinyBackboneConfig, width: int = 128) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, width // 2, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
        self.pos = nn.Linear(width, width)
        self.queries = nn.Parameter(torch.randn(cfg.n_tokens, width) * 0.02)
        self.attn = nn.MultiheadAttention(width, num_heads=4, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, cfg.cond_dim))
        self.width = width

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        f = self.convs(z0)
        b, c, h, w = f.shape
        f = f.flatten(2).transpose(1, 2) + self.pos(_coord_features(h, w, c, f.device))
        q = self.queries.unsqueeze(0).expand(b, -1, -1)
        tokens, _ = self.attn(q, f, f, need_weights=False)
        return self.out(tokens)


@dataclass
class TinyComponents:
    """The modules of a freshly built small backbone."""

    vae: AnyVAE
    unet: UNet2DConditionModel
    scheduler: DDIMScheduler
    null_cond: torch.Tensor
    config: TinyBackboneConfig = field(default_factory=TinyBackboneConfig)


def build_components(cfg: TinyBackboneConfig, seed: int = 0) -> TinyComponents:
    """Build all components with seeded random weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vae = build_vae(cfg)
        unet = build_unet(cfg)
        null_cond = torch.randn(1, cfg.n_tokens, cfg.cond_dim) * 0.1
    finally:
        torch.random.set_rng_state(gen_state)
    return TinyComponents(vae=vae, unet=unet, scheduler=build_scheduler(cfg.prediction_type, shift=cfg.schedule_shift), null_cond=null_cond,
                          config=cfg)


#: The real Stable Diffusion configurations a tiny folder can imitate: text width, tokens,
#: prediction type and the UNet's attention projection (SD 2.x uses linear projections).
SD_LAYOUTS: dict[str, dict] = {
    "sd15": {"cond_dim": 768, "max_length": 77, "prediction_type": "epsilon", "use_linear_projection": False},
    "sd21-base": {"cond_dim": 1024, "max_length": 77, "prediction_type": "epsilon", "use_linear_projection": True},
    "sd21": {"cond_dim": 1024, "max_length": 77, "prediction_type": "v_prediction", "use_linear_projection": True},
}


def write_tiny_sd_folder(folder, seed: int = 0, cfg: TinyBackboneConfig = TEST_CONFIG, max_length: int = 8,
                         layout: str | None = None):
    """Write a tiny random model in the Stable Diffusion folder layout (``vae/``, ``unet/``,
    ``scheduler/``, ``text_encoder/``, ``tokenizer/``), as diffusers' tests do, so the SD loading
    path (null embedding from the text encoder included) runs offline. ``layout`` (a key of
    :data:`SD_LAYOUTS`) imitates a real configuration: its text width, 77 tokens with BOS, its
    prediction type. Returns the folder."""
    import json
    from pathlib import Path

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = SD_LAYOUTS[layout] if layout is not None else {}
    cfg = replace(cfg, global_cond_heads=0, cond_dim=spec.get("cond_dim", cfg.cond_dim))  # SD's UNet has no pooled path
    max_length = spec.get("max_length", max_length)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    comps = build_components(cfg, seed=seed)
    unet = comps.unet
    if spec.get("use_linear_projection"):
        torch.manual_seed(seed)
        unet = build_unet(cfg, use_linear_projection=True)
    save_vae(comps.vae, folder / "vae")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    build_scheduler(spec.get("prediction_type", "epsilon")).save_pretrained(folder / "scheduler")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    raw = folder / "_vocab"
    raw.mkdir(exist_ok=True)
    (raw / "vocab.json").write_text(json.dumps(vocab))
    (raw / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(vocab_file=str(raw / "vocab.json"), merges_file=str(raw / "merges.txt"), model_max_length=max_length,
                        bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(folder / "tokenizer")
    for p in raw.iterdir():
        p.unlink()
    raw.rmdir()
    torch.manual_seed(seed)
    text_cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=cfg.cond_dim, intermediate_size=64,
                              num_hidden_layers=1 if layout else 2, num_attention_heads=2, max_position_embeddings=max_length,
                              bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(text_cfg).save_pretrained(folder / "text_encoder", safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1"}))
    return folder


def write_fp16_variant_folder(src, dst):
    """Copy an SD folder keeping only float16 ``variant="fp16"`` weights (as a cache that downloaded
    ``--variant fp16`` holds). Returns ``dst``."""
    import shutil
    from pathlib import Path

    from transformers import CLIPTextModel

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    for sub, cls in (("vae", None), ("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel)):
        if not (dst / sub).is_dir():
            continue
        cls = cls or vae_class_in(src / sub)
        model = cls.from_pretrained(src / sub).half()
        for f in (dst / sub).glob("*.safetensors"):
            f.unlink()
        model.save_pretrained(dst / sub, safe_serialization=True, variant="fp16")
    return dst
