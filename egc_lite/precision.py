"""Which arithmetic a device runs fast: bfloat16 autocast where the hardware has it, float32 elsewhere.

On a CPU, bfloat16 pays only with matrix units (Intel AMX) or AVX-512 BF16 instructions: oneDNN
then runs a bf16 ``channels_last`` convolution several times faster than float32 (measured on
such a Xeon: 820 against 150 GFLOP/s at 256 channels). Without them torch emulates bf16 and it
is *slower* than float32 (measured on an AVX2-only AMD EPYC, one core: a 64-channel 3x3
convolution at 5 GFLOP/s in bf16 against 49 in float32; a 2048x2048 matmul at well under 1
against 58). On CUDA, bf16 needs compute capability 8.0 or newer.

What may run in bf16 (autocast), and what never does:

* training (the backbone's phases, DiffEIC's denoiser term): :func:`training_precision`;
* inference, decided once per loaded backbone by :func:`inference_precision` (kept in
  ``Backbone.inference_precision``; ``Backbone.inference_autocast`` enters it): the UNet in the
  sampler's denoiser (:func:`egc_lite.sampling.ddim.unet_denoiser`), the UNet *and* DiffEIC's control
  module (:func:`egc_lite.codecs.diffeic.steered_denoiser`), and the VAE *decoder*
  (``Backbone.decode``), including the decoder passes and gradients of compression guidance. These
  modules are put in ``channels_last`` (:func:`prepare_module`: the UNet 1.15x, the VAE decoder 2x
  faster than bf16 alone on egc-tiny). A float16 backbone (CUDA) runs as stored, without autocast.
* Never: the VAE *encoder* (``Backbone.encode`` disables autocast, so it is float32 even inside a
  caller's autocast), textual inversion (codec A's encoder), DiffEIC's compressor and every entropy
  model. These decide entropy-coded symbols, or the values they are computed from: codec B's files
  are byte-identical under either precision, codec A's inversion differs only by float32 rounding
  (the bf16 UNet's ``channels_last`` layout sums in another order), and the entropy decoding of a file
  is bit-exact on every machine.

So a file decodes to the same pixels every time on one machine with one precision and thread count
(bf16 kernels are deterministic there; float32 results already depend on the thread count), but a bf16
and a float32 decoder give slightly different pixels, and so may two machines: only the entropy-coded
parts are bit-exact across machines. Measured on egc-tiny (768x512, 50 DDIM steps with CFG, one thread
of an AMX Xeon, ``benchmarks/inference_precision.py``): 10.7 s float32, 5.0 s bf16; the bf16 image
is within 3 of 255 levels of the float32 one (mean 0.37, PSNR 54.8 dB).

``EGC_PRECISION=fp32`` (or ``bf16``) in the environment overrides the automatic choice.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .errors import ParameterError

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX tiles or AVX-512 BF16 (the instructions oneDNN uses for bf16)."""
    probe = getattr(torch, "cpu", None)
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(probe, name, None)
        if fn is not None:
            with contextlib.suppress(Exception):
                if fn():
                    return True
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = set()
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """``"bf16"`` or ``"fp32"`` for ``device``: ``auto`` picks bf16 only where it is fast (module notes)."""
    env = os.environ.get("EGC_PRECISION", "").strip().lower()
    choice = env or precision
    if choice not in PRECISIONS:
        source = "EGC_PRECISION" if env else "precision"
        raise ParameterError(f"{source} must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if dev.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def training_precision(device: torch.device | str, frozen_dtype: torch.dtype, precision: str = "auto") -> str:
    """Autocast precision of a run that trains beside a frozen network stored in ``frozen_dtype``.

    A float16 network (Stable Diffusion loaded in fp16 on CUDA) gives ``"fp16"``: its backward runs
    in float16, whose small gradients underflow to zero unless the loss is scaled
    (``torch.amp.GradScaler``, enabled exactly when this returns ``"fp16"``). Otherwise
    :func:`resolve_precision`.
    """
    if frozen_dtype == torch.float16:
        return "fp16"
    return resolve_precision(device, precision)


def inference_precision(device: torch.device | str, dtype: torch.dtype, precision: str = "auto") -> str:
    """The arithmetic of inference's UNet and VAE decoder for a backbone stored in ``dtype`` on ``device``.

    A float32 backbone gets :func:`resolve_precision` (``"bf16"`` autocast only where it is fast, or as
    ``precision`` / ``EGC_PRECISION`` say); a float16 or bfloat16 one runs as stored (``"fp16"``, ``"bf16"``).
    """
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    return resolve_precision(device, precision)


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """A ``torch.autocast`` context for a resolved precision (``bf16``, ``fp16``; ``fp32``: a no-op context)."""
    dev = torch.device(device)
    if precision in ("bf16", "fp16"):
        return torch.autocast(dev.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def prepare_module(module: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``channels_last`` memory format for convolutions under bf16 (oneDNN's fast layout); as is otherwise."""
    return module.to(memory_format=torch.channels_last) if precision == "bf16" else module
