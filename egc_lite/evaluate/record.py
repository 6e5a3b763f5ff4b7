"""How a notebook records its results for a sweep: :func:`record`.

A notebook run by ``egc sweep`` (or by papermill directly) calls ``record(psnr=..., bpp=...)``
wherever it has a result. The values are displayed as one output of that cell with the MIME type
:data:`MIME` (and a plain-text line for people), so they are stored **inside the output notebook**
and nothing else has to know where that notebook is written. :func:`read_records` gathers them
from an output notebook: later calls override earlier ones, key by key. The sweep copies them
into its table and into ``<point>.json`` beside each output notebook. Outside a kernel (a plain
script), :func:`record` only returns the values.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

from ..errors import ParameterError

MIME = "application/vnd.egc-lite.record+json"


def _scalar(name: str, value):
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            pass
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    raise ParameterError(f"record({name}=...) takes a number, a string, a bool or None, got {type(value).__name__}")


def record(**values) -> dict:
    """Record scalar results of this run (numbers, strings, bools); returns them as a dict."""
    data = {k: _scalar(k, v) for k, v in values.items()}
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with the kit
        return data
    if get_ipython() is not None:
        text = "recorded: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in data.items())
        display({MIME: data, "text/plain": text}, raw=True)
    return data


def read_records(notebook: str | Path | dict) -> dict:
    """Every value :func:`record` stored in an executed notebook (a path or its JSON), merged in order."""
    nb = notebook if isinstance(notebook, dict) else json.loads(Path(notebook).read_text(encoding="utf-8"))
    out: dict = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []) or []:
            data = output.get("data", {})
            if MIME in data and isinstance(data[MIME], dict):
                out.update(data[MIME])
    return out
