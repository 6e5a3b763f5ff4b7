"""Progress bars that can be switched off.

Progress is shown with tqdm unless ``EGC_PROGRESS=0`` is set in the environment or
:func:`set_progress` turned it off (notebooks and CI run with it off).
"""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled: bool | None = None


def set_progress(enabled: bool) -> None:
    """Switch progress bars on or off for this process."""
    global _enabled
    _enabled = bool(enabled)


def progress_enabled() -> bool:
    """Whether progress bars are shown (``EGC_PROGRESS=0`` turns them off)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get("EGC_PROGRESS", "1").strip().lower() not in {"0", "false", "no", "off"}


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None, **kwargs) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm bar when progress is enabled."""
    return tqdm(iterable, desc=desc, total=total, disable=not progress_enabled(), leave=False, **kwargs)
