"""Backbones: the frozen latent diffusion model both codecs run on.

A :class:`Backbone` carries what the codecs need: ``vae``, ``unet``, ``scheduler``, the
unconditional embedding ``null_cond`` (classifier-free guidance's :math:`\\varnothing`), the
latent scale, the device and dtype, and ``backbone_id``, a short *content* id written into every
bitstream so that a decoder refuses a file made with another backbone: :data:`ID_CHARS` hex
characters of a SHA-256 over what is loaded (the UNet's and VAE's configurations and weights,
rounded to float16 so that the fp16 and fp32 files of one model agree, the scheduler's
configuration and the null embedding). Folder names, hub names, extra files in the folder
(other variants, codec A's prior, egc-tiny's token encoder) do not change it.

``inference_precision`` is decided once, when loading (:func:`egc_lite.precision.inference_precision`:
``"bf16"`` for a float32 backbone only where the device runs bf16 fast, or as ``precision`` /
``EGC_PRECISION`` say). Under ``"bf16"`` the UNet and the VAE decoder are in ``channels_last`` and
run under bf16 autocast (:meth:`Backbone.inference_autocast`, used by :meth:`Backbone.decode` and the
samplers' denoisers); :meth:`Backbone.encode` always runs in float32.

The UNet may predict the noise (``prediction_type="epsilon"``, SD 1.5, SD 2.1-base) or
:math:`v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1-\\bar\\alpha_t}\\,z_0` (``"v_prediction"``,
SD 2.1 at 768 px); :mod:`egc_lite.sampling.ddim` converts. Other kinds are refused when loading.

:func:`load_backbone` accepts

* ``"egc-tiny"``: the small backbone shipped inside the package (offline, CPU friendly);
* a local folder in the Stable Diffusion layout (``vae/``, ``unet/``, ``scheduler/``, and
  either ``null_cond.safetensors`` or ``text_encoder/`` + ``tokenizer/`` to compute the null
  embedding once); ``vae/`` may hold an ``AutoencoderKL`` or an ``AutoencoderTiny`` (TAESD), the
  class its ``config.json`` names;
* a hub id such as ``"stabilityai/stable-diffusion-2-1-base"``: taken from the local Hugging Face
  cache; downloaded only when the hub answers within a couple of seconds;
* ``"tiny-random"`` or ``"tiny-random:SEED"``: seeded random weights for tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from .errors import ModelNotFoundError, ParameterError
from .models.autoencoder import (
    AnyVAE,
    decode_tiled,
    decoder_modules,
    enable_gradient_checkpointing,
    encode_tiled,
    save_vae,
    vae_class_in,
    vae_downsampling,
)
from .models.tiny import TEST_CONFIG, TinyBackboneConfig, build_components
from .precision import autocast, prepare_module
from .precision import inference_precision as decide_inference_precision
from .weights import EGC_TINY_DIR

NULL_COND_FILE = "null_cond.safetensors"
HUB_HOST = ("huggingface.co", 443)
#: Length of a backbone id (hex characters of a SHA-256): short and fixed, as a file carries it.
ID_CHARS = 12
#: What the UNet may predict (the scheduler's ``prediction_type``).
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class Backbone:
    """A frozen latent diffusion model and what the codecs need around it."""

    name: str
    backbone_id: str
    vae: AnyVAE  # AutoencoderKL or AutoencoderTiny (egc_lite.models.autoencoder)
    unet: UNet2DConditionModel
    scheduler: DDIMScheduler
    null_cond: torch.Tensor  # (1, n_tokens, cond_dim)
    latent_scale: float
    device: torch.device
    dtype: torch.dtype
    path: Path | None = None
    bos: bool = False  # position 0 of null_cond is a text encoder's BOS token (Stable Diffusion)
    inference_precision: str = "fp32"  # "bf16": UNet and VAE decoder under bf16 autocast (module docstring)

    @property
    def n_tokens(self) -> int:
        return int(self.null_cond.shape[1])

    @property
    def cond_dim(self) -> int:
        return int(self.null_cond.shape[2])

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def prediction_type(self) -> str:
        """``"epsilon"`` or ``"v_prediction"`` (what the UNet outputs)."""
        return str(self.scheduler.config.prediction_type)

    @property
    def vae_factor(self) -> int:
        """Spatial downsampling of the VAE (8 for Stable Diffusion, TAESD and egc-tiny)."""
        return vae_downsampling(self.vae.config)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE factor times the UNet's downsampling."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def inference_autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where :attr:`inference_precision` is ``"bf16"``; otherwise no autocast (a float16
        backbone runs as stored)."""
        return autocast(self.device, "bf16") if self.inference_precision == "bf16" else contextlib.nullcontext()

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Scaled latent :math:`z_0 = s\\,\\mathcal{E}(x)` (an ``AutoencoderKL``'s posterior mean, an
        ``AutoencoderTiny``'s latent: deterministic; on a large image window by window, exactly,
        :func:`~egc_lite.models.autoencoder.encode_tiled`). Never under autocast, not even a caller's: codec B's
        compressor decides its symbols from :math:`z_0`."""
        x = (x01 * 2 - 1).to(self.device, self.vae_dtype)
        with torch.autocast(self.device.type, enabled=False):
            return encode_tiled(self.vae, x).to(self.dtype) * self.latent_scale

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Image :math:`\\mathcal{D}(z_0/s)` in [0, 1], float32 (differentiable; not clamped), under
        :meth:`inference_autocast`; on a large image window by window (:func:`~egc_lite.models.autoencoder.decode_tiled`)."""
        with self.inference_autocast():
            x = decode_tiled(self.vae, (z0 / self.latent_scale).to(self.vae_dtype))
        return (x.float() + 1) / 2


def resolve_device(device: str | torch.device = "auto", dtype: torch.dtype | None = None) -> tuple[torch.device, torch.dtype]:
    """``"auto"`` picks CUDA (float16) when present, else the CPU (float32)."""
    if isinstance(device, str) and device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device 'cuda' was asked for but no CUDA GPU is available: use --device cpu")
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if dev.type == "cpu" and dtype == torch.float16:
        raise ParameterError("float16 is not supported on the CPU: use float32")
    return dev, dtype


def _public_config(config) -> dict:
    """A module's configuration without diffusers' bookkeeping keys (``_name_or_path``, versions)."""
    return {k: v for k, v in dict(config).items() if not str(k).startswith("_")}


def content_id(vae: torch.nn.Module, unet: torch.nn.Module, scheduler, null_cond: torch.Tensor) -> str:
    """The backbone id: :data:`ID_CHARS` hex characters of a SHA-256 of what is loaded (module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps({"vae": _public_config(vae.config), "unet": _public_config(unet.config),
                         "scheduler": _public_config(scheduler.config)}, sort_keys=True, default=str).encode())
    tensors = [("null_cond", null_cond)]
    for prefix, module in (("vae", vae), ("unet", unet)):
        tensors += [(f"{prefix}.{k}", v) for k, v in sorted(module.state_dict().items())]
    for key, value in tensors:
        v = value.detach().to("cpu")
        v = v.to(torch.float16) if v.is_floating_point() else v
        h.update(key.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:ID_CHARS]


def _to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move a module, casting only when its dtype differs (diffusers warns on needless casts)."""
    module = module.to(device)
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def _finish(name: str, vae, unet, scheduler, null_cond, device, dtype, path=None, bos: bool = False,
            backbone_id: str | None = None, precision: str = "auto") -> Backbone:
    """Place the modules (the VAE in the UNet's dtype, as diffusers' SD pipelines do), decide the inference
    precision (module docstring) and build the :class:`Backbone`."""
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelNotFoundError(
            f"backbone {name!r} predicts {prediction!r}: egc_lite runs UNets that predict one of {PREDICTION_TYPES}"
        )
    backbone_id = backbone_id or content_id(vae, unet, scheduler, null_cond)
    vae = _to(vae, device, dtype).eval().requires_grad_(False)
    unet = _to(unet, device, dtype).eval().requires_grad_(False)
    if device.type == "cuda":  # memory plan: recompute activations in passes that need gradients (README)
        unet.enable_gradient_checkpointing()
        enable_gradient_checkpointing(vae)
    compute = decide_inference_precision(device, dtype, precision)
    if compute == "bf16":  # oneDNN's fast layout for the modules that run in bf16; the encoder keeps its own
        prepare_module(unet, compute)
        for module in decoder_modules(vae):
            prepare_module(module, compute)
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    if not isinstance(scheduler, DDIMScheduler):
        scheduler = DDIMScheduler.from_config(scheduler.config)
    return Backbone(name=name, backbone_id=backbone_id, vae=vae, unet=unet, scheduler=scheduler,
                    null_cond=null_cond.to(device, dtype), latent_scale=scale, device=device, dtype=dtype, path=path,
                    bos=bos, inference_precision=compute)


def tiny_random_backbone(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                         precision: str = "auto", cfg: TinyBackboneConfig = TEST_CONFIG) -> Backbone:
    """A seeded random backbone of Stable Diffusion's classes, for tests (fast on a CPU); ``cfg`` picks
    another small architecture (e.g. :data:`~egc_lite.models.tiny.TEST_TINY_AE_CONFIG`, with an ``AutoencoderTiny``)."""
    dev, dt = resolve_device(device, dtype)
    c = build_components(cfg, seed=seed)
    return _finish(f"tiny-random:{seed}", c.vae, c.unet, c.scheduler, c.null_cond, dev, dt, precision=precision)


def _variant(folder: Path, stem: str) -> str | None:
    """``None`` when ``folder`` holds full-precision weights ``stem.*``, ``"fp16"`` when only ``stem.fp16.*``."""
    if any((folder / f"{stem}.{ext}").is_file() for ext in ("safetensors", "bin")):
        return None
    if any((folder / f"{stem}.fp16.{ext}").is_file() for ext in ("safetensors", "bin")):
        return "fp16"
    return None


def _from_pretrained(cls, folder: Path, subfolder: str, stem: str, dtype: torch.dtype | None, **kw):
    """``cls.from_pretrained`` of one component, fp16-only folders included; failures as :class:`ModelNotFoundError`."""
    variant = _variant(folder / subfolder, stem)
    if dtype is not None:
        kw["torch_dtype"] = dtype
    try:
        return cls.from_pretrained(folder, subfolder=subfolder, variant=variant, local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"cannot load {folder / subfolder}: {first}") from None


def _null_cond_from_text_encoder(folder: Path) -> tuple[torch.Tensor, bool]:
    """The empty prompt's embedding (float32, CPU) and whether its first token is the tokenizer's BOS."""
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load the tokenizer in {folder / 'tokenizer'}: {exc}") from None
    enc = _from_pretrained(CLIPTextModel, folder, "text_encoder", "model", torch.float32)
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        null = enc(ids)[0].float()
    return null, tok.bos_token_id is not None and int(ids[0, 0]) == int(tok.bos_token_id)


def _load_folder(name: str, folder: Path, device, dtype, precision: str = "auto") -> Backbone:
    missing = [s for s in ("vae", "unet", "scheduler") if not (folder / s).is_dir()]
    if missing:
        raise ModelNotFoundError(
            f"{folder} is not a Stable Diffusion folder: missing {', '.join(s + '/' for s in missing)}; "
            "give a folder with vae/, unet/, scheduler/ (and text_encoder/ + tokenizer/ or null_cond.safetensors)"
        )
    # AutoencoderKL, or the AutoencoderTiny (TAESD) an SD user may put in vae/: the class its config.json names
    vae = _from_pretrained(vae_class_in(folder / "vae"), folder, "vae", "diffusion_pytorch_model", dtype)
    unet = _from_pretrained(UNet2DConditionModel, folder, "unet", "diffusion_pytorch_model", dtype)
    try:
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load {folder / 'scheduler'}: {exc}") from None
    bos = False
    if (folder / NULL_COND_FILE).exists():
        from safetensors.torch import load_file

        null_cond = load_file(folder / NULL_COND_FILE)["null_cond"]
        index = folder / "model_index.json"
        if index.is_file():
            try:
                bos = bool(json.loads(index.read_text()).get("egc_bos", False))
            except (ValueError, AttributeError):
                bos = False
    elif (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        null_cond, bos = _null_cond_from_text_encoder(folder)
    else:
        raise ModelNotFoundError(
            f"{folder} has no null embedding: add {NULL_COND_FILE} or text_encoder/ and tokenizer/"
        )
    return _finish(name, vae, unet, scheduler, null_cond, device, dtype, folder, bos=bos, precision=precision)


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip() not in {"", "0"}:
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cache_dir() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def _load_hub(spec: str, device, dtype, precision: str = "auto") -> Backbone:
    from huggingface_hub import snapshot_download

    patterns = ["vae/*", "unet/*", "scheduler/*", "text_encoder/*", "tokenizer/*", "model_index.json"]
    try:
        folder = Path(snapshot_download(spec, allow_patterns=patterns, local_files_only=True))
    except Exception:
        if not _hub_reachable():
            raise ModelNotFoundError(
                f"weights for {spec!r} are not in the Hugging Face cache ({_hub_cache_dir()}) and the hub is not "
                "reachable from this machine: download them on a connected machine "
                f"(`huggingface-cli download {spec}`) and copy the cache, or pass a local folder"
            ) from None
        try:
            folder = Path(snapshot_download(spec, allow_patterns=patterns))
        except Exception as exc:
            raise ModelNotFoundError(f"could not download {spec!r} from the hub: {exc}") from None
    return _load_folder(spec, folder, device, dtype, precision)


def load_backbone(spec: str = "egc-tiny", device: str | torch.device = "auto", dtype: torch.dtype | None = None,
                  precision: str = "auto") -> Backbone:
    """Load a backbone by name, local folder or hub id (see the module docstring); ``precision``
    (``auto``, ``fp32``, ``bf16``) is the inference precision of a float32 backbone."""
    dev, dt = resolve_device(device, dtype)
    if spec.startswith("tiny-random"):
        _, _, seed = spec.partition(":")
        if seed and not seed.isdigit():
            raise ParameterError(f"bad tiny-random seed {seed!r}: use tiny-random:<integer>")
        return tiny_random_backbone(int(seed or 0), dev, dt, precision)
    if spec == "egc-tiny":
        if not (EGC_TINY_DIR / "unet").is_dir():
            raise ModelNotFoundError(
                f"the egc-tiny weights are not in this installation (looked in {EGC_TINY_DIR}): "
                "reinstall egc_lite from a full clone, or train them with `egc train backbone`"
            )
        return _load_folder("egc-tiny", EGC_TINY_DIR, dev, dt, precision)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file: a backbone is a folder with vae/, unet/ and scheduler/")
        return _load_folder(path.name, path.resolve(), dev, dt, precision)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _load_hub(spec, dev, dt, precision)
    raise ModelNotFoundError(
        f"unknown backbone {spec!r}: no such folder; use 'egc-tiny', a local Stable Diffusion folder, "
        "a hub id such as 'stabilityai/stable-diffusion-2-1-base', or 'tiny-random'"
    )


def save_backbone(backbone: Backbone, folder: str | Path) -> Path:
    """Write a backbone in the diffusers layout, with its null embedding (loadable by :func:`load_backbone`)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae = backbone.vae
    if abs(float(vae.config.scaling_factor) - backbone.latent_scale) > 0:
        vae.register_to_config(scaling_factor=backbone.latent_scale)
    save_vae(vae, folder / "vae")
    backbone.unet.save_pretrained(folder / "unet", safe_serialization=True)
    backbone.scheduler.save_pretrained(folder / "scheduler")
    save_file({"null_cond": backbone.null_cond.detach().float().cpu().contiguous()}, folder / NULL_COND_FILE)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "egc_lite.Backbone", "name": backbone.name,
                                                       "egc_bos": backbone.bos}, indent=1))
    return folder
