"""Phase timing and peak memory for the training loop and the bench.

A disabled timer (the default of a run) costs nothing; an enabled one synchronises CUDA around each phase so
that asynchronous kernels are charged to the phase that launched them.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseTimer:
    """``with timer.phase("frozen"): ...`` adds the block's seconds to ``timer.seconds["frozen"]``."""

    def __init__(self, enabled: bool = True, device: torch.device | str | None = None):
        self.enabled = enabled
        self.cuda = enabled and torch.device(device or "cpu").type == "cuda"
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def count(self, name: str, value: float) -> None:
        """Add to a counter (tokens through a pass, loss positions ...)."""
        if self.enabled:
            self.counts[name] += value

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class PeakMemory:
    """Peak memory while the block runs: CUDA peak allocated, or the process's resident set sampled every 20 ms."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @property
    def kind(self) -> str:
        return "cuda allocated" if self.device.type == "cuda" else "cpu rss"

    def __enter__(self):
        release_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(0.02)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_memory() -> None:
    """Give freed memory back (so one engine's leftovers do not count in the next one's peak)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
