"""How fast the ``egc`` command answers: each command as a fresh subprocess, several runs.

Prints min and median wall time of ``egc --help``, ``egc info``, ``egc compress --codec guide``
and ``egc decompress`` (guide file) on a 512x768 image, and import times in a fresh interpreter:
``torch`` (the floor of any command that touches an image), ``egc_lite.cli``, ``egc_lite.codecs``
(the lazy registry), and the guide and textinv codec modules (what a model-backed command pays
before it loads a model). Nothing here is a test: the figures depend on the machine and on a warm
file cache (the first run of each is usually slowest).

    python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from egc_lite.evaluate.summary import print_table


def egc_command() -> list[str]:
    """The installed ``egc`` script beside this interpreter, else ``python -m egc_lite.cli``."""
    script = Path(sys.executable).with_name("egc")
    return [str(script)] if script.exists() else [sys.executable, "-m", "egc_lite.cli"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall time of one run of ``cmd``; raises if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return dt


def import_time(module: str, env: dict[str, str]) -> float:
    """Seconds to import ``module`` in a fresh interpreter (interpreter start-up excluded)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(r.stdout.strip())


def write_image(path: Path) -> None:
    """A smooth random 512x768 RGB PNG (no data set needed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    coarse.resize((768, 512), Image.BICUBIC).save(path)


def report(name: str, values: list[float]) -> list[str]:
    return [name, f"{min(values):.2f}", f"{statistics.median(values):.2f}", str(len(values))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "EGC_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    egc = egc_command()
    with tempfile.TemporaryDirectory() as tmp:
        img, egc_file, png = Path(tmp) / "in.png", Path(tmp) / "in.egc", Path(tmp) / "out.png"
        write_image(img)
        commands = {
            "egc --help": egc + ["--help"],
            "egc compress IMAGE --codec guide --bpp 0.05": egc + ["compress", str(img), "-o", str(egc_file), "--codec", "guide", "--bpp", "0.05"],
            "egc info FILE": egc + ["info", str(egc_file)],
            "egc decompress FILE (guide)": egc + ["decompress", str(egc_file), "-o", str(png)],
        }

        def runs():
            for name, cmd in commands.items():
                yield report(name, [timed(cmd, env) for _ in range(args.runs)])
            for module in ("torch", "egc_lite.cli", "egc_lite.codecs", "egc_lite.codecs.guide_codec", "egc_lite.codecs.textinv"):
                yield report(f"import {module}", [import_time(module, env) for _ in range(args.runs)])

        print_table(["command", "min s", "median s", "runs"], runs())


if __name__ == "__main__":
    main()
