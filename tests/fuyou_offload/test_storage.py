"""The SSD tier and the host budget: alignment, round trips, refusals, throttle, full disk."""

from __future__ import annotations

import errno
import os
import time

import pytest
import torch

from fuyou_offload.memory import HostBudgetError, HostPool
from fuyou_offload.storage import (
    ALIGN,
    DirectFile,
    IOEngine,
    OffloadDiskFullError,
    OffloadStorageError,
    TokenBucket,
    check_offload_dir,
    filesystem_type,
    wait_all,
)


def test_direct_file_round_trip_with_many_requests_in_flight(tmp_path):
    io = IOEngine(queue_depth=3, request_bytes=2 * ALIGN)
    pool = HostPool(1 << 20)
    src, dst = pool.alloc(10 * ALIGN, "src"), pool.alloc(10 * ALIGN, "dst")
    assert src.bytes.data_ptr() % ALIGN == 0
    src.view(torch.uint8, 10 * ALIGN).copy_(torch.arange(10 * ALIGN) % 251)
    f = DirectFile(tmp_path / "x.bin", 12 * ALIGN, io)
    futs = f.write(ALIGN, src.memview())
    assert len(futs) == 5  # split into request_bytes pieces
    wait_all(futs)
    wait_all(f.read(ALIGN, dst.memview()))
    assert torch.equal(src.view(torch.uint8, 10 * ALIGN), dst.view(torch.uint8, 10 * ALIGN))
    assert io.stats.read_bytes == io.stats.write_bytes == 10 * ALIGN
    assert os.fstat(f.fd).st_size == 12 * ALIGN  # preallocated
    with pytest.raises(ValueError, match="unaligned"):
        f.write(100, src.memview(0, ALIGN))
    with pytest.raises(ValueError, match="beyond the end"):
        f.read(11 * ALIGN, dst.memview(0, 2 * ALIGN))
    f.close()
    io.close()


def test_offload_dir_refuses_tmpfs_and_too_little_space(tmp_path):
    with pytest.raises(OffloadStorageError, match="GiB free"):
        check_offload_dir(tmp_path / "s", 1 << 60)
    assert check_offload_dir(tmp_path / "s", 1 << 20).is_dir()
    if filesystem_type("/dev/shm") == "tmpfs":
        with pytest.raises(OffloadStorageError, match="tmpfs"):
            check_offload_dir("/dev/shm/fuyou_offload_test", 1 << 20)


def test_host_pool_enforces_the_budget_and_reuses_buffers():
    pool = HostPool(4 * ALIGN)
    a = pool.alloc(2 * ALIGN, "a")
    pool.alloc(ALIGN, "b")
    with pytest.raises(HostBudgetError, match="host budget exceeded: 'c'.*a=0.0MiB|host budget exceeded: 'c'"):
        pool.alloc(2 * ALIGN, "c")
    ptr = a.bytes.data_ptr()
    a.release()
    assert pool.alloc(2 * ALIGN, "again").bytes.data_ptr() == ptr  # cached buffer reused
    assert pool.peak_bytes == 3 * ALIGN
    assert pool.used_bytes <= pool.budget


def test_token_bucket_throttles_to_its_rate():
    bucket = TokenBucket(rate=4 << 20, burst=1 << 20)
    t = time.perf_counter()
    for _ in range(4):
        bucket.consume(1 << 20)
    elapsed = time.perf_counter() - t
    assert 0.5 < elapsed < 2.0  # 4 MiB at 4 MiB/s with a 1 MiB burst: ~0.75 s


def test_full_disk_gives_a_clear_error(tmp_path, monkeypatch):
    io = IOEngine(queue_depth=1, request_bytes=ALIGN)
    pool = HostPool(1 << 20)
    buf = pool.alloc(ALIGN, "b")
    f = DirectFile(tmp_path / "x.bin", ALIGN, io)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(OffloadDiskFullError, match="disk full.*last committed step is intact"):
        wait_all(f.write(0, buf.memview()))
    f.close()
    io.close()


def test_io_backend_comparison_measures_the_thread_pool(tmp_path):
    from fuyou_offload.profiling import io_backends

    res = io_backends(tmp_path, 1 << 20, request_bytes=256 << 10, repeats=1)
    assert res["threads_read_bps"] > 0 and res["threads_write_bps"] > 0
    try:
        import liburing  # noqa: F401
    except ImportError:
        return
    assert res["io_uring_read_bps"] > 0 and res["io_uring_write_bps"] > 0
