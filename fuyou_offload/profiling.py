"""This machine's floors, measured: O_DIRECT read/write bandwidth, GEMM rate, memcpy, AdamW rate.

They feed the planner's cost model (``planner.Profile``) and the benchmark's "physical limit" ratios.
Sizes are parameters so tests and the planner's profiling step stay short.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .engine import OptimConfig, adamw_update
from .memory import HostPool
from .model import Block, GPTConfig
from .planner import Profile
from .storage import DirectFile, IOEngine, check_offload_dir, wait_all


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def ssd_bandwidth(directory: str | os.PathLike, nbytes: int = 64 << 20, *, queue_depth: int = 4,
                  request_bytes: int = 4 << 20, repeats: int = 3, throttle: float | None = None) -> dict[str, float]:
    """O_DIRECT sequential write then read of ``nbytes`` through the engine's own I/O path (bytes/s)."""
    directory = check_offload_dir(directory, nbytes)
    io = IOEngine(queue_depth, request_bytes, throttle)
    pool = HostPool(nbytes)
    buf = pool.alloc(nbytes, "bench")
    buf.view(torch.uint8, nbytes).random_(0, 255)
    f = DirectFile(Path(directory) / "bandwidth_probe.bin", nbytes, io)
    w, r = [], []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            wait_all(f.write(0, buf.memview()))
            f.fsync()
            w.append(nbytes / (time.perf_counter() - t))
            t = time.perf_counter()
            wait_all(f.read(0, buf.memview()))
            r.append(nbytes / (time.perf_counter() - t))
    finally:
        f.close()
        io.close()
        (Path(directory) / "bandwidth_probe.bin").unlink(missing_ok=True)
        buf.release()
        pool.trim()
    return {"ssd_write_bps": _median(w), "ssd_read_bps": _median(r)}


def io_backends(directory: str | os.PathLike, nbytes: int = 64 << 20, *, queue_depth: int = 4,
                request_bytes: int = 4 << 20, repeats: int = 3) -> dict[str, float]:
    """O_DIRECT bandwidth (bytes/s, median) of the engine's thread pool against io_uring (through the
    ``liburing`` binding, same queue depth and request size), on the same file and buffer. The engine
    keeps the thread pool unless io_uring is clearly faster (it was not on this machine)."""
    import mmap

    directory = check_offload_dir(directory, nbytes)
    path = Path(directory) / "io_backend_probe.bin"
    io = IOEngine(queue_depth, request_bytes)
    f = DirectFile(path, nbytes, io)
    buf = mmap.mmap(-1, nbytes)
    buf[:] = os.urandom(4096) * (nbytes // 4096)
    out: dict[str, list[float]] = {}

    def timed(name, fn):
        t = time.perf_counter()
        fn()
        out.setdefault(name, []).append(nbytes / (time.perf_counter() - t))

    try:
        wait_all(f.write(0, memoryview(buf)))
        f.fsync()
        try:
            import liburing
        except ImportError:
            liburing = None
        ring = cqe = None
        if liburing is not None:
            ring, cqe = liburing.Ring(), liburing.Cqe()
            liburing.io_uring_queue_init(max(8, 2 * queue_depth), ring)

        def uring(write: bool) -> None:
            mv, n, i, inflight, done, keep = memoryview(buf), nbytes // request_bytes, 0, 0, 0, []
            while done < n:
                while inflight < queue_depth and i < n:
                    sqe = liburing.io_uring_get_sqe(ring)
                    iov = liburing.Iovec([mv[i * request_bytes:(i + 1) * request_bytes]])
                    keep.append(iov)  # the binding needs the iovec alive until completion
                    prep = liburing.io_uring_prep_writev if write else liburing.io_uring_prep_readv
                    prep(sqe, f.fd, iov, i * request_bytes)
                    i, inflight = i + 1, inflight + 1
                liburing.io_uring_submit(ring)
                liburing.io_uring_wait_cqe(ring, cqe)  # one completion at a time: cqe[k>0] ignores ring wrap
                if cqe[0].res != request_bytes:
                    raise OSError(f"io_uring request returned {cqe[0].res}")
                liburing.io_uring_cq_advance(ring, 1)
                inflight, done = inflight - 1, done + 1

        for _ in range(repeats):
            timed("threads_read_bps", lambda: wait_all(f.read(0, memoryview(buf))))
            timed("threads_write_bps", lambda: (wait_all(f.write(0, memoryview(buf))), f.fsync()))
            if ring is not None:
                timed("io_uring_read_bps", lambda: uring(False))
                timed("io_uring_write_bps", lambda: (uring(True), f.fsync()))
        if ring is not None:
            liburing.io_uring_queue_exit(ring)
    finally:
        f.close()
        io.close()
        path.unlink(missing_ok=True)
    return {k: _median(v) for k, v in out.items()}


def gemm_rate(n: int = 512, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul (median of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2.0 * n**3 / _median(ts)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def block_rate(mcfg: GPTConfig, batch: int, seq: int, dtype: torch.dtype = torch.float32, repeats: int = 3,
               device: str = "cpu") -> float:
    """FLOP/s of one real decoder block, forward + backward, at the run's shapes (the profiling step):
    includes attention, norms and elementwise work that a square GEMM rate leaves out."""
    blk = Block(mcfg).to(device=device, dtype=dtype)
    x = torch.randn(batch, seq, mcfg.hidden, dtype=dtype, device=device, requires_grad=True)
    flops = 3 * sum(mcfg.block_matmul_flops(batch * seq, seq).values())

    def once():
        blk(x).sum().backward()

    once()
    _sync(device)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        once()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return flops / _median(ts)


def pcie_bandwidth(nbytes: int = 256 << 20, repeats: int = 5, device: str = "cuda") -> dict[str, float]:
    """Pinned host <-> GPU copy bandwidth (bytes/s, median), the planner's PCIe terms."""
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    out: dict[str, list[float]] = {"h2d_bps": [], "d2h_bps": []}
    for _ in range(repeats):
        for key, (dst, src) in (("h2d_bps", (dev, host)), ("d2h_bps", (host, dev))):
            torch.cuda.synchronize()
            t = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            out[key].append(nbytes / (time.perf_counter() - t))
    return {k: _median(v) for k, v in out.items()}


def memcpy_rate(nbytes: int = 64 << 20, repeats: int = 5) -> float:
    src, dst = torch.empty(nbytes, dtype=torch.uint8).fill_(1), torch.empty(nbytes, dtype=torch.uint8)
    dst.copy_(src)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t)
    return nbytes / _median(ts)


def adam_rate(numel: int = 1 << 22, impl: str = "single", repeats: int = 3) -> float:
    p, g, m, v = (torch.randn(numel) for _ in range(4))
    v.abs_()
    cfg = OptimConfig(impl=impl)
    ts = []
    for k in range(repeats):
        t = time.perf_counter()
        adamw_update([p], [g], [m], [v], step=k + 1, lr=1e-3, cfg=cfg, wd=0.0)
        ts.append(time.perf_counter() - t)
    return numel / _median(ts)


def measure_floors(directory: str | os.PathLike, *, io_bytes: int = 64 << 20, gemm_n: int = 512,
                   dtype: torch.dtype = torch.float32, queue_depth: int = 4, request_bytes: int = 4 << 20,
                   throttle: float | None = None, adam_impl: str = "fused", model: GPTConfig | None = None,
                   batch: int = 1, seq: int = 128, device: str = "cpu") -> tuple[Profile, dict[str, float]]:
    """The planner's inputs. With ``model`` the compute rate is that of a real block at (batch, seq) on
    ``device``; otherwise that of an n x n GEMM. On CUDA also the pinned PCIe bandwidths."""
    bw = ssd_bandwidth(directory, io_bytes, queue_depth=queue_depth, request_bytes=request_bytes, throttle=throttle)
    rate = block_rate(model, batch, seq, dtype, device=device) if model is not None else gemm_rate(gemm_n, dtype)
    raw = {**bw, "flops_per_s": rate, "memcpy_bps": memcpy_rate(min(io_bytes, 16 << 20)),
           "adam_params_per_s": adam_rate(1 << 20, adam_impl)}
    if str(device).startswith("cuda"):
        raw.update(pcie_bandwidth(device=device))
    return Profile(**raw), raw
