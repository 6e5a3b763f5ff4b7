"""Images in and out, padding, and the data sets (Kodak, training photos).

Images are ``(3, H, W)`` float32 tensors in ``[0, 1]`` (a batch is ``(B, 3, H, W)``).
:func:`load_image` reads any file Pillow can read and turns every colour mode into
RGB, the way a user would expect to see it:

* ``RGB``: as is; ``L`` / ``1`` (grey, bilevel): the grey value on all three channels.
* ``RGBA`` / ``LA`` / ``PA`` / ``P`` with transparency: composited on a **white**
  background (transparent pixels become white, as an image viewer on a white page
  shows them); the alpha channel is not coded.
* ``P`` (palette): expanded through the palette.
* ``I;16`` (16-bit grey, e.g. a 16-bit PNG) and ``I`` (32-bit integer grey, which is
  how Pillow opens some 16-bit files): divided by 65535, so that 65535 maps to 1.0
  (values outside ``[0, 65535]`` are clipped).
* ``F`` (32-bit float grey): taken as already in ``[0, 1]`` and clipped.
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted to RGB by Pillow.

The EXIF orientation tag is applied, so a portrait photo from a phone stands upright.

Kodak (the benchmark) is read from ``$EGC_DATA/kodak`` when ``EGC_DATA`` is set, and
otherwise downloaded once from its public source into ``~/.cache/egc_lite/kodak``
(``$XDG_CACHE_HOME`` respected). The images are never part of the package; one CC0 photo is
(:data:`DEMO_IMAGE`), so that ``egc demo`` runs offline.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .coding.bitstream import atomic_write_bytes
from .errors import EGCError, ImageError, ParameterError

__all__ = [
    "DEMO_IMAGE",
    "IMAGE_SUFFIXES",
    "KODAK_COUNT",
    "KODAK_URL",
    "MAX_PIXELS",
    "crop_to",
    "kodak_dir",
    "kodak_on_disk",
    "kodak_paths",
    "list_images",
    "load_image",
    "load_kodak",
    "pad_to_multiple",
    "pil_to_tensor",
    "save_image",
    "png_bytes",
    "tensor_to_pil",
    "training_photos_dir",
]

#: Largest image (width * height) :func:`load_image` accepts.
MAX_PIXELS = 64_000_000
#: File name endings :func:`list_images` picks up (compared in lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: Public source of the Kodak images (``kodim01.png`` .. ``kodim24.png``).
KODAK_URL = "https://r0k.us/graphics/kodak/kodak/kodim{:02d}.png"
KODAK_COUNT = 24
#: The photo shipped inside the package (448x320, CC0; source in ``egc_lite/assets/README.md``).
DEMO_IMAGE = Path(__file__).resolve().parent / "assets" / "coffee.png"
_DOWNLOAD_TIMEOUT_S = 10.0
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as a ``(3, H, W)`` float32 tensor in ``[0, 1]``.

    Accepts every file Pillow can read (see the module notes for how each colour
    mode becomes RGB). Raises :class:`~egc_lite.errors.ImageError` with a message
    that names the problem and its fix for a missing file, a folder, an empty
    file, a file that is not an image, a truncated or corrupt image, an image with
    no pixels, or one with more than :data:`MAX_PIXELS` pixels.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"image file not found: {p} (check the path and the current directory {Path.cwd()})")
    if p.is_dir():
        raise ImageError(f"{p} is a folder, not an image file (give the path of one image file)")
    try:
        size_bytes = p.stat().st_size
    except OSError as exc:
        raise ImageError(f"cannot read {p}: {exc}") from exc
    if size_bytes == 0:
        raise ImageError(f"{p} is an empty file (0 bytes): the image was not written completely; use another copy")
    limit = int(MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            # Pillow warns about "decompression bombs" above its own limit; ours is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                _check_size(img, p, limit)
                img.load()
                return pil_to_tensor(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{p} has too many pixels (limit {limit:,}): downscale it before compressing ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            f"{p} is not an image file Pillow can read (PNG, JPEG, WebP, BMP, TIFF, ...): "
            "check that it is the file you meant and that it is not damaged"
        ) from exc
    except PermissionError as exc:
        raise ImageError(f"no permission to read {p}: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, IndexError) as exc:
        # Pillow reports truncated data as OSError("image file is truncated ...") and
        # other damage as SyntaxError / ValueError / zlib.error.
        raise ImageError(
            f"{p} is truncated or corrupt and cannot be decoded ({type(exc).__name__}: {exc}); "
            "re-download or re-export the image"
        ) from exc


def _check_size(img: Image.Image, p: Path | None, limit: int) -> None:
    """Raise ImageError for an image with no pixels or more than ``limit`` pixels."""
    w, h = img.size
    where = f"{p} " if p is not None else "the image "
    if w <= 0 or h <= 0:
        raise ImageError(f"{where}has no pixels (size {w}x{h}); give an image at least 1x1 pixel in size")
    if w * h > limit:
        raise ImageError(
            f"{where}is {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,}: "
            "downscale or crop it before compressing"
        )


def pil_to_tensor(img: Image.Image) -> Tensor:
    """Convert a Pillow image to a ``(3, H, W)`` float32 tensor in ``[0, 1]``.

    The same conversions as :func:`load_image`: EXIF orientation applied, alpha
    composited on white, 16-bit grey divided by 65535 (see the module notes).
    """
    _check_size(img, None, int(MAX_PIXELS))
    img = ImageOps.exif_transpose(img) or img
    arr = _to_rgb_float(img)  # (H, W, 3) float32 in [0, 1]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _to_rgb_float(img: Image.Image) -> np.ndarray:
    """(H, W, 3) float32 array in [0, 1] from any Pillow mode."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        if mode == "RGBa":
            img = img.convert("RGBA")
        elif mode == "La":
            img = img.convert("LA")
        a = np.asarray(img, dtype=np.float32) / 255.0
        color, alpha = a[..., :-1], a[..., -1:]
        out = color * alpha + (1.0 - alpha)  # over a white background
        return _gray_to_rgb(out)
    if mode == "RGB":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode == "L":
        return _gray_to_rgb(np.asarray(img, dtype=np.float32) / 255.0)
    if mode == "I" or mode.startswith("I;"):  # I;16, I;16B, I;16L, I;16N, ...
        a = np.asarray(img).astype(np.float64)
        return _gray_to_rgb(np.clip(a / 65535.0, 0.0, 1.0).astype(np.float32))
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return _gray_to_rgb(np.clip(a, 0.0, 1.0))
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(f"images in colour mode {mode!r} are not supported: convert the file to RGB first") from exc
    return np.asarray(rgb, dtype=np.float32) / 255.0


def _gray_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a.astype(np.float32, copy=False)


def tensor_to_pil(x: Tensor) -> Image.Image:
    """Convert a ``(3, H, W)`` or ``(1, 3, H, W)`` tensor in ``[0, 1]`` to an RGB uint8 image.

    Values are clipped to ``[0, 1]``, scaled by 255 and rounded to the nearest
    integer (NaN becomes 0).
    """
    if not isinstance(x, Tensor):
        raise ParameterError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ParameterError(f"expected one image, got a batch of {x.shape[0]} (shape {tuple(x.shape)})")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ParameterError(f"expected an image tensor of shape (3, H, W) or (1, 3, H, W), got {tuple(x.shape)}")
    a = x.detach().to("cpu", torch.float32)
    a = torch.nan_to_num(a, nan=0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return Image.fromarray(a.permute(1, 2, 0).contiguous().numpy())


def png_bytes(x: Tensor) -> bytes:
    """The PNG file of :func:`tensor_to_pil` ``(x)`` (what a notebook widget shows)."""
    import io

    buf = io.BytesIO()
    tensor_to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


def save_image(x: Tensor, path: str | os.PathLike) -> None:
    """Save a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor in ``[0, 1]`` as an 8-bit RGB PNG.

    The folder is created if needed; the file is always PNG whatever its suffix.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(x).save(p, format="PNG")


# --------------------------------------------------------------------------- padding


def _pad_index(n: int, new: int, mode: str, device: torch.device) -> Tensor:
    """Source index of each of ``new`` positions along an axis of length ``n``."""
    i = torch.arange(new, device=device)
    if mode == "replicate" or n == 1:
        return i.clamp_(max=n - 1)
    if mode == "reflect":  # mirror without repeating the edge: 0 1 2 1 0 1 2 ...
        period = 2 * (n - 1)
        i = i % period
        return torch.where(i >= n, period - i, i)
    if mode == "circular":
        return i % n
    raise AssertionError(mode)


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "replicate") -> tuple[Tensor, tuple[int, int]]:
    """Pad ``(B, C, H, W)`` (or ``(C, H, W)``) at the bottom and right so H and W are multiples of ``multiple``.

    Returns the padded tensor and the original ``(H, W)`` (give it to :func:`crop_to`).
    ``mode`` is ``"replicate"`` (default), ``"reflect"``, ``"circular"`` or
    ``"constant"`` (zeros). Unlike ``torch.nn.functional.pad``, reflect and circular
    work for any pad size, even when the image is smaller than the padding (the
    mirror image is repeated; a 1-pixel side is replicated).
    """
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ParameterError(f"multiple must be a positive integer, got {multiple!r}")
    if mode not in ("replicate", "reflect", "circular", "constant", "zeros"):
        raise ParameterError(f"unknown padding mode {mode!r}: use replicate, reflect, circular or constant")
    if x.dim() not in (3, 4):
        raise ParameterError(f"expected a (B, C, H, W) or (C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < 1 or w < 1:
        raise ParameterError(f"cannot pad an empty image of size {h}x{w}")
    new_h = -(-h // multiple) * multiple
    new_w = -(-w // multiple) * multiple
    if (new_h, new_w) == (h, w):
        return x, (h, w)
    if mode in ("constant", "zeros"):
        return F.pad(x, (0, new_w - w, 0, new_h - h), mode="constant", value=0.0), (h, w)
    rows = _pad_index(h, new_h, mode, x.device)
    cols = _pad_index(w, new_w, mode, x.device)
    out = x.index_select(-2, rows).index_select(-1, cols)
    return out, (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Keep the top-left ``size = (H, W)`` of the last two dimensions (undoes :func:`pad_to_multiple`)."""
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1 or h > x.shape[-2] or w > x.shape[-1]:
        raise ParameterError(f"cannot crop a tensor of spatial size {tuple(x.shape[-2:])} to {(h, w)}")
    return x[..., :h, :w]


# --------------------------------------------------------------------------- data sets


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "egc_lite"


def _kodak_name(index: int) -> str:
    return f"kodim{index:02d}.png"


def _check_kodak_indices(indices: Sequence[int]) -> list[int]:
    out = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 1 <= int(i) <= KODAK_COUNT:
            raise ParameterError(f"Kodak images are numbered 1 to {KODAK_COUNT}, got {i!r}")
        out.append(int(i))
    return out


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically (a temporary file in the same folder, then rename)."""
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
        data = resp.read()
    if not data.startswith(_PNG_MAGIC):
        raise OSError(f"the server did not return a PNG image ({len(data)} bytes)")
    atomic_write_bytes(dest, data)


def _kodak_folder(indices: Sequence[int], download: bool) -> Path:
    """The Kodak folder, holding at least the images ``indices`` (downloaded if needed and allowed)."""
    env = os.environ.get("EGC_DATA", "").strip()
    if env:
        folder = Path(env).expanduser() / "kodak"
        missing = [_kodak_name(i) for i in indices if not (folder / _kodak_name(i)).is_file()]
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise EGCError(
                f"EGC_DATA is set to {env}, but the folder {folder} lacks {shown}: put kodim01.png .. "
                f"kodim24.png (from {KODAK_URL.format(1).rsplit('/', 1)[0]}/) there, or unset EGC_DATA "
                "to download them into the cache"
            )
        return folder
    folder = _cache_root() / "kodak"
    missing_idx = [i for i in indices if not (folder / _kodak_name(i)).is_file()]
    if not missing_idx:
        return folder
    offline_fix = (
        f"To work offline, put kodim01.png .. kodim24.png in a folder named kodak/ inside a folder of "
        f"your choice and set EGC_DATA to that folder (EGC_DATA=/path/to/data with /path/to/data/kodak/), "
        f"or copy them into {folder}"
    )
    if not download:
        raise EGCError(f"Kodak images are missing from {folder} ({len(missing_idx)} files). {offline_fix}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EGCError(f"cannot create the cache folder {folder} ({exc}). {offline_fix}.") from exc
    for i in missing_idx:
        url = KODAK_URL.format(i)
        try:
            _download(url, folder / _kodak_name(i))
        except (OSError, urllib.error.URLError, ValueError, EGCError) as exc:  # URLError/HTTPError/timeouts are OSErrors
            raise EGCError(f"could not download the Kodak image {url} ({exc}). {offline_fix}.") from exc
    return folder


def kodak_on_disk(index: int) -> Path | None:
    """Kodak image ``index`` if it is already on disk (``$EGC_DATA/kodak``, else the cache), or None.

    Never downloads and never raises for a missing folder.
    """
    name = _kodak_name(_check_kodak_indices([index])[0])
    env = os.environ.get("EGC_DATA", "").strip()
    folders = ([Path(env).expanduser() / "kodak"] if env else []) + [_cache_root() / "kodak"]
    return next((f / name for f in folders if (f / name).is_file()), None)


def kodak_dir(download: bool = True) -> Path:
    """The folder holding all 24 Kodak images (``kodim01.png`` .. ``kodim24.png``).

    ``$EGC_DATA/kodak`` when ``EGC_DATA`` is set (an :class:`EGCError` naming the
    folder if images are missing; nothing is downloaded there). Otherwise
    ``$XDG_CACHE_HOME/egc_lite/kodak`` (default ``~/.cache/egc_lite/kodak``), where
    missing images are downloaded from :data:`KODAK_URL` (10 s timeout, atomic
    writes) unless ``download`` is False. A failed download raises an
    :class:`EGCError` that says how to provide the images offline.
    """
    return _kodak_folder(range(1, KODAK_COUNT + 1), download)


def kodak_paths(indices: Sequence[int] | None = None, download: bool = True) -> list[Path]:
    """Paths of Kodak images by their 1-based number (all 24 when ``indices`` is None).

    Only the images asked for need to be present (or are downloaded).
    """
    idx = list(range(1, KODAK_COUNT + 1)) if indices is None else _check_kodak_indices(list(indices))
    folder = _kodak_folder(idx, download)
    return [folder / _kodak_name(i) for i in idx]


def load_kodak(index: int) -> Tensor:
    """Kodak image ``index`` (1..24) as a ``(3, H, W)`` float32 tensor in ``[0, 1]``."""
    return load_image(kodak_paths([index])[0])


def training_photos_dir() -> Path:
    """The folder of training photos: ``$EGC_TRAIN_DATA`` if set, else ``$EGC_DATA/photos-train``.

    Raises :class:`EGCError` when neither is set, or the folder is missing or holds no images.
    """
    env_train = os.environ.get("EGC_TRAIN_DATA", "").strip()
    env_data = os.environ.get("EGC_DATA", "").strip()
    if env_train:
        folder, source = Path(env_train).expanduser(), "EGC_TRAIN_DATA"
    elif env_data:
        folder, source = Path(env_data).expanduser() / "photos-train", "EGC_DATA"
    else:
        raise EGCError(
            "no training photos configured: set EGC_TRAIN_DATA to a folder of photos (PNG/JPEG/...), "
            "or EGC_DATA to a folder that holds photos-train/"
        )
    if not folder.is_dir():
        raise EGCError(
            f"the training photo folder {folder} (from {source}) does not exist: create it and put "
            "photos (PNG/JPEG/...) in it, or point EGC_TRAIN_DATA at another folder"
        )
    if not list_images(folder):
        raise EGCError(
            f"the training photo folder {folder} (from {source}) holds no images "
            f"({', '.join(IMAGE_SUFFIXES)}): add photos or point EGC_TRAIN_DATA at another folder"
        )
    return folder


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (png, jpg, jpeg, webp, bmp, tif, tiff; any case) directly in ``folder``, sorted by name.

    Hidden files (starting with ``.``) are skipped. Raises :class:`EGCError` if the folder does not exist.
    """
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise EGCError(f"{d} is not a folder (expected a folder of images)")
    return sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )
