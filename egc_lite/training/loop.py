"""What every training loop of the kit shares: where the photos are, random crops of them, and the
checkpoint and log files (written atomically / appended, so a killed run resumes from its last save)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def data_folders(spec: str | Path | None) -> list[Path]:
    """Training folders: ``spec`` is one folder or several joined by ``os.pathsep`` (``a:b:c``);
    ``None`` means :func:`egc_lite.data.training_photos_dir`."""
    from ..data import training_photos_dir

    if spec is None:
        return [training_photos_dir()]
    return [Path(part).expanduser() for part in str(spec).split(os.pathsep) if part]


class CropSampler:
    """Random crops of a few pre-scaled copies of each photo, with horizontal flips.

    A scale is kept for a photo only when its shorter side stays at least ``min_side`` pixels
    (the full size is always kept), so small photos are not blurred by upsampling to a crop.
    """

    def __init__(self, folder: Path | list[Path], scales: tuple[float, ...] = (1.0, 0.75, 0.6, 0.45), seed: int = 0,
                 min_side: int = 128) -> None:
        folders = folder if isinstance(folder, list) else [folder]
        paths = sorted(p for f in folders for p in f.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        if not paths:
            raise FileNotFoundError(f"no training photos in {', '.join(map(str, folders))}")
        self.pyramid: list[torch.Tensor] = []
        for p in paths:
            img = Image.open(p).convert("RGB")
            for s in scales:
                if s != 1.0 and min(img.width, img.height) * s < min_side:
                    continue
                w, h = max(64, round(img.width * s)), max(64, round(img.height * s))
                arr = np.asarray(img.resize((w, h), Image.BICUBIC), dtype=np.uint8)
                self.pyramid.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        self.rng = random.Random(seed)

    def batch(self, n: int, crop: int) -> torch.Tensor:
        out = []
        for _ in range(n):
            img = self.pyramid[self.rng.randrange(len(self.pyramid))]
            _, h, w = img.shape
            c = min(crop, h, w)
            y, x = self.rng.randrange(h - c + 1), self.rng.randrange(w - c + 1)
            t = img[:, y : y + c, x : x + c]
            if self.rng.random() < 0.5:
                t = t.flip(-1)
            if c != crop:
                t = F.interpolate(t[None].float(), size=(crop, crop), mode="bilinear")[0]
            out.append(t.float() / 255.0)
        return torch.stack(out)


def save_checkpoint(path: Path, obj: dict) -> None:
    """``torch.save`` to a temporary file, then renamed over ``path`` (never a half-written checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def append_log(path: Path, record: dict) -> None:
    """One JSON line appended to a training log (``<ckpt>/<phase>_log.jsonl``)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
