"""Image quality metrics: PSNR, MS-SSIM, and (when their weights are present) LPIPS and DISTS.

Conventions
-----------
* Images are float tensors in ``[0, 1]``, ``(3, H, W)`` or ``(B, 3, H, W)``. Callers
  compare images **quantized to 8 bit** (what a decoder writes to a PNG); these
  functions do not quantize themselves.
* For a batch, :func:`psnr` and :func:`ms_ssim` return the **mean of the per-image
  values** (the usual way Kodak results are reported), not the value of the pooled error.
* :func:`psnr` of two identical images is ``float("inf")`` (no cap).
* :func:`ms_ssim` is this module's own implementation of Wang, Simoncelli & Bovik
  (2003): 11x11 Gaussian window (sigma 1.5), no padding ("valid" filtering),
  ``K1 = 0.01``, ``K2 = 0.03``, 2x2 average pooling between scales, the five standard
  scale weights, computed on each RGB channel and averaged over channels. Negative
  contrast-structure terms are clipped at 0 before the weighted geometric mean (as the
  common PyTorch implementations do). It needs no weights. A full 5-scale MS-SSIM needs
  both sides of at least 176 pixels (11 * 2**4); for smaller images it uses as many
  scales as fit (at least one, i.e. a side of at least 11 pixels) with the first
  weights renormalised to sum to one, so values on small images are not comparable
  with 5-scale values. Smaller than 11 pixels raises :class:`ParameterError`.

Learned metrics
---------------
LPIPS (AlexNet, v0.1), LPIPS-VGG and DISTS are computed with pyiqa, and only when
every weight file pyiqa and torchvision would load is already on disk: nothing is ever
downloaded, and a metric whose weights are missing is reported as ``None`` with a
reason naming the missing files (:func:`metric_availability`, :func:`metric_notes`),
never as a number from random weights. Files are looked for where pyiqa and
torchvision look: ``$TORCH_HOME/hub/pyiqa/`` for pyiqa's own files and
``$TORCH_HOME/hub/checkpoints/`` for torchvision backbones (``TORCH_HOME`` defaults to
``~/.cache/torch``; exactly, ``torch.hub.get_dir()``).

FID is a distance between two *sets* of images, so it is not one of
:func:`compute_metrics`' per-pair metrics; :func:`metric_availability` ``("fid")``
still tells whether pyiqa's FID Inception weights are present.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ModelNotFoundError, ParameterError

__all__ = [
    "ALWAYS_AVAILABLE",
    "DEFAULT_METRICS",
    "KNOWN_METRICS",
    "LEARNED_METRICS",
    "lf_psnr",
    "LOWER_IS_BETTER",
    "MetricAvailability",
    "bpp",
    "compute_metrics",
    "load_learned_metric",
    "metric_availability",
    "metric_notes",
    "metric_weight_files",
    "ms_ssim",
    "ms_ssim_scales",
    "psnr",
    "sharpness",
]

#: Metrics that need no weights.
ALWAYS_AVAILABLE = ("psnr", "ms_ssim")


@dataclass(frozen=True)
class _WeightSpec:
    """A learned metric: the pyiqa name and the files it loads."""

    pyiqa_name: str
    pyiqa_file: str  # in <hub>/pyiqa/
    backbone_files: tuple[str, ...]  # in <hub>/checkpoints/ (torchvision)
    required_keys: tuple[str, ...]  # keys the pyiqa file must hold
    per_pair: bool = True


# File names as written in pyiqa 0.1.16 (archs/lpips_arch.py, dists_arch.py,
# inception.py) and torchvision 0.29 (AlexNet_Weights / VGG16_Weights.IMAGENET1K_V1);
# tests/test_metrics.py checks that they still match the installed packages.
_LEARNED: dict[str, _WeightSpec] = {
    "lpips": _WeightSpec(
        "lpips", "LPIPS_v0.1_alex-df73285e.pth", ("alexnet-owt-7be5be79.pth",), ("lin0.model.1.weight",)
    ),
    "lpips_vgg": _WeightSpec(
        "lpips-vgg", "LPIPS_v0.1_vgg-a78928a0.pth", ("vgg16-397923af.pth",), ("lin0.model.1.weight",)
    ),
    "dists": _WeightSpec("dists", "DISTS_weights-f5e65c96.pth", ("vgg16-397923af.pth",), ("alpha", "beta")),
    "fid": _WeightSpec("fid", "pt_inception-2015-12-05-6726825d.pth", (), (), per_pair=False),
}

#: Metrics that need downloaded weights.
LEARNED_METRICS = tuple(_LEARNED)
#: Every name :func:`metric_availability` knows.
KNOWN_METRICS = ALWAYS_AVAILABLE + LEARNED_METRICS
#: What :func:`compute_metrics` computes when not told otherwise.
DEFAULT_METRICS = ("psnr", "ms_ssim", "lpips", "dists")
#: Metrics where a smaller value is better (the others: larger is better).
LOWER_IS_BETTER = frozenset({"lpips", "lpips_vgg", "dists", "fid"})

_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_WIN_SIZE = 11
_WIN_SIGMA = 1.5


# --------------------------------------------------------------------------- helpers


def _as_batch(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Check two images or batches and return them as (B, 3, H, W) float tensors."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ParameterError("metrics take torch tensors (3, H, W) or (B, 3, H, W) in [0, 1]")
    if x.shape != y.shape:
        raise ParameterError(f"images to compare have different shapes: {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ParameterError(f"expected images of shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ParameterError(f"cannot compare empty images of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not y.is_floating_point():
        y = y.float()
    return x, y


# --------------------------------------------------------------------------- PSNR / MS-SSIM / bpp


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)``.

    ``(3, H, W)`` or ``(B, 3, H, W)``; for a batch the mean of per-image PSNRs.
    Identical images give ``inf``.
    """
    if data_range <= 0:
        raise ParameterError(f"data_range must be positive, got {data_range}")
    x, y = _as_batch(x, y)
    with torch.no_grad():
        mse = (x.detach().double() - y.detach().double()).pow(2).flatten(1).mean(1)
    values = [math.inf if m == 0 else 10.0 * math.log10(data_range**2 / m) for m in mse.tolist()]
    return float(sum(values) / len(values))


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(x: Tensor, win: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of each channel of (B, C, H, W)."""
    c = x.shape[1]
    wh = win.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    wv = win.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    return F.conv2d(F.conv2d(x, wh, groups=c), wv, groups=c)


def _ssim_cs(x: Tensor, y: Tensor, win: Tensor, data_range: float) -> tuple[Tensor, Tensor]:
    """Per-channel mean SSIM and contrast-structure term, each (B, C)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    mu_x2, mu_y2, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    s_x2 = _filter(x * x, win) - mu_x2
    s_y2 = _filter(y * y, win) - mu_y2
    s_xy = _filter(x * y, win) - mu_xy
    cs_map = (2 * s_xy + c2) / (s_x2 + s_y2 + c2)
    ssim_map = ((2 * mu_xy + c1) / (mu_x2 + mu_y2 + c1)) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many scales :func:`ms_ssim` uses for an image of this size (1 to 5)."""
    side = min(height, width)
    if side < _WIN_SIZE:
        raise ParameterError(f"MS-SSIM needs images of at least {_WIN_SIZE}x{_WIN_SIZE} pixels, got {height}x{width}")
    n = 1
    while n < len(_MS_SSIM_WEIGHTS) and side // (2**n) >= _WIN_SIZE:
        n += 1
    return n


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> float:
    """Multi-scale SSIM (1 for identical images); see the module notes for the exact definition.

    ``(3, H, W)`` or ``(B, 3, H, W)``; for a batch the mean of per-image values.
    Images with a side under 176 pixels use fewer than 5 scales; under 11 pixels
    raise :class:`ParameterError`.
    """
    x, y = _as_batch(x, y)
    scales = ms_ssim_scales(x.shape[2], x.shape[3])
    w = torch.tensor(_MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    w = w / w.sum()
    with torch.no_grad():
        xd, yd = x.detach().float(), y.detach().float()
        win = _gaussian_window(_WIN_SIZE, _WIN_SIGMA, xd.dtype, xd.device)
        terms = []
        for i in range(scales):
            ssim_val, cs = _ssim_cs(xd, yd, win, data_range)
            if i < scales - 1:
                terms.append(cs)
                xd, yd = F.avg_pool2d(xd, 2), F.avg_pool2d(yd, 2)
            else:
                terms.append(ssim_val)
        stack = torch.stack(terms, dim=0).double().clamp(min=0.0).cpu()  # (scales, B, C)
        value = torch.prod(stack ** w.view(-1, 1, 1), dim=0).mean(dim=1)  # (B,)
    return float(value.mean())


def lf_psnr(x: Tensor, y: Tensor, block: int = 8) -> float:
    """PSNR of the ``block`` x ``block`` block means ("LF-PSNR"): colour and layout, blind to detail.

    Both images are cropped to whole blocks; for a batch, the mean of per-image values.
    """
    x, y = _as_batch(x, y)
    h, w = x.shape[2] // block * block, x.shape[3] // block * block
    if h == 0 or w == 0:
        raise ParameterError(f"LF-PSNR needs images of at least {block}x{block} pixels, got {x.shape[2]}x{x.shape[3]}")
    return psnr(F.avg_pool2d(x[..., :h, :w], block), F.avg_pool2d(y[..., :h, :w], block))


def _gradient_magnitude(x: Tensor) -> Tensor:
    """Mean of :math:`\\sqrt{(\\partial_x I)^2 + (\\partial_y I)^2}` per image (forward differences, all channels)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.double().pow(2) + dy.double().pow(2)).sqrt().flatten(1).mean(1)


def sharpness(output: Tensor, reference: Tensor) -> float:
    """Mean gradient magnitude of ``output`` over that of ``reference`` (1.0 = as sharp; blur < 1).

    For a batch, the mean of per-image ratios. A flat reference raises :class:`ParameterError`.
    """
    output, reference = _as_batch(output, reference)
    if min(output.shape[2:]) < 2:
        raise ParameterError("sharpness needs images of at least 2x2 pixels")
    with torch.no_grad():
        ref = _gradient_magnitude(reference)
        if bool((ref == 0).any()):
            raise ParameterError("sharpness is undefined against a flat reference image (no gradients)")
        return float((_gradient_magnitude(output) / ref).mean())


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel, ``8 * num_bytes / (height * width)`` of the true (unpadded) image area."""
    if height <= 0 or width <= 0:
        raise ParameterError(f"image size must be positive, got {height}x{width}")
    if num_bytes < 0:
        raise ParameterError(f"number of bytes must be >= 0, got {num_bytes}")
    return 8.0 * num_bytes / (height * width)


# --------------------------------------------------------------------------- availability


@dataclass
class MetricAvailability:
    """Whether a metric can be computed here, and if not, why and how to fix it."""

    name: str
    available: bool
    reason: str


def _hub_dir() -> Path:
    """Where torch.hub (and so torchvision and pyiqa) keeps downloads: ``$TORCH_HOME/hub``."""
    return Path(torch.hub.get_dir())


def metric_weight_files(name: str) -> list[Path]:
    """The exact files a learned metric loads (empty for PSNR and MS-SSIM)."""
    key = _check_name(name)
    if key in ALWAYS_AVAILABLE:
        return []
    spec = _LEARNED[key]
    hub = _hub_dir()
    return [hub / "pyiqa" / spec.pyiqa_file] + [hub / "checkpoints" / f for f in spec.backbone_files]


def _check_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in KNOWN_METRICS:
        raise ParameterError(f"unknown metric {name!r}; known metrics: {', '.join(KNOWN_METRICS)}")
    return key


def metric_availability(name: str) -> MetricAvailability:
    """Tell whether metric ``name`` can be computed, without downloading anything.

    PSNR and MS-SSIM are always available. A learned metric is available when every
    weight file it loads (:func:`metric_weight_files`) exists and is not empty.
    """
    key = _check_name(name)
    if key in ALWAYS_AVAILABLE:
        return MetricAvailability(key, True, "available: needs no weights")
    files = metric_weight_files(key)
    missing = [p for p in files if not p.is_file() or p.stat().st_size == 0]
    if missing:
        where = ", ".join(str(p) for p in missing)
        return MetricAvailability(
            key,
            False,
            f"unavailable: weights not found at {where} (copy them there or set TORCH_HOME "
            f"to a folder whose hub/ holds them; pyiqa.create_metric({_LEARNED[key].pyiqa_name!r}) "
            "on a machine with network downloads them)",
        )
    return MetricAvailability(key, True, "available: weights at " + ", ".join(str(p) for p in files))


def metric_notes(names: Iterable[str]) -> dict[str, str]:
    """The reason strings of the unavailable metrics among ``names``."""
    notes = {}
    for name in names:
        av = metric_availability(name)
        if not av.available:
            notes[av.name] = av.reason
    return notes


# --------------------------------------------------------------------------- learned metrics

_CACHE: dict[tuple[str, tuple[str, ...], str], torch.nn.Module] = {}


def load_learned_metric(name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Create the pyiqa metric ``name`` from weight files already on disk.

    Raises :class:`ModelNotFoundError` (naming the missing files) when they are absent,
    and when the pyiqa file does not hold the expected weights. Cached per device.
    """
    key = _check_name(name)
    if key in ALWAYS_AVAILABLE:
        raise ParameterError(f"{key} is not a learned metric; call egc_lite.metrics.{key}()")
    spec = _LEARNED[key]
    if not spec.per_pair:
        raise ParameterError(f"{key} compares sets of images, not a pair; run pyiqa's FID on two folders")
    av = metric_availability(key)
    if not av.available:
        raise ModelNotFoundError(f"{key} {av.reason}")
    files = metric_weight_files(key)
    cache_key = (key, tuple(str(p) for p in files), str(torch.device(device)))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    pyiqa_file = files[0]
    try:
        state = torch.load(pyiqa_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ModelNotFoundError(f"{key}: cannot read weights {pyiqa_file} ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "params" in state and isinstance(state["params"], dict):
        state = state["params"]
    keys = {k.removeprefix("module.") for k in (state.keys() if isinstance(state, dict) else [])}
    absent = [k for k in spec.required_keys if k not in keys]
    if absent:
        raise ModelNotFoundError(
            f"{key}: {pyiqa_file} does not hold {key} weights (missing {', '.join(absent)}); replace it with the real file"
        )
    import pyiqa  # imported here: slow, and only needed for learned metrics

    # Hand pyiqa the exact file we checked (its own cache folder is fixed when pyiqa is
    # first imported); torchvision finds its backbone through torch.hub.get_dir().
    metric = pyiqa.create_metric(spec.pyiqa_name, device=torch.device(device), pretrained_model_path=str(pyiqa_file))
    metric.eval()
    _CACHE[cache_key] = metric
    return metric


def compute_metrics(
    x: Tensor,
    y: Tensor,
    names: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float | None]:
    """Compute each metric in ``names`` between ``x`` (original) and ``y`` (reconstruction).

    Returns ``{name: value}``; a learned metric whose weights are missing maps to
    ``None`` (see :func:`metric_notes` for why). For a batch, the mean over images.
    """
    x, y = _as_batch(x, y)
    out: dict[str, float | None] = {}
    for name in names:
        key = _check_name(name)
        if key == "psnr":
            out[key] = psnr(x, y)
        elif key == "ms_ssim":
            out[key] = ms_ssim(x, y)
        else:
            if not _LEARNED[key].per_pair:
                raise ParameterError(f"{key} compares sets of images, not a pair; it is not a per-image metric")
            if not metric_availability(key).available:
                out[key] = None
                continue
            metric = load_learned_metric(key, device=x.device)
            with torch.no_grad():
                score = metric(y.clamp(0, 1).float(), x.clamp(0, 1).float())
            out[key] = float(score.flatten().mean())
    return out
