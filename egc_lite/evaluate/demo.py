"""``egc demo``: one photo through a codec, written to a file and decoded from it.

The photo is Kodak image 23 when it is already on disk (``$EGC_DATA/kodak`` or the download
cache), else the CC0 photo shipped in the package (:data:`egc_lite.data.DEMO_IMAGE`): the demo
never downloads. Writes ``<out>/demo.png`` (original | codec | for a diffusion codec, the guide codec at
the same rate, i.e. its side information alone | WebP at the same rate or its floor, labelled) and
returns a short report with the image used, the rate from the file size, PSNR, MS-SSIM and sharpness.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..codecs import DEFAULT_BACKBONE, DEFAULT_CODEC, CompressOptions, load_codec
from ..coding.bitstream import read_bitstream, write_bitstream
from ..coding.classic import classic_available, compress_at_bpp
from ..data import DEMO_IMAGE, kodak_on_disk, load_image, load_kodak, pil_to_tensor, tensor_to_pil
from ..metrics import lf_psnr, ms_ssim, psnr, sharpness

#: The Kodak image the demo prefers when it is on disk.
DEMO_KODAK = 23


def demo_input(image: int | None = None) -> tuple[torch.Tensor, str, str]:
    """The demo's photo ``(3, H, W)``, a short name for its files, and a line saying where it came from.

    ``image=None``: Kodak 23 if on disk, else the embedded photo. A number: that Kodak image
    (downloaded into the cache if needed, like every Kodak reader of the kit).
    """
    if image is None:
        path = kodak_on_disk(DEMO_KODAK)
        if path is None:
            return load_image(DEMO_IMAGE), DEMO_IMAGE.stem, f"{DEMO_IMAGE.name} (the CC0 photo shipped in the package; Kodak not on disk)"
        image = DEMO_KODAK
    return load_kodak(image), f"kodim{image:02d}", f"kodim{image:02d} (Kodak)"


def side_by_side(images: list[torch.Tensor], labels: list[str], gap: int = 8) -> Image.Image:
    """Images ``(3, H, W)`` in a row with a caption strip above each."""
    pils = [tensor_to_pil(x) for x in images]
    h = max(p.height for p in pils)
    w = sum(p.width for p in pils) + gap * (len(pils) - 1)
    canvas = Image.new("RGB", (w, h + 22), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for p, label in zip(pils, labels):
        canvas.paste(p, (x, 22))
        draw.text((x + 4, 5), label, fill="black")
        x += p.width + gap
    return canvas


#: LF-PSNR (dB) the diffusion decoder may lose against the guide and still be said to keep its colour and layout.
LF_TOLERANCE = 0.5


def compare_with_guide(codec: dict[str, float], guide: dict[str, float]) -> str:
    """One sentence on what the diffusion decoder adds to its side information, read off the scores (``psnr``,
    ``lf`` = LF-PSNR, ``sharpness``) of its output and of the guide codec's at the same bytes; it says only what
    the numbers say (sharpness counts detail, not whether the detail is the photograph's)."""
    ratio = codec["sharpness"] / max(guide["sharpness"], 1e-6)
    lf_gap = codec["lf"] - guide["lf"]
    sharper = f"{ratio:.1f}x the guide's sharpness" if ratio >= 1.1 else "no sharper than the guide"
    if lf_gap < -LF_TOLERANCE:
        fidelity = (f"but its colours and layout are {-lf_gap:.1f} dB (LF-PSNR) further from the photograph than the "
                    "guide's: it trades fidelity for detail that is its own, not the photograph's")
    else:
        fidelity = f"with the guide's colours and layout kept (LF-PSNR {lf_gap:+.1f} dB)"
    psnr_note = "PSNR, which rewards blur, prefers the guide" if codec["psnr"] < guide["psnr"] else "and a higher PSNR too"
    return f"the diffusion decoder gives {sharper}, {fidelity}; {psnr_note} ({codec['psnr'] - guide['psnr']:+.2f} dB)"


def run_demo(image: int | None = None, codec: str | None = None, bpp: float = 0.07, out_dir: str | Path = "figures",
             backbone: str = DEFAULT_BACKBONE, device: str = "auto") -> str:
    """Compress the demo photo (see :func:`demo_input`) at about ``bpp`` and report; returns the report text."""
    name = codec or DEFAULT_CODEC
    x, stem, source = demo_input(image)
    c = load_codec(name, backbone, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = x.shape[1:]
    t0 = time.perf_counter()
    bs = c.compress(x, CompressOptions(bpp=bpp))
    t_enc = time.perf_counter() - t0
    path = out / f"{stem}.{name}.egc"
    n = write_bitstream(path, bs)
    t0 = time.perf_counter()
    y = c.decompress(read_bitstream(path)).clamp(0, 1)
    t_dec = time.perf_counter() - t0
    y8 = pil_to_tensor(tensor_to_pil(y))
    rate = 8 * n / (h * w)
    p, sh = psnr(y8, x), sharpness(y8, x)
    images, labels = [x, y8], ["original", f"{name}: {rate:.4f} bpp, {p:.2f} dB, sharpness {sh:.2f}"]
    lines = [f"{source}, {w}x{h}, with codec {name}: {n} bytes = {rate:.4f} bpp (file {path})",
             f"  PSNR {p:.2f} dB, MS-SSIM {ms_ssim(y8, x):.4f}, sharpness {sh:.2f} "
             f"(1 = as sharp as the original), encode {t_enc:.1f} s, decode {t_dec:.1f} s"]
    if name != "guide":  # the side information alone at the same bytes: what the diffusion model adds to it
        g = load_codec("guide", backbone, device)
        yg = pil_to_tensor(tensor_to_pil(g.decompress(g.compress(x, CompressOptions(bpp=rate))).clamp(0, 1)))
        codec_scores = {"psnr": p, "lf": lf_psnr(y8, x), "sharpness": sh}
        guide_scores = {"psnr": psnr(yg, x), "lf": lf_psnr(yg, x), "sharpness": sharpness(yg, x)}
        images.append(yg)
        labels.append(f"guide codec: {rate:.4f} bpp, {guide_scores['psnr']:.2f} dB, sharpness {guide_scores['sharpness']:.2f}")
        lines.append(f"  guide codec (downsample + WebP) at the same rate: PSNR {guide_scores['psnr']:.2f} dB, "
                     f"LF-PSNR {guide_scores['lf']:.2f} dB (8x8 block means: colour and layout), sharpness "
                     f"{guide_scores['sharpness']:.2f}")
        lines.append("  " + compare_with_guide(codec_scores, guide_scores))
    if classic_available("webp"):
        r = compress_at_bpp(tensor_to_pil(x), "webp", rate)
        xw = pil_to_tensor(r.image)
        p, sh = psnr(xw, x), sharpness(xw, x)
        images.append(xw)
        labels.append(f"WebP q{r.quality}: {r.bpp:.4f} bpp, {p:.2f} dB, sharpness {sh:.2f}")
        lines.append(f"  WebP at the same rate: {r.bpp:.4f} bpp, PSNR {p:.2f} dB, MS-SSIM {ms_ssim(xw, x):.4f}, "
                     f"sharpness {sh:.2f}" + ("" if r.reached_target else f" ({r.note})"))
    fig = out / "demo.png"
    side_by_side(images, labels).save(fig)
    lines.append(f"  side-by-side: {fig}")
    return "\n".join(lines)
