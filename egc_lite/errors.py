"""The kit's error types.

Every mistake a user can make (a bad file, a bad image, a missing model, a wrong
parameter) raises a subclass of :class:`EGCError`. The command line prints its
message on one line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class EGCError(Exception):
    """Base class of every user-facing error of egc_lite."""


class BitstreamError(EGCError, ValueError):
    """A file is not a valid egc_lite bitstream: corrupt, truncated, foreign,
    made by a newer format version, or made with another backbone."""


class ImageError(EGCError, ValueError):
    """An input image cannot be read or used."""


class ModelNotFoundError(EGCError, FileNotFoundError):
    """Model weights could not be found where they were looked for."""


class ParameterError(EGCError, ValueError):
    """A parameter has a value the kit cannot use."""


class EGCWarning(UserWarning):
    """Something works but not as well as it should (e.g. codec A without a fitted prior); the
    command line prints it as ``egc: warning: ...``."""
