"""Memory: glibc's handling of large buffers, and the peak a run reports (CUDA's counter or the process's RSS)."""
from __future__ import annotations

import ctypes
import functools
import resource
from pathlib import Path

import torch


@functools.cache
def keep_freed() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel (once per process).

    Every stream batch, block output and activation here is tens to hundreds of MB, above glibc's largest mmap
    threshold (32 MB): by default each is a fresh mmap, faulted in page by page and unmapped on free. On 2
    threads that fault churn cost a sequential LR run of SmolLM2 over a quarter of its wall time (41.9 → 30.6 s,
    mostly system time). Heap memory instead is reused; the price is that the process keeps its peak RSS until it
    exits, or until reset_peak trims it. A no-op off glibc (macOS, musl): returns whether it took effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak: CUDA's counter, or on Linux the process's RSS high-water mark, so that a run
    inside a long-lived notebook kernel reports its own peak rather than the kernel's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    if keep_freed():  # hand back what earlier runs freed and keep_freed kept, so it is not counted
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5 = reset VmHWM to the current RSS (Linux ≥ 4.0)
    except OSError:
        pass


def peak_mb(device: torch.device) -> float:
    """CUDA: peak allocated; CPU: the process's peak RSS since reset_peak (or since it started)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
