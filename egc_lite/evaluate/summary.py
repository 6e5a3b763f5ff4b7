"""Means per (codec, setting) of an evaluation's rows, as a data frame and as Markdown; the Markdown tables
the benchmarks print (:func:`print_table`) come from here too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pandas as pd

from .store import FAILED, OK

NUMERIC = ("bpp", "psnr", "ms_ssim", "lf_psnr", "sharpness", "lpips", "dists", "enc_s", "dec_s")
UNAVAILABLE = "unavailable"


def rows_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """The successful rows as a data frame; learned-metric columns hold NaN where they were unavailable."""
    df = pd.DataFrame([r for r in rows if r.get("status") == OK])
    for col in NUMERIC:
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def summary_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """One line per (codec, setting): image count, mean of every metric, peak memory, targets reached."""
    df = rows_frame(rows)
    if df.empty:
        return pd.DataFrame(columns=["codec", "setting", "images"])
    g = df.groupby(["codec", "setting"], sort=False)
    out = g[[c for c in NUMERIC if c in df.columns]].mean()
    out.insert(0, "images", g.size())
    out["peak_mem_mb"] = g["peak_mem_mb"].max()
    reached = g["reached"].agg(lambda s: f"{int(s.fillna(False).astype(bool).sum())}/{len(s)}" if s.notna().any() else "")
    out["reached"] = reached
    out = out.reset_index().sort_values(["codec", "bpp"], kind="stable").reset_index(drop=True)
    return out


def table_lines(head: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """The lines of a Markdown table: ``head``, the separator, then one line per row as ``rows`` yields it."""
    yield "| " + " | ".join(head) + " |"
    yield "|" + "---|" * len(head)
    for row in rows:
        yield "| " + " | ".join(str(cell) for cell in row) + " |"


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table of ``rows`` (cells as given, ``str``-ed) under ``head``."""
    return "\n".join(table_lines(head, rows))


def print_table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a Markdown table line by line, each row as soon as ``rows`` yields it (a slow benchmark shows its
    rows as they are measured)."""
    for line in table_lines(head, rows):
        print(line, flush=True)


def _fmt(value, digits: int) -> str:
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return UNAVAILABLE
    return f"{value:.{digits}f}"


def markdown_summary(rows: Sequence[dict], notes: dict[str, str] | None = None, distribution: dict | None = None) -> str:
    """The summary as a Markdown table, with the reasons for unavailable metrics and failed rows."""
    s = summary_frame(rows)
    cols = [("codec", None), ("setting", None), ("images", None), ("bpp", 4), ("psnr", 2), ("ms_ssim", 4),
            ("lf_psnr", 2), ("sharpness", 3), ("lpips", 4), ("dists", 4), ("enc_s", 2), ("dec_s", 2),
            ("peak_mem_mb", 0), ("reached", None)]
    head = ["codec", "setting", "images", "bpp", "PSNR", "MS-SSIM", "LF-PSNR", "sharpness", "LPIPS", "DISTS",
            "enc s", "dec s", "peak MB", "target reached"]
    if distribution:
        head += ["FID", "KID"]
    body = []
    for _, r in s.iterrows():
        cells = [str(r[c]) if d is None else _fmt(r.get(c), d) for c, d in cols]
        if distribution:
            dist = distribution.get(f"{r['codec']} | {r['setting']}", {})
            cells += [_fmt(dist.get("fid"), 2), _fmt(dist.get("kid"), 4)]
        body.append(cells)
    lines = list(table_lines(head, body))
    failed = [r for r in rows if r.get("status") == FAILED]
    foot = [f"- {name}: {reason}" for name, reason in (notes or {}).items()]
    if distribution:
        reasons = {d["reason"] for d in distribution.values() if "reason" in d}
        foot += [f"- FID/KID: {r}" for r in sorted(reasons)]
    if failed:
        foot.append(f"- {len(failed)} failed rows (see rows.jsonl), e.g. {failed[0]['key']}: {failed[0].get('error')}")
    return "\n".join(lines + ([""] + foot if foot else []))
