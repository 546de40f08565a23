"""Timing, peak memory and difference measurements shared by the cases."""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable, device):
    """(result, seconds) of one call, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def median_time(fn: Callable, device, repeats: int, first=None, slow_seconds: float = 10.0, warm_seconds: float = 1.0):
    """Median time of ``fn`` (``first``: an already timed (result, seconds) call).

    Under ``warm_seconds`` the first call only warms up and ``repeats`` more are timed; under
    ``slow_seconds`` the first call counts and ``repeats - 1`` more are timed; slower calls run
    once. Returns (last result, median seconds, the times that count).
    """
    result, seconds = first if first is not None else timed(fn, device)
    times = [seconds]
    if repeats > 1 and seconds < slow_seconds:
        if seconds < warm_seconds:
            times = []
        while len(times) < repeats:
            result, seconds = timed(fn, device)
            times.append(seconds)
    return result, statistics.median(times), times


class PeakMemory:
    """Peak memory growth while inside the ``with`` block, in bytes.

    CUDA: torch.cuda.max_memory_allocated above what was allocated on entry (tensors only).
    CPU: the process's peak resident set size (Linux VmHWM, reset on entry through
    /proc/self/clear_refs) above the RSS on entry, after malloc_trim has returned free heap memory
    to the OS; where that reset is not allowed, RSS sampled every 2 ms by a thread. Approximate:
    memory the allocator still reuses without the OS seeing it is not counted.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.bytes = 0
        self.method = ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _trim_heap()  # freed memory kept by malloc would otherwise be reused unseen
        self._base = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _status_kb("VmRSS")
            self.method = "peak RSS (VmHWM) growth"
            self._sampler = None
        except OSError:
            self.method = "sampled RSS growth"
            self._stop = threading.Event()
            self._peak = self._base
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kb("VmRSS"))
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._sampler is None:
            self.bytes = max(0, _status_kb("VmHWM") - self._base) * 1024
        else:
            self._stop.set()
            self._sampler.join()
            self.bytes = max(0, self._peak - self._base) * 1024
        return False


def _trim_heap() -> None:
    """Return free heap memory to the OS (glibc malloc_trim), so that RSS growth shows new use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / ||b||_F, computed in float64 (b is the reference)."""
    a64, b64 = a.double(), b.to(a.device).double()
    return (torch.linalg.norm(a64 - b64) / torch.linalg.norm(b64).clamp_min(1e-300)).item()


@contextmanager
def no_grad():
    with torch.inference_mode():
        yield
