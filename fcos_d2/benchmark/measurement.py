"""Repeated timings of a phase and the memory it needed: :class:`Measurement`, :func:`measure`.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each phase); on the
CPU the largest increase of the process's resident set size over the phase, sampled from
``/proc/self/statm`` by a background thread, so short peaks between samples can be missed.
"""

import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

MB = 2.0**20
RSS_SAMPLE_INTERVAL_S = 0.002


@dataclass
class Measurement:
    """Repeated timings of one phase and the memory it needed.

    ``peak_mb`` is what this module's docstring calls peak memory (CUDA: the largest
    allocation total; CPU: the largest RSS increase). ``extra_mb`` is, on both devices,
    the peak above what was in use when the phase began.
    """

    seconds: List[float]
    peak_mb: Optional[float] = None
    extra_mb: Optional[float] = None
    items_per_call: int = 1  # images per call, to turn s/call into s/image

    @property
    def median(self) -> float:
        """Median of the timings, in seconds."""
        return statistics.median(self.seconds)

    @property
    def minimum(self) -> float:
        """Fastest timing, in seconds."""
        return min(self.seconds)

    @property
    def maximum(self) -> float:
        """Slowest timing, in seconds."""
        return max(self.seconds)

    def per_item(self) -> "Measurement":
        """The same measurement in seconds per item."""
        return Measurement(
            [s / self.items_per_call for s in self.seconds], self.peak_mb, self.extra_mb, 1
        )

    def to_json(self) -> dict:
        """The timings, their median, min and max, and the memory, JSON-ready."""
        return {
            "seconds": self.seconds,
            "median_s": self.median,
            "min_s": self.minimum,
            "max_s": self.maximum,
            "items_per_call": self.items_per_call,
            "peak_mb": self.peak_mb,
            "extra_mb": self.extra_mb,
        }


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_rss_bytes() -> Optional[int]:
    """Resident set size of this process from /proc/self/statm; None where it is absent."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def release_free_memory(device: torch.device) -> None:
    """Give freed memory back before a phase, so that its peak is not hidden by reuse.

    On the CPU, glibc keeps freed heap memory in the process; ``malloc_trim`` returns it,
    otherwise a phase reusing a previous phase's freed memory would not grow the RSS.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the RSS peaks may read low


class _RssSampler(threading.Thread):
    """Records the largest RSS seen while running, every ``interval_s`` seconds."""

    def __init__(self, interval_s: float):
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = read_rss_bytes() or 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.peak = max(self.peak, read_rss_bytes() or 0)

    def stop(self) -> int:
        """Stops sampling; the largest RSS seen, in bytes."""
        self._stop_event.set()
        self.join()
        return max(self.peak, read_rss_bytes() or 0)


class PeakMemory:
    """Context manager measuring the peak memory of the code it wraps.

    After the block, ``peak_mb`` and ``extra_mb`` are as in :class:`Measurement`
    (None on a CPU without /proc).
    """

    def __init__(self, device: torch.device, sample_interval_s: float = RSS_SAMPLE_INTERVAL_S):
        self.device = device
        self.sample_interval_s = sample_interval_s
        self.peak_mb: Optional[float] = None
        self.extra_mb: Optional[float] = None

    def __enter__(self) -> "PeakMemory":
        release_free_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = read_rss_bytes()
            self._sampler = _RssSampler(self.sample_interval_s)
            self._sampler.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mb = peak / MB
            self.extra_mb = (peak - self._start) / MB
            return
        peak = self._sampler.stop()
        if self._start is not None:
            self.extra_mb = self.peak_mb = max(0, peak - self._start) / MB


def measure(
    step: Callable[[], object],
    device: torch.device,
    warmup: int,
    reps: int,
    items_per_call: int = 1,
) -> Measurement:
    """Time ``reps`` calls of ``step`` after ``warmup`` untimed ones; memory over all of them."""
    seconds = []
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            step()
        for _ in range(reps):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    return Measurement(seconds, memory.peak_mb, memory.extra_mb, items_per_call)
