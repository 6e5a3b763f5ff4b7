"""A resumable table of records: one JSON object per line in ``rows.jsonl``, keyed.

Each record carries a ``key`` (a string naming what it measured) and a ``status`` (``"ok"`` or
``"failed"``, with ``error``). Appending is the only write; when a key appears more than once the
last line wins, so a failed record is replaced by its successful retry. A crash can leave a partial
last line: it is ignored on reading. Only one process writes a store (eval's loop, or the sweep's
driver that gathers its workers' results).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OK = "ok"
FAILED = "failed"


@dataclass
class RunReport:
    """What a resumable run (``egc eval``, ``egc sweep``) did and where its results are."""

    out: Path
    ran: int
    skipped: int
    failed: int
    seconds: float
    files: list[Path]


def _jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become strings; everything else passes."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RecordStore:
    """Records in ``<folder>/rows.jsonl``, the latest per key, in first-seen order."""

    FILE = "rows.jsonl"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self._records: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if isinstance(rec, dict) and "key" in rec:
                    self._records[rec["key"]] = rec

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def is_done(self, key: str) -> bool:
        """Whether ``key`` has a successful record (failed ones are run again)."""
        rec = self._records.get(key)
        return rec is not None and rec.get("status") == OK

    def add(self, record: dict) -> dict:
        """Append ``record`` (it must have ``key`` and ``status``) and flush it to disk."""
        if "key" not in record or record.get("status") not in (OK, FAILED):
            raise ValueError("a record needs a 'key' and a status of 'ok' or 'failed'")
        rec = _jsonable(dict(record))
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._records[rec["key"]] = rec
        return rec

    def records(self, status: str | None = None) -> list[dict]:
        """The latest record per key (only those with ``status`` when given)."""
        return [r for r in self._records.values() if status is None or r.get("status") == status]

    def write_tables(self, stem: str = "results", columns: Iterable[str] | None = None,
                     records: list[dict] | None = None) -> list[Path]:
        """Write ``records`` (default: every latest record) to ``<stem>.csv`` and ``<stem>.json``; returns the paths."""
        import pandas as pd

        records = self.records() if records is None else records
        df = pd.DataFrame(records)
        for col in df.columns:  # nested values (a codec's header fields) as JSON text in the CSV
            df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
        if columns is not None and not df.empty:
            first = [c for c in columns if c in df.columns]
            df = df[first + [c for c in df.columns if c not in first]]
        csv_path, json_path = self.folder / f"{stem}.csv", self.folder / f"{stem}.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv_path, index=False)
        json_path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        return [csv_path, json_path]
