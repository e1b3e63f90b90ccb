"""The SSD tier: preallocated O_DIRECT files, page-aligned host buffers and a queue of requests in flight.

Why O_DIRECT: without it the page cache silently becomes a second, unbudgeted copy of the training
state in RAM, and both the host budget and the measured bandwidth would be fiction.

Requests are split into ``request_bytes`` pieces and issued from a thread pool (``os.preadv`` and
``os.pwritev`` release the GIL), so ``queue_depth`` requests are in flight at once. An optional token
bucket throttles the SSD traffic to emulate fewer drives. Every byte is counted per direction so that
runs can print the bytes moved beside the analytic count.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ALIGN = 4096
"""O_DIRECT needs file offsets, lengths and buffer addresses aligned to the logical block size; a page
is a multiple of every block size in use."""

REFUSED_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs"}


class OffloadStorageError(RuntimeError):
    """The offload directory cannot hold the training state (wrong filesystem, too little space...)."""


class OffloadDiskFullError(OffloadStorageError):
    """A write hit ENOSPC; the last committed step on disk is untouched."""


def align_up(n: int, a: int = ALIGN) -> int:
    return (int(n) + a - 1) // a * a


def filesystem_type(path: str | os.PathLike) -> str:
    """The filesystem type of ``path`` from /proc/mounts (longest matching mount point); '' if unknown."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, fstype = mnt, parts[2]
    except OSError:
        return ""
    return fstype


def check_offload_dir(path: str | os.PathLike, need_bytes: int, *, already_allocated: int = 0) -> Path:
    """Create ``path`` and refuse it, before anything is allocated, if it cannot hold ``need_bytes``.

    Refuses RAM-backed filesystems (O_DIRECT fails there, and the "SSD" would be RAM), filesystems
    without O_DIRECT support, and too little free space (``already_allocated`` bytes of this run's own
    preallocated files are counted as available, so a resumed run is not refused).
    """
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    fstype = filesystem_type(path)
    if fstype in REFUSED_FILESYSTEMS:
        raise OffloadStorageError(
            f"offload.dir={path} is on {fstype}, i.e. in RAM: the SSD tier would consume the host memory "
            "it is meant to save, and O_DIRECT is not supported there. Point offload.dir at a disk."
        )
    free = shutil.disk_usage(path).free
    missing = need_bytes - already_allocated
    if missing > free:
        raise OffloadStorageError(
            f"offload.dir={path} has {free / 2**30:.2f} GiB free but the training state needs "
            f"{need_bytes / 2**30:.2f} GiB ({missing / 2**30:.2f} GiB more than is already allocated). "
            "Free disk space, use a smaller model, or set offload.dir to a larger disk."
        )
    probe = path / ".odirect_probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        try:
            buf = mmap.mmap(-1, ALIGN)
            os.pwritev(fd, [buf], 0)
        finally:
            os.close(fd)
    except OSError as e:
        raise OffloadStorageError(
            f"offload.dir={path} ({fstype or 'unknown filesystem'}) does not support O_DIRECT "
            f"({e.strerror}); use a directory on a local disk (ext4, xfs)."
        ) from e
    finally:
        probe.unlink(missing_ok=True)
    return path


class TokenBucket:
    """Caps throughput at ``rate`` bytes/s (None: unlimited), with a burst of ``burst`` bytes."""

    def __init__(self, rate: float | None, burst: int = 8 << 20):
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


@dataclass
class IOStats:
    read_bytes: int = 0
    write_bytes: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0

    def snapshot(self) -> dict:
        return dict(self.__dict__)


class IOEngine:
    """A thread pool issuing aligned O_DIRECT requests, ``queue_depth`` at a time."""

    def __init__(self, queue_depth: int = 4, request_bytes: int = 4 << 20, throttle_bytes_per_s: float | None = None):
        if request_bytes % ALIGN:
            raise ValueError(f"request_bytes={request_bytes} must be a multiple of {ALIGN}")
        self.queue_depth = queue_depth
        self.request_bytes = request_bytes
        self.pool = ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="ssd")
        self.bucket = TokenBucket(throttle_bytes_per_s)
        self.stats = IOStats()
        self._lock = threading.Lock()

    def _pieces(self, offset: int, view: memoryview):
        n = len(view)
        for start in range(0, n, self.request_bytes):
            yield offset + start, view[start : min(n, start + self.request_bytes)]

    def _do(self, fd: int, offset: int, view: memoryview, write: bool, path: str) -> int:
        self.bucket.consume(len(view))
        t0 = time.perf_counter()
        try:
            if write:
                done = os.pwritev(fd, [view], offset)
            else:
                done = os.preadv(fd, [view], offset)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OffloadDiskFullError(
                    f"disk full while writing {path} at offset {offset}: the step in progress is abandoned "
                    "and the last committed step is intact; free space and resume with resume=auto"
                ) from e
            raise OffloadStorageError(f"{'write' if write else 'read'} of {path} at {offset} failed: {e}") from e
        if done != len(view):
            raise OffloadStorageError(f"short {'write' if write else 'read'} on {path} at {offset}: {done}/{len(view)}")
        dt = time.perf_counter() - t0
        with self._lock:
            if write:
                self.stats.write_bytes += done
                self.stats.write_seconds += dt
            else:
                self.stats.read_bytes += done
                self.stats.read_seconds += dt
        return done

    def submit(self, fd: int, offset: int, view: memoryview, write: bool, path: str = "?") -> list[Future]:
        if offset % ALIGN or len(view) % ALIGN:
            raise ValueError(f"unaligned O_DIRECT request on {path}: offset {offset}, length {len(view)}")
        return [self.pool.submit(self._do, fd, off, piece, write, path) for off, piece in self._pieces(offset, view)]

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def wait_all(futures: list[Future]) -> None:
    for f in futures:
        f.result()


class DirectFile:
    """One preallocated file opened with O_DIRECT; regions are addressed by aligned byte offsets."""

    def __init__(self, path: str | os.PathLike, nbytes: int, io: IOEngine):
        self.path = Path(path)
        self.nbytes = align_up(nbytes)
        self.io = io
        existed = self.path.exists()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
        size = os.fstat(self.fd).st_size
        if existed and size >= self.nbytes:
            return
        try:  # reserve the blocks now, so that a full disk shows up here and not in the middle of a step
            os.posix_fallocate(self.fd, 0, self.nbytes)
        except OSError as e:
            os.close(self.fd)
            if e.errno == errno.ENOSPC:
                raise OffloadDiskFullError(f"no space to preallocate {self.nbytes} bytes for {self.path}") from e
            raise

    def read(self, offset: int, view: memoryview) -> list[Future]:
        self._check(offset, len(view))
        return self.io.submit(self.fd, offset, view, False, str(self.path))

    def write(self, offset: int, view: memoryview) -> list[Future]:
        self._check(offset, len(view))
        return self.io.submit(self.fd, offset, view, True, str(self.path))

    def _check(self, offset: int, n: int) -> None:
        if offset + n > self.nbytes:
            raise ValueError(f"request [{offset}, {offset + n}) beyond the end of {self.path} ({self.nbytes} bytes)")

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
