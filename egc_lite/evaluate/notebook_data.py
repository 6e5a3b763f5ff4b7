"""The images the notebooks read, with a fallback that works on a fresh clone (no ``../shared``, no network).

:func:`notebook_image`: a Kodak image when it is on disk (``$EGC_DATA/kodak`` or the cache; never
downloaded here), else the CC0 photo shipped in the package (:data:`egc_lite.data.DEMO_IMAGE`).
:func:`training_images`: the first ``n`` training photos (``$EGC_TRAIN_DATA`` or ``$EGC_DATA/photos-train``),
else ``n`` crops of the shipped photo (flipped, at two scales). Each returns a line that says which
it used, so that a notebook can print it.
"""

from __future__ import annotations

import torch

from ..data import DEMO_IMAGE, kodak_on_disk, list_images, load_image, training_photos_dir
from ..errors import EGCError

__all__ = ["notebook_image", "training_images"]


def notebook_image(index: int) -> tuple[torch.Tensor, str, str]:
    """``(image (3, H, W) in [0, 1], short name, where it came from)``: Kodak ``index`` if on disk, else
    the shipped photo."""
    path = kodak_on_disk(index)
    if path is not None:
        return load_image(path), f"kodim{index:02d}", f"kodim{index:02d} (Kodak, {path.parent})"
    return (load_image(DEMO_IMAGE), DEMO_IMAGE.stem,
            f"{DEMO_IMAGE.name}, the CC0 photo shipped in the package (Kodak image {index} is not on disk)")


def _crops(n: int) -> list[torch.Tensor]:
    """``n`` different square crops of the shipped photo: positions on a grid, mirrored every other one,
    every third at half size."""
    base = load_image(DEMO_IMAGE)
    H, W = base.shape[-2:]
    out = []
    for k in range(n):
        side = 256 if k % 3 != 2 else 128
        i = (k * 37) % max(1, H - side + 1)
        j = (k * 61) % max(1, W - side + 1)
        crop = base[:, i:i + side, j:j + side]
        out.append(crop.flip(-1) if k % 2 else crop)
    return out


def training_images(n: int) -> tuple[list[torch.Tensor], str]:
    """``(images, where they came from)``: up to ``n`` training photos, else ``n`` crops of the shipped photo."""
    try:
        paths = list_images(training_photos_dir())[:n]
        return [load_image(p) for p in paths], f"{len(paths)} training photos from {paths[0].parent}"
    except EGCError as exc:
        return _crops(n), (f"{n} crops of {DEMO_IMAGE.name}, the CC0 photo shipped in the package "
                           f"(no training photos here: {exc})")
