"""The host memory budget: every staging buffer of the engine comes from one ``HostPool``.

Buffers are anonymous page-aligned mappings (valid O_DIRECT targets) viewed as torch tensors. Freed
buffers are cached for reuse by size and still count against the budget until evicted, so
``used_bytes`` is an upper bound of what the pool holds in RAM. On CUDA the buffers are page-locked
with ``cudaHostRegister`` so host-device copies run asynchronously.
"""

from __future__ import annotations

import mmap
import threading
from collections import defaultdict

import torch

from .storage import ALIGN, align_up


class HostBudgetError(MemoryError):
    """A staging buffer does not fit in ``memory.host_budget``."""


class HostBuffer:
    """A page-aligned buffer of ``nbytes`` bytes; ``view(dtype, numel, offset)`` gives tensors over it."""

    def __init__(self, pool: HostPool, nbytes: int, tag: str):
        self.pool, self.nbytes, self.tag = pool, nbytes, tag
        self.mm = mmap.mmap(-1, nbytes)
        self.bytes = torch.frombuffer(self.mm, dtype=torch.uint8)
        self.pinned = False
        self.released = False
        self.ready_event = None  # CUDA: the event of the copy that fills it (a gradient's D2H)

    def view(self, dtype: torch.dtype, numel: int, offset_bytes: int = 0) -> torch.Tensor:
        size = torch.empty((), dtype=dtype).element_size()
        return self.bytes[offset_bytes : offset_bytes + numel * size].view(dtype)

    def memview(self, offset: int = 0, nbytes: int | None = None) -> memoryview:
        end = self.nbytes if nbytes is None else offset + nbytes
        return memoryview(self.mm)[offset:end]

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool._give_back(self)


class HostPool:
    """A budget of ``budget_bytes`` for all staging buffers; allocation beyond it raises ``HostBudgetError``."""

    def __init__(self, budget_bytes: int, pin: bool = False):
        self.budget = int(budget_bytes)
        self.pin = pin and torch.cuda.is_available()
        self.live_bytes = 0
        self.cached_bytes = 0
        self.peak_bytes = 0
        self._cache: dict[int, list[HostBuffer]] = defaultdict(list)
        self._live_tags: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self.live_bytes + self.cached_bytes

    def alloc(self, nbytes: int, tag: str) -> HostBuffer:
        nbytes = align_up(max(int(nbytes), 1), ALIGN)
        with self._lock:
            if self._cache.get(nbytes):
                buf = self._cache[nbytes].pop()
                self.cached_bytes -= nbytes
            else:
                if self.used_bytes + nbytes > self.budget:
                    self._evict_locked(self.used_bytes + nbytes - self.budget)
                if self.live_bytes + nbytes > self.budget:
                    top = ", ".join(f"{t}={b / 2**20:.1f}MiB" for t, b in sorted(self._live_tags.items(), key=lambda kv: -kv[1])[:5])
                    raise HostBudgetError(
                        f"host budget exceeded: '{tag}' needs {nbytes / 2**20:.1f} MiB but "
                        f"{self.live_bytes / 2**20:.1f} of {self.budget / 2**20:.1f} MiB are in use ({top}). "
                        "Raise memory.host_budget, lower the prefetch depth / optimizer chunk, or move "
                        "activations to the SSD tier."
                    )
                buf = None
            if buf is None:
                buf = HostBuffer(self, nbytes, tag)
                if self.pin:
                    _cuda_register(buf)
            buf.tag, buf.released, buf.ready_event = tag, False, None
            self.live_bytes += nbytes
            self._live_tags[tag] += nbytes
            self.peak_bytes = max(self.peak_bytes, self.used_bytes)
            return buf

    def _give_back(self, buf: HostBuffer) -> None:
        with self._lock:
            self.live_bytes -= buf.nbytes
            self._live_tags[buf.tag] -= buf.nbytes
            self._cache[buf.nbytes].append(buf)
            self.cached_bytes += buf.nbytes

    def _evict_locked(self, need: int) -> None:
        for size in sorted(self._cache, reverse=True):
            while self._cache[size] and need > 0:
                buf = self._cache[size].pop()
                self.cached_bytes -= size
                need -= size
                _unmap(buf)

    def trim(self) -> None:
        """Unmap every cached buffer (returns their pages to the OS)."""
        with self._lock:
            self._evict_locked(self.cached_bytes + 1)


def _unmap(buf: HostBuffer) -> None:
    if buf.pinned:
        torch.cuda.cudart().cudaHostUnregister(buf.bytes.data_ptr())
    buf.bytes = None
    try:
        buf.mm.close()
    except BufferError:
        pass  # a tensor view is still alive somewhere; the mapping goes when it does


def _cuda_register(buf: HostBuffer) -> None:
    res = torch.cuda.cudart().cudaHostRegister(buf.bytes.data_ptr(), buf.nbytes, 0)
    buf.pinned = int(res) == 0 if not isinstance(res, tuple) else int(res[0]) == 0
