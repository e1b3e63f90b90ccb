"""Benchmark helpers: peak memory, throughput, and side-by-side timing of implementations.

Packages report ratios (ours / reference, or ours / physical limit) measured in one process with
:func:`compare`, which interleaves the candidates so that background load hits them alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes. 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cuda_peak_bytes(device=None) -> int | None:
    """``torch.cuda.max_memory_allocated`` or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated(device))


def format_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls."""

    times: list[float] = field(default_factory=list)
    items_per_call: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def throughput(self) -> float | None:
        """Items per second at the median time, when items_per_call is known."""
        return None if self.items_per_call is None else self.items_per_call / self.median

    def as_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max, "repeats": len(self.times),
                "throughput_per_s": self.throughput}


def _sync() -> None:
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
    except ImportError:
        pass


def _time_once(fn: Callable[[], object]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def time_fn(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5,
            items_per_call: float | None = None) -> Timing:
    """Median-of-repeats timing of ``fn()`` after ``warmup`` untimed calls (CUDA synchronized)."""
    for _ in range(warmup):
        fn()
    gc.collect()
    return Timing([_time_once(fn) for _ in range(repeats)], items_per_call)


def compare(candidates: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5,
            items_per_call: float | None = None) -> dict[str, Timing]:
    """Time several implementations side by side: warm each up, then run them interleaved.

    Returns one :class:`Timing` per name; use :func:`ratio` for ``a/b`` of their medians.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    gc.collect()
    out = {name: Timing(items_per_call=items_per_call) for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            out[name].times.append(_time_once(fn))
    return out


def ratio(timings: dict[str, Timing], num: str, den: str) -> float:
    """Speed-up of ``num`` over ``den``: den's median time / num's median time (>1: num is faster)."""
    return timings[den].median / timings[num].median
