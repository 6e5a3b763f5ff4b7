"""Peak memory of a block of code: resident memory of this process (sampled), or CUDA's allocator peak."""

from __future__ import annotations

import threading

import torch


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_mb``.

    On a CUDA device: the allocator's peak (``torch.cuda.max_memory_allocated``) during the block.
    Otherwise: the highest resident set size of the process, sampled every ``interval`` seconds
    by a background thread (so a spike shorter than the interval can be missed); it includes what
    the process held before the block (models, earlier tensors).
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.01) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while True:
            self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def process_peak_bytes() -> int:
    """This process's peak resident memory since it started its program: ``VmHWM`` of ``/proc/self/status``
    on Linux (``ru_maxrss`` there also counts the memory of the parent a subprocess was forked from, up to
    its ``exec``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere

