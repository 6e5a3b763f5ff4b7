"""``egc eval``: codecs x rate settings x images, one row per (image, codec, setting), resumable.

Every row comes from a real file: the codec writes it under ``<out>/files/``, the decoder reads it
back, and the rate is ``8 * file size / (H * W)``. Quality is measured on the 8-bit decoding against
the original: PSNR, MS-SSIM, LF-PSNR (8x8 block means), sharpness (gradient ratio), and LPIPS / DISTS
when their weights are on disk (the string ``"unavailable"`` otherwise, never a number). Timings are
wall-clock seconds of the encoder (for a classic codec at a target rate, its quality search
included) and of the decoder (reading the file included); peak memory is
:class:`~egc_lite.evaluate.memory.PeakMemory`'s.

Rows go to ``<out>/rows.jsonl`` as they finish; a second run with the same ``out`` skips the rows
already there (and retries failed ones), so a long evaluation survives Ctrl-C, and several runs
(other codecs, other rates) add up to one table. Each run rewrites ``results.csv``, ``results.json``,
``summary.md`` and the plots in ``figures/`` from all rows.
"""

from __future__ import annotations

import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..coding.classic import (
    CLASSIC_CODECS,
    QUALITY_RANGE,
    check_codec,
    classic_unavailable_reason,
    compress_at_bpp,
    decode_classic,
    encode_classic,
)
from ..data import list_images, load_image, pil_to_tensor, tensor_to_pil
from ..errors import EGCError, ParameterError
from ..metrics import compute_metrics, lf_psnr, metric_notes, ms_ssim, psnr, sharpness
from ..progress import progress
from .memory import PeakMemory
from .store import FAILED, OK, RecordStore, RunReport

GENERATIVE_CODECS = ("guide", "textinv", "diffeic")
ALL_CODECS = GENERATIVE_CODECS + CLASSIC_CODECS
LEARNED = ("lpips", "dists")
UNAVAILABLE = "unavailable"
#: Column order of the results table.
COLUMNS = ("image", "codec", "setting", "target_bpp", "quality", "bpp", "reached", "psnr", "ms_ssim", "lf_psnr",
           "sharpness", "lpips", "dists", "enc_s", "dec_s", "peak_mem_mb", "width", "height", "params", "file",
           "status", "error", "key")


@dataclass(frozen=True)
class Setting:
    """A rate setting: a target rate (``kind="bpp"``) or a codec's quality point (``kind="quality"``)."""

    kind: str
    value: float

    @property
    def label(self) -> str:
        return f"bpp={self.value:g}" if self.kind == "bpp" else f"q={int(self.value)}"


@dataclass(frozen=True)
class CodecOverrides:
    """Encoder/decoder choices of the generative codecs (None: the codec's default); classic codecs ignore them."""

    steps: int | None = None
    sf: float | None = None
    sc: float | None = None
    guidance_mode: str | None = None
    start_step: int | None = None
    eta: float | None = None
    inversion_steps: int | None = None
    seed: int = 0

    def label(self, codec: str) -> str:
        """``"sc=0 steps=10"``: the fields ``codec`` reads that differ from its defaults (empty for classic codecs)."""
        reads = {"textinv": ("sc", "mode", "sf", "steps", "inv"), "diffeic": ("steps", "start", "eta")}.get(codec, ())
        values = {"sc": self.sc, "mode": self.guidance_mode, "sf": self.sf, "steps": self.steps, "start": self.start_step, "eta": self.eta,
                  "inv": self.inversion_steps}
        parts = [f"{k}={v}" if isinstance(v, str) else f"{k}={v:g}" for k in reads if (v := values[k]) is not None]
        return " ".join(parts + ([f"seed={self.seed}"] if self.seed and reads else []))


@dataclass(frozen=True)
class EvalConfig:
    """What ``egc eval`` runs: codecs, rate settings, images, and where the results go."""

    out: Path
    codecs: tuple[str, ...] = ("guide", "jpeg", "webp", "avif")
    bpp: tuple[float, ...] = ()
    quality: tuple[int, ...] = ()
    images: Path | None = None  # a folder of images; None: Kodak (egc_lite.data.kodak_dir)
    limit: int | None = None  # the first N images only
    max_side: int | None = None  # downscale so the longer side is at most this (None: full size)
    backbone: str = "egc-tiny"
    device: str = "auto"
    overrides: CodecOverrides = field(default_factory=CodecOverrides)
    save_recon: bool = False  # write every decoding as PNG under <out>/recon (FID needs them)
    fid: bool = False  # FID/KID per (codec, setting) at the HiFiC protocol, when Inception weights exist

    def settings(self) -> list[Setting]:
        return [Setting("bpp", float(b)) for b in self.bpp] + [Setting("quality", int(q)) for q in self.quality]


@dataclass
class EvalReport(RunReport):
    """What a run did, and where its tables and plots are, with the markdown summary."""

    summary: str


def canonical_codec(name: str) -> str:
    """The codec's canonical name (``jpg`` -> ``jpeg``), or :class:`ParameterError`."""
    key = str(name).strip().lower()
    if key in GENERATIVE_CODECS:
        return key
    try:
        return check_codec(key)
    except ParameterError:
        raise ParameterError(f"unknown codec {name!r}: choose from {', '.join(ALL_CODECS)}") from None


def check_config(cfg: EvalConfig) -> list[str]:
    """Validate ``cfg`` before anything runs; returns the canonical codec names."""
    codecs = list(dict.fromkeys(canonical_codec(c) for c in cfg.codecs))
    if not codecs:
        raise ParameterError("give at least one codec (--codecs)")
    if not cfg.bpp and not cfg.quality:
        raise ParameterError("give at least one rate: --bpp TARGET... and/or --quality N...")
    for b in cfg.bpp:
        if not 0 < b <= 24:
            raise ParameterError(f"--bpp targets must be in (0, 24], got {b}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ParameterError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.max_side is not None and cfg.max_side < 16:
        raise ParameterError(f"--max-side must be at least 16, got {cfg.max_side}")
    for c in codecs:
        if c in CLASSIC_CODECS and (reason := classic_unavailable_reason(c)):
            raise ParameterError(reason)
        for q in cfg.quality:
            _check_quality(c, q)
    return codecs


def _check_quality(codec: str, q: int) -> None:
    if codec in CLASSIC_CODECS or codec == "guide":
        lo, hi = QUALITY_RANGE.get(codec, (0, 100))
        ok = lo <= q <= hi
    elif codec == "diffeic":
        from ..codecs.diffeic import QUALITY_LAMBDA

        ok, lo, hi = q in QUALITY_LAMBDA, min(QUALITY_LAMBDA), max(QUALITY_LAMBDA)
    else:
        from ..codecs.textinv import QUALITY_BPP

        ok, lo, hi = q in QUALITY_BPP, min(QUALITY_BPP), max(QUALITY_BPP)
    if not ok:
        raise ParameterError(f"--quality {q} is out of range for {codec} ({lo}..{hi})")


def image_paths(cfg: EvalConfig) -> list[Path]:
    """The images of the run: ``cfg.images`` (a folder) or Kodak, the first ``cfg.limit``."""
    if cfg.images is not None:
        paths = list_images(cfg.images)
        if not paths:
            raise ParameterError(f"{cfg.images} holds no images")
    else:
        from ..data import kodak_paths

        paths = kodak_paths(range(1, min(cfg.limit, 24) + 1) if cfg.limit else None)
    return paths[: cfg.limit] if cfg.limit else paths


def load_eval_image(path: Path, max_side: int | None) -> torch.Tensor:
    """An image as (3, H, W), downscaled (Lanczos) so that its longer side is at most ``max_side``."""
    from PIL import Image

    x = load_image(path)
    if max_side and max(x.shape[1:]) > max_side:
        img = tensor_to_pil(x)
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        x = pil_to_tensor(img)
    return x


def codec_label(codec: str, overrides: CodecOverrides) -> str:
    """The codec column: its name, plus the overrides a generative codec reads (``textinv sc=0``)."""
    return f"{codec} {overrides.label(codec)}".strip()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def row_key(image: str, codec: str, setting: str) -> str:
    return f"{image}|{codec}|{setting}"


def _quantize(y: torch.Tensor) -> torch.Tensor:
    return pil_to_tensor(tensor_to_pil(y))  # what a PNG holds


def score(x: torch.Tensor, y8: torch.Tensor, learned: dict[str, bool]) -> dict:
    """Every per-image metric of 8-bit decoding ``y8`` against ``x``; learned ones ``"unavailable"`` without weights."""
    row = {"psnr": psnr(y8, x), "ms_ssim": ms_ssim(y8, x), "lf_psnr": lf_psnr(y8, x), "sharpness": sharpness(y8, x)}
    names = [m for m, ok in learned.items() if ok]
    values = compute_metrics(x, y8, names) if names else {}
    row.update({m: values.get(m, UNAVAILABLE) if learned[m] else UNAVAILABLE for m in learned})
    return row


class _Codecs:
    """The codec objects of a run, made once (the backbone is loaded on first need)."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self._backbone = None
        self._codecs: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._codecs:
            from ..codecs import codec_class, make_codec

            if codec_class(name).uses_backbone and self._backbone is None:
                from ..backbone import load_backbone

                self._backbone = load_backbone(self.cfg.backbone, device=self.cfg.device)
            self._codecs[name] = make_codec(name, self._backbone)
        return self._codecs[name]

    @property
    def device(self) -> torch.device:
        return self._backbone.device if self._backbone is not None else torch.device("cpu")


def _run_classic(x: torch.Tensor, codec: str, setting: Setting, path: Path) -> tuple[torch.Tensor, dict, float, float]:
    img = tensor_to_pil(x)
    t0 = time.perf_counter()
    if setting.kind == "bpp":
        quality = compress_at_bpp(img, codec, setting.value).quality
    else:
        quality = int(setting.value)
    data = encode_classic(img, codec, quality)
    enc_s = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    t0 = time.perf_counter()
    y = pil_to_tensor(decode_classic(path.read_bytes()))
    return y, {"quality": quality}, enc_s, time.perf_counter() - t0


def _run_generative(x: torch.Tensor, codec, setting: Setting, ov: CodecOverrides, path: Path) -> tuple[torch.Tensor, dict, float, float]:
    from ..codecs import CompressOptions
    from ..coding.bitstream import read_bitstream, write_bitstream

    opts = CompressOptions(bpp=setting.value if setting.kind == "bpp" else None,
                           quality=int(setting.value) if setting.kind == "quality" else None,
                           seed=ov.seed, steps=ov.steps, guidance_scale=ov.sf, compression_guidance=ov.sc,
                           guidance_mode=ov.guidance_mode,
                           start_step=ov.start_step, eta=ov.eta, inversion_steps=ov.inversion_steps)
    t0 = time.perf_counter()
    bs = codec.compress(x, opts)
    write_bitstream(path, bs)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = codec.decompress(read_bitstream(path, expected_backbone_id=codec.backbone_id or None))
    return y, dict(bs.params), enc_s, time.perf_counter() - t0


_EXT = {"jpeg": ".jpg", "webp": ".webp", "avif": ".avif"}


def evaluate_one(x: torch.Tensor, image: str, codec: str, setting: Setting, cfg: EvalConfig, codecs: _Codecs,
                 learned: dict[str, bool]) -> dict:
    """Code, decode and score one (image, codec, setting); returns its row (status ``ok``)."""
    label = codec_label(codec, cfg.overrides)
    rel = Path("files") / _safe(label) / _safe(setting.label) / f"{image}{_EXT.get(codec, '.egc')}"
    path = cfg.out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = None if codec in CLASSIC_CODECS else codecs.get(codec)  # loads the backbone once, outside the measurement
    with PeakMemory(codecs.device if obj is not None else "cpu") as mem:
        if obj is None:
            y, params, enc_s, dec_s = _run_classic(x, codec, setting, path)
        else:
            y, params, enc_s, dec_s = _run_generative(x, obj, setting, cfg.overrides, path)
    h, w = x.shape[1:]
    y8 = _quantize(y)
    rate = 8 * path.stat().st_size / (h * w)
    row = {"image": image, "codec": label, "setting": setting.label,
           "target_bpp": setting.value if setting.kind == "bpp" else None,
           "quality": int(setting.value) if setting.kind == "quality" else None,
           "bpp": rate, "reached": (rate <= setting.value) if setting.kind == "bpp" else None,
           **score(x, y8, learned), "enc_s": enc_s, "dec_s": dec_s, "peak_mem_mb": mem.peak_mb,
           "width": w, "height": h, "params": params, "file": str(rel), "status": OK, "error": None,
           "key": row_key(image, label, setting.label)}
    if cfg.save_recon or cfg.fid:
        from ..data import save_image

        save_image(y8, recon_path(cfg.out, label, setting.label, image))
    return row


def recon_path(out: Path, codec: str, setting: str, image: str) -> Path:
    """Where a decoding is saved with ``save_recon``: ``<out>/recon/<codec>/<setting>/<image>.png``."""
    return Path(out) / "recon" / _safe(codec) / _safe(setting) / f"{image}.png"


def run_eval(cfg: EvalConfig) -> EvalReport:
    """Run (or resume) an evaluation; see the module docstring."""
    codec_names = check_config(cfg)
    paths = image_paths(cfg)
    out = Path(cfg.out)
    store = RecordStore(out)
    notes = metric_notes(LEARNED)
    learned = {m: m not in notes for m in LEARNED}
    codecs = _Codecs(cfg)
    jobs = [(p, c, s) for p in paths for c in codec_names for s in cfg.settings()]
    ran = skipped = failed = 0
    t_start = time.perf_counter()
    current: tuple[Path, torch.Tensor] | None = None
    for path, codec, setting in progress(jobs, desc="eval"):
        image = path.stem
        key = row_key(image, codec_label(codec, cfg.overrides), setting.label)
        if store.is_done(key):
            skipped += 1
            continue
        if current is None or current[0] != path:
            current = (path, load_eval_image(path, cfg.max_side))
        try:
            store.add(evaluate_one(current[1], image, codec, setting, cfg, codecs, learned))
            ran += 1
        except (EGCError, RuntimeError, ValueError, OSError) as exc:
            failed += 1
            store.add({"image": image, "codec": codec_label(codec, cfg.overrides), "setting": setting.label,
                       "status": FAILED, "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc(limit=5), "key": key})
    files = write_outputs(cfg, store, notes)
    from .summary import markdown_summary

    return EvalReport(out, ran, skipped, failed, time.perf_counter() - t_start, files,
                      markdown_summary(store.records(), notes))


def write_outputs(cfg: EvalConfig, store: RecordStore, notes: dict[str, str]) -> list[Path]:
    """Tables, summary, plots (and FID/KID when asked) from every row of the store."""
    from .plots import save_eval_figures
    from .summary import markdown_summary

    out = Path(cfg.out)
    files = store.write_tables("results", COLUMNS)
    dist = distribution_table(cfg, store) if cfg.fid else None
    md = markdown_summary(store.records(), notes, dist)
    (out / "summary.md").write_text(md + "\n", encoding="utf-8")
    files.append(out / "summary.md")
    files += save_eval_figures(store.records(), out / "figures", dist)
    return files


def distribution_table(cfg: EvalConfig, store: RecordStore) -> dict[str, dict]:
    """FID/KID per ``"codec | setting"`` over its images (from the saved decodings); written to distribution.json."""
    import json

    from .distribution import distribution_metrics

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in store.records(OK):
        groups.setdefault((r["codec"], r["setting"]), []).append(r)
    paths = {p.stem: p for p in image_paths(cfg)}
    result: dict[str, dict] = {}
    for (codec, setting), rows in progress(list(groups.items()), desc="fid"):
        rows = [r for r in rows if r["image"] in paths and recon_path(cfg.out, codec, setting, r["image"]).is_file()]
        if not rows:
            continue
        xs = [load_eval_image(paths[r["image"]], cfg.max_side) for r in rows]
        ys = [load_image(recon_path(cfg.out, codec, setting, r["image"])) for r in rows]
        try:
            result[f"{codec} | {setting}"] = distribution_metrics(xs, ys)
        except ParameterError as exc:  # e.g. images smaller than one patch
            result[f"{codec} | {setting}"] = {"fid": UNAVAILABLE, "kid": UNAVAILABLE, "reason": str(exc)}
    (Path(cfg.out) / "distribution.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result
