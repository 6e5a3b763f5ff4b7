"""Where the kit's weights are: those shipped in this folder and the user's own (a small zoo, as CompressAI's).

Shipped (in git, beside this file, each with its ``MODEL_CARD.md``):

* ``egc-tiny/`` (:data:`EGC_TINY_DIR`) — the embedded backbone, a diffusers folder (``vae/``, ``unet/``,
  ``scheduler/``, the null embedding, the token encoder and codec A's prior fitted for it);
* ``diffeic/q1``, ``q3``, ``q5`` (:data:`DIFFEIC_DIR`) — codec B's rate points for egc-tiny;
* ``textinv_tables.safetensors`` (:data:`TEXTINV_TABLES`) — codec A's probability tables.

The user's, never inside the package or a model folder: codec A's priors (:func:`prior_path`, written by
``egc train textinv-prior``) and codec B's rate points (:func:`rate_point_folder`, written by
``egc train diffeic-export``), one folder per backbone id under ``$EGC_PRIORS`` / ``$EGC_DIFFEIC_WEIGHTS``,
else ``~/.cache/egc_lite/priors`` / ``~/.cache/egc_lite/diffeic``.

Paths only: this module imports neither torch nor any model code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
#: The embedded backbone (``load_backbone("egc-tiny")``).
EGC_TINY_DIR = WEIGHTS_DIR / "egc-tiny"
#: Codec B's shipped rate points: ``<DIFFEIC_DIR>/q{N}``.
DIFFEIC_DIR = WEIGHTS_DIR / "diffeic"
#: Codec A's shipped CDF tables (CompressAI's default scale table, 16-bit precision).
TEXTINV_TABLES = WEIGHTS_DIR / "textinv_tables.safetensors"
#: The file name of codec A's embedding prior, in the user's prior folder or beside a backbone.
PRIOR_FILE = "textinv_prior.safetensors"


def _user_folder(env: str, name: str) -> Path:
    """``$<env>``, else ``$XDG_CACHE_HOME/egc_lite/<name>``, else ``~/.cache/egc_lite/<name>``."""
    value = os.environ.get(env, "").strip()
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "egc_lite" / name


def priors_root() -> Path:
    """Where ``egc train textinv-prior`` writes priors: ``$EGC_PRIORS``, else ``~/.cache/egc_lite/priors``."""
    return _user_folder("EGC_PRIORS", "priors")


def prior_path(backbone_id: str) -> Path:
    """The user's prior file for a backbone id (outside every model folder)."""
    return priors_root() / backbone_id / PRIOR_FILE


def rate_points_root() -> Path:
    """Where exported rate points go, one folder per backbone id: ``$EGC_DIFFEIC_WEIGHTS``, else
    ``~/.cache/egc_lite/diffeic`` (never inside the package or a model folder by default)."""
    return _user_folder("EGC_DIFFEIC_WEIGHTS", "diffeic")


def trained_for(folder: Path) -> str | None:
    """The backbone id recorded in a rate point's ``config.json`` (None if unreadable)."""
    try:
        return str(json.loads((folder / "config.json").read_text()).get("backbone_id", ""))
    except (OSError, ValueError, AttributeError):
        return None


def rate_point_folder(backbone_id: str, quality: int) -> Path:
    """Codec B's rate point ``quality`` for a backbone id: the user's folder
    (``<rate_points_root()>/<backbone id>/q{N}``) when it holds one, else the shipped point when it was
    trained for this backbone, else the user's folder (where ``egc train diffeic-export`` would write it)."""
    mine = rate_points_root() / backbone_id / f"q{quality}"
    shipped = DIFFEIC_DIR / f"q{quality}"
    if not (mine / "config.json").is_file() and trained_for(shipped) == backbone_id:
        return shipped
    return mine


def shipped_rate_point_lambdas() -> dict[int, float]:
    """The rate weight :math:`\\lambda` each shipped rate point was trained with (its ``config.json``), by quality."""
    out = {}
    for folder in sorted(DIFFEIC_DIR.glob("q[0-9]")):
        try:
            out[int(folder.name[1:])] = float(json.loads((folder / "config.json").read_text())["config"]["lmbda"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
