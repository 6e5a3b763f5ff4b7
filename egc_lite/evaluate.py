"""Rate-distortion tables: one row per (image, rate, codec), averaged per (rate, codec).

The benchmark scripts fill a :class:`ResultTable` with the generative codecs' rows and, through
:func:`add_reference_rows`, the codecs they are judged against at the same rate: the guide codec
alone and WebP/AVIF at the highest quality whose file fits (their floor when they cannot go that
low; the table counts the misses). Rates are always ``8 * file bytes / pixels``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from .baselines import classic_available, compress_at_bpp
from .data import pil_to_tensor, tensor_to_pil
from .metrics import ms_ssim, psnr


@dataclass
class Row:
    """One coded image: its rate, quality against the original, and timings in seconds."""

    bpp: float
    psnr: float
    ms_ssim: float
    enc_s: float = 0.0
    dec_s: float = 0.0
    missed: bool = False  # the codec could not reach the target rate


def score(y: torch.Tensor, x: torch.Tensor, bpp: float, enc_s: float = 0.0, dec_s: float = 0.0, missed: bool = False) -> Row:
    """A :class:`Row` for reconstruction ``y`` of ``x``; ``y`` is rounded to 8 bits first, as a PNG stores it."""
    y = pil_to_tensor(tensor_to_pil(y))
    return Row(bpp=bpp, psnr=psnr(y, x), ms_ssim=ms_ssim(y, x), enc_s=enc_s, dec_s=dec_s, missed=missed)


class ResultTable:
    """Rows grouped by ``(rate label, codec name)``, in the order they were first added."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[Row]] = defaultdict(list)

    def add(self, rate: str, codec: str, row: Row) -> Row:
        self.rows[(rate, codec)].append(row)
        return row

    def save_side_by_side(self, rate: str, x: torch.Tensor, outs: dict[str, torch.Tensor], path: Path) -> Path:
        """Write the original and the reconstructions ``outs`` (named as in the table, rate ``rate``)
        side by side, each captioned with its latest row's bpp and PSNR."""
        from .demo import side_by_side

        labels = ["original"] + [f"{n}: {self.rows[(rate, n)][-1].bpp:.3f} bpp {self.rows[(rate, n)][-1].psnr:.1f} dB" for n in outs]
        path.parent.mkdir(parents=True, exist_ok=True)
        side_by_side([x, *outs.values()], labels).save(path)
        return path

    def format(self, title: str = "") -> str:
        """Means per group as a Markdown table (timings left blank where not measured), under ``title``."""
        lines = ([title, ""] if title else []) + ["| rate | codec | bpp | PSNR | MS-SSIM | enc s | dec s | missed target |", "|---|---|---|---|---|---|---|---|"]
        for (rate, codec), rs in self.rows.items():
            def mean(key: str, rs: list[Row] = rs) -> float:
                return sum(getattr(r, key) for r in rs) / len(rs)

            timing = [f"{mean(k):.2f}" if mean(k) > 0 else "" for k in ("enc_s", "dec_s")]
            lines.append(f"| {rate} | {codec} | {mean('bpp'):.4f} | {mean('psnr'):.2f} | {mean('ms_ssim'):.4f} | "
                         f"{timing[0]} | {timing[1]} | {sum(r.missed for r in rs)}/{len(rs)} |")
        return "\n".join(lines)


def add_reference_rows(table: ResultTable, rate: str, x: torch.Tensor, target_bpp: float) -> dict[str, torch.Tensor]:
    """Code ``x`` with the guide codec and WebP/AVIF (where Pillow has them) at ``target_bpp``; add their
    rows under ``rate`` and return their reconstructions by name."""
    from .codecs import CompressOptions, make_codec

    guide = make_codec("guide")
    bs = guide.compress(x, CompressOptions(bpp=target_bpp))
    outs = {"guide": guide.decompress(bs)}
    table.add(rate, "guide", score(outs["guide"], x, bs.bpp(), missed=bs.bpp() > target_bpp))
    for name in ("webp", "avif"):
        if classic_available(name):
            r = compress_at_bpp(tensor_to_pil(x), name, target_bpp)
            outs[name] = pil_to_tensor(r.image)
            table.add(rate, name, score(outs[name], x, r.bpp, missed=not r.reached_target))
    return outs
