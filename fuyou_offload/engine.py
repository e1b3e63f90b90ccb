"""The out-of-core training engine: SSD-resident state, layer-by-layer compute, overlapped AdamW.

Units. The model is cut into units: ``ends`` (embedding, final norm, head; resident for the whole step
because the tied head is used last and the embedding's gradient is final only at the very end) and
one unit per block. Each unit's parameters are one flat fp32 vector.

State on SSD, two versioned slots. ``p32``, ``m``, ``v`` (and ``w16``, the bf16 working copy, in bf16
mode) exist twice. Step k reads slot s (committed after step k-1) and writes slot 1-s; it commits by
atomically writing a manifest (step, slot, CRC32 per chunk) with ``common.checkpoint``. A crash at
any point before the manifest leaves slot s and the previous manifest as they were; after it, the new
step is committed. The same slots make global-norm clipping exact:

Speculate, then validate. As soon as backward finishes a block, a worker thread reads that unit's
state, runs AdamW on it with clip coefficient 1 and writes slot 1-s, while backward continues. When
the global norm is known: if ``clip_coef = max_norm / (norm + 1e-6)`` is at least 1 (torch clamps it
to exactly 1) the speculative updates are exactly standard training's and are committed; otherwise
every unit is replayed from slot s with the clipped gradients (kept in host memory or on SSD). A
non-finite norm abandons the step: nothing is committed. Once the running norm already exceeds the
threshold, speculation stops for the remaining units.

Activations. Block inputs are checkpointed to host or SSD. During forward the outputs of the op
groups chosen by the plan are cached (host or SSD) by a ``TorchDispatchMode``; the backward pass
recomputes the block and replays those outputs instead of recomputing them, so gradients are exactly
those of standard training whatever the plan.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.optim.adamw as torch_adamw
import xxhash
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from common.checkpoint import CheckpointManager, capture_rng_state, load_checkpoint

from .memory import HostBuffer, HostPool
from .model import GPT, Block, Ends, GPTConfig
from .planner import BlockPlan, stash_bytes
from .storage import ALIGN, DirectFile, IOEngine, align_up, check_offload_dir, wait_all

aten = torch.ops.aten
CHUNK_ALIGN_ELEMS = 2048  # so that fp32 and bf16 chunk boundaries are both 4 KiB aligned


class NonFiniteGradientError(FloatingPointError):
    """The global gradient norm is NaN or inf; the step was abandoned and nothing was committed."""


class StateCorruptError(RuntimeError):
    """The SSD state does not match the checksums of the committed manifest."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 1.0
    warmup_steps: int = 0
    decay: str = "constant"  # constant | cosine
    total_steps: int | None = None
    min_lr_ratio: float = 0.1
    impl: str = "fused"  # fused (torch's fused kernel) | single (the per-tensor loop): both equal torch.optim.AdamW

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        import math

        if self.warmup_steps and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.decay == "cosine" and self.total_steps:
            frac = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
        return self.lr


def param_decays(name: str, shape: torch.Size) -> bool:
    """Weight decay applies to matrices (linear and embedding weights), not to norm gains."""
    return len(shape) >= 2


def adamw_update(params, grads, ms, vs, *, step: int, lr: float, cfg: OptimConfig, wd: float) -> None:
    """torch's own AdamW kernel on (views of) flat state, so chunked updates equal torch.optim.AdamW."""
    if not params:
        return
    steps = [torch.tensor(float(step - 1)) for _ in params]
    torch_adamw.adamw(
        params, grads, ms, vs, [], steps, foreach=False, fused=cfg.impl == "fused", amsgrad=False,
        beta1=cfg.betas[0], beta2=cfg.betas[1], lr=lr, weight_decay=wd, eps=cfg.eps, maximize=False,
    )


@dataclass
class EngineConfig:
    schedule: str = "fuyou"          # fuyou | zero_infinity
    compute_dtype: str = "fp32"      # fp32 | bf16 (bf16 working weights, fp32 master state)
    host_budget: int = 2 << 30
    queue_depth: int = 4
    request_bytes: int = 4 << 20
    throttle_bytes_per_s: float | None = None
    prefetch_depth: int = 1
    opt_chunk_elems: int = 1 << 20
    max_inflight_updates: int = 2    # units queued for the optimizer before backward waits (bounds grad memory)
    grad_tier: str = "auto"          # host | ssd | auto (host if all fp32 grads fit in a quarter of the budget)
    verify_on_resume: bool = True
    checksum: str = "xxh3"           # xxh3 | crc32 | none: digest of every state chunk written
    device: str = "cpu"

    @property
    def overlap(self) -> bool:
        return self.schedule == "fuyou"


@dataclass
class Unit:
    name: str
    index: int
    names: list[str]
    shapes: list[torch.Size]
    offsets: list[int]   # element offsets inside the flat vector
    decays: list[bool]
    numel: int
    file_off32: int = 0  # byte offset in fp32 files
    file_off16: int = 0  # byte offset in bf16 files

    def segments(self, a: int, b: int):
        """(param index, start, end) of the parameters overlapping elements [a, b)."""
        for i, (off, shp) in enumerate(zip(self.offsets, self.shapes)):
            n = shp.numel()
            lo, hi = max(a, off), min(b, off + n)
            if lo < hi:
                yield i, lo, hi


def _crash_point(name: str, step: int) -> None:
    """Fault injection for the crash-safety tests: FUYOU_CRASH_AT=<step>:<point> SIGKILLs this process."""
    spec = os.environ.get("FUYOU_CRASH_AT")
    if spec and spec == f"{step}:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


class OpCache(TorchDispatchMode):
    """Records (forward) or replays (backward recompute) the outputs of chosen ops of one block."""

    def __init__(self, keep: frozenset[int], store: dict[int, Any], replay: bool):
        super().__init__()
        self.keep, self.store, self.replay = keep, store, replay
        self.index = 0

    _recorded: dict = {}  # op overload -> whether it is one of the recorded ops (matmuls, attention core)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        hit = OpCache._recorded.get(func)
        if hit is None:
            hit = OpCache._recorded[func] = func in (aten.mm.default, aten.addmm.default) or \
                "scaled_dot_product" in func.name()
        if hit:
            i = self.index
            self.index += 1
            if i in self.keep:
                if self.replay:
                    name, out = self.store[i]
                    if name != func.name():
                        raise RuntimeError(f"op {i} replays {name} but recompute called {func.name()}")
                    return out
                out = func(*args, **kwargs)
                self.store[i] = (func.name(), out)
                return out
        return func(*args, **kwargs)


def _op_cache(keep: frozenset[int], store: dict[int, Any], replay: bool):
    """An ``OpCache`` when the plan caches something (a dispatch mode is not free), else a no-op."""
    return OpCache(keep, store, replay) if keep else contextlib.nullcontext()


class TensorStash:
    """Tensors of one block packed into one host buffer (and optionally mirrored on SSD)."""

    def __init__(self):
        self.items: list[tuple[Any, torch.Size, tuple, torch.dtype, int]] = []  # key, shape, stride, dtype, offset
        self.nbytes = 0
        self.names: dict[int, str] = {}
        self.arity: dict[int, tuple[int, bool]] = {}
        self.buf: HostBuffer | None = None
        self.ssd_off: int | None = None
        self.futures: list[Future] = []

    @staticmethod
    def span(t: torch.Tensor) -> int:
        return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0

    def plan(self, key, t: torch.Tensor) -> None:
        self.items.append((key, t.shape, t.stride(), t.dtype, self.nbytes))
        self.nbytes += align_up(self.span(t) * t.element_size(), 64)

    def fill(self, tensors: dict) -> None:
        for key, shape, stride, dtype, off in self.items:
            n = 1 + sum((s - 1) * st for s, st in zip(shape, stride))
            dst = torch.as_strided(self.buf.view(dtype, n, off), shape, stride)
            dst.copy_(tensors[key])

    def get(self, key) -> torch.Tensor:
        for k, shape, stride, dtype, off in self.items:
            if k == key:
                n = 1 + sum((s - 1) * st for s, st in zip(shape, stride))
                return torch.as_strided(self.buf.view(dtype, n, off), shape, stride)
        raise KeyError(key)


def _return_freed_memory_to_os() -> None:
    """Make glibc serve allocations >= 1 MiB with mmap and give them back on free. Its default adapts
    the threshold upwards, after which freed tensors stay in the heap and RSS drifts above the budget."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


class OffloadEngine:
    """Trains a ``GPT`` whose state lives on SSD under ``dir``; see the module docstring."""

    def __init__(self, model_cfg: GPTConfig, cfg: EngineConfig, optim: OptimConfig, *, state_dir: str | os.PathLike,
                 run_dir: str | os.PathLike, plans: list[BlockPlan] | None = None, batch: int = 1, seq: int = 128):
        self.mcfg, self.cfg, self.ocfg = model_cfg, cfg, optim
        _return_freed_memory_to_os()
        self.batch, self.seq = batch, seq
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.compute_dtype]
        self.bf16 = self.dtype == torch.bfloat16
        self.device = torch.device(cfg.device)
        self.ends_mod = Ends(model_cfg).to("meta")
        self.block_mod = Block(model_cfg).to("meta")
        self.units = self._layout()
        self.n_params = sum(u.numel for u in self.units)
        if plans is None:
            plans = [BlockPlan() for _ in range(model_cfg.layers)]
        if cfg.schedule == "zero_infinity":
            plans = [BlockPlan() for _ in range(model_cfg.layers)]  # block inputs in host RAM, full recompute
        self.plans = plans
        grad_bytes = 4 * self.n_params
        self.grad_tier = cfg.grad_tier if cfg.grad_tier != "auto" else ("host" if grad_bytes <= cfg.host_budget // 4 else "ssd")
        if cfg.schedule == "zero_infinity":
            self.grad_tier = "host"  # as ZeRO-3 offload: gradients accumulate in host buffers until step()
        self.pool = HostPool(cfg.host_budget, pin=self.device.type == "cuda")
        self.io = IOEngine(cfg.queue_depth, cfg.request_bytes, cfg.throttle_bytes_per_s)
        self.run_dir = Path(run_dir)
        self.ckpt = CheckpointManager(self.run_dir, keep_last=1)
        self.state_dir = Path(state_dir)
        self.files: dict[str, DirectFile] = {}
        self.step = 0
        self.slot = 0
        self.checksums: dict[str, dict[str, list[int]]] = {}
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adam")
        self.stats_lock = threading.Lock()
        self.busy = {"compute": 0.0, "optimizer": 0.0}
        self.rollbacks = 0
        self.act_ssd_bytes = 0
        self.counted = {"activation_ssd_read": 0, "activation_ssd_write": 0, "activation_host": 0}
        if self.device.type == "cuda":
            self.h2d = torch.cuda.Stream()
            self.d2h = torch.cuda.Stream()

    # ------------------------------------------------------------------ layout and files
    def _layout(self) -> list[Unit]:
        units = []
        for idx, (name, mod) in enumerate([("ends", self.ends_mod)] + [(f"block{i}", self.block_mod) for i in range(self.mcfg.layers)]):
            names, shapes, offs, decs, n = [], [], [], [], 0
            for pname, p in mod.named_parameters():
                names.append(pname)
                shapes.append(p.shape)
                offs.append(n)
                decs.append(param_decays(pname, p.shape))
                n += p.numel()
            units.append(Unit(name, idx, names, shapes, offs, decs, n))
        off32 = off16 = 0
        for u in units:
            u.file_off32, u.file_off16 = off32, off16
            off32 += align_up(4 * u.numel)
            off16 += align_up(2 * u.numel)
        self._bytes32, self._bytes16 = off32, off16
        return units

    def _act_file_bytes(self, plans: list[BlockPlan] | None = None) -> int:
        """SSD bytes of one step's activations under ``plans``; for fuyou the file is sized for the
        worst plan (everything cached on SSD) so the planner may change the plan after the profiling step."""
        if plans is None:
            plans = self.plans
            if self.cfg.overlap:
                from .planner import OP_GROUPS

                plans = [BlockPlan("ssd", tuple(OP_GROUPS), "ssd") for _ in self.plans]
        total = 0
        for p in plans:
            sb = stash_bytes(self.mcfg, p, self.batch, self.seq, self.dtype.itemsize)
            total += align_up(sb["ckpt"]) if p.ckpt_tier == "ssd" else 0
            total += align_up(sb["cache"]) if p.cache_tier == "ssd" and p.cached else 0
        return total

    def _file_specs(self) -> dict[str, int]:
        specs = {}
        for s in (0, 1):
            for k in ("p32", "m", "v"):
                specs[f"{k}.{s}"] = self._bytes32
            if self.bf16:
                specs[f"w16.{s}"] = self._bytes16
        if self.stores_grads and self.grad_tier == "ssd":
            specs["grad"] = self._bytes32
        act = self._act_file_bytes()
        if act:
            specs["act"] = act
        return specs

    def set_plans(self, plans: list[BlockPlan]) -> None:
        """Switch the activation plan between steps (after the profiling step)."""
        if len(plans) != self.mcfg.layers:
            raise ValueError(f"{len(plans)} block plans for {self.mcfg.layers} blocks")
        need = self._act_file_bytes(plans)
        have = self.files["act"].nbytes if "act" in self.files else 0
        if need > have:
            raise ValueError(f"plan needs {need} bytes of activation file, {have} allocated")
        self.plans = list(plans)

    def state_bytes(self) -> int:
        return sum(self._file_specs().values())

    def open(self, model=None, resume: str = "never") -> None:
        """Allocate (or reopen) the state files, then initialise from ``model`` (a ``GPT``, or an iterator of
        per-unit flat weights such as ``model.init_gpt_units``) or resume from the newest manifest."""
        manifest_path = self.ckpt.resolve_resume(resume)
        specs = self._file_specs()
        existing = sum(min(n, (self.state_dir / f"{k}.bin").stat().st_size) for k, n in specs.items()
                       if (self.state_dir / f"{k}.bin").exists())
        check_offload_dir(self.state_dir, sum(specs.values()), already_allocated=existing)
        for k, n in specs.items():
            self.files[k] = DirectFile(self.state_dir / f"{k}.bin", n, self.io)
        if manifest_path is not None:
            self._resume(manifest_path)
        else:
            if model is None:
                raise ValueError("a fresh engine needs the initial model")
            self._initialise(model)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        self.io.close()
        for f in self.files.values():
            f.close()
        self.pool.trim()

    def _digest(self, view: memoryview) -> int:
        """Digest of one written chunk (xxh3 is about twice as fast as CRC32 on a memory-bound host)."""
        if self.cfg.checksum == "xxh3":
            return xxhash.xxh3_64_intdigest(view)
        if self.cfg.checksum == "crc32":
            return zlib.crc32(view)
        return 0

    def _chunks(self, u: Unit):
        c = max(CHUNK_ALIGN_ELEMS, self.cfg.opt_chunk_elems // CHUNK_ALIGN_ELEMS * CHUNK_ALIGN_ELEMS)
        return [(a, min(u.numel, a + c)) for a in range(0, u.numel, c)]

    def _initialise(self, model) -> None:
        """Write slot 0 from a ``GPT`` or from an iterator of (unit name, flat fp32 tensor) in unit order."""
        if isinstance(model, GPT):
            if model.cfg != self.mcfg:
                raise ValueError("model config differs from the engine's")
            sd = model.state_dict()

            def flats():
                for u in self.units:
                    prefix = "ends." if u.name == "ends" else f"blocks.{u.name[5:]}."
                    yield u.name, torch.cat([sd[prefix + n].reshape(-1).float() for n in u.names])

            source = flats()
        else:
            source = iter(model)
        for u in self.units:
            name, flat = next(source)
            if name != u.name or flat.numel() != u.numel:
                raise ValueError(f"initial weights for {name} ({flat.numel()}) do not fit unit {u.name} ({u.numel})")
            sums = {k: [] for k in ("p32", "m", "v")}
            for a, b in self._chunks(u):
                n = b - a
                buf = self.pool.alloc(4 * n, "init")
                for kind in ("p32", "m", "v"):
                    t = buf.view(torch.float32, n)
                    t.copy_(flat[a:b]) if kind == "p32" else t.zero_()
                    sums[kind].append(self._digest(buf.memview(0, 4 * n)))
                    wait_all(self.files[f"{kind}.0"].write(u.file_off32 + 4 * a, buf.memview(0, align_up(4 * n))))
                if self.bf16:
                    b16 = self.pool.alloc(2 * n, "init")
                    b16.view(torch.bfloat16, n).copy_(flat[a:b])
                    wait_all(self.files["w16.0"].write(u.file_off16 + 2 * a, b16.memview(0, align_up(2 * n))))
                    b16.release()
                buf.release()
            self.checksums[u.name] = sums
        self.step, self.slot = 0, 0
        self._commit(extra={})

    def _manifest(self, extra: dict) -> dict:
        return {
            "step": self.step, "slot": self.slot, "checksums": self.checksums,
            "layout": [(u.name, u.numel) for u in self.units], "chunk_elems": self.cfg.opt_chunk_elems,
            # str(): from a Hydra config these are closed-choice enums; the manifest holds builtin types only, so
            # it loads with weights-only unpickling
            "compute_dtype": str(self.cfg.compute_dtype), "checksum": str(self.cfg.checksum),
            "rng": capture_rng_state(), "state_dir": str(self.state_dir),
            **extra,
        }

    def _commit(self, extra: dict) -> None:
        for f in self.files.values():
            f.fsync()
        self.ckpt.save(self.step, self._manifest(extra))
        self.last_extra = extra

    def _resume(self, path: Path) -> None:
        m = load_checkpoint(path)
        if m["layout"] != [(u.name, u.numel) for u in self.units]:
            raise StateCorruptError(f"{path} was written for another model layout")
        # digests are per optimizer chunk: keep the run's chunk size (it changes memory use, not the math)
        self.cfg.opt_chunk_elems = m["chunk_elems"]
        if m.get("checksum", "crc32") != self.cfg.checksum:
            raise StateCorruptError(f"{path} was written with offload.checksum={m.get('checksum')}")
        if m["compute_dtype"] != self.cfg.compute_dtype:
            raise StateCorruptError(f"{path} was written with compute_dtype={m['compute_dtype']}")
        self.step, self.slot, self.checksums = m["step"], m["slot"], m["checksums"]
        self.last_extra = {k: v for k, v in m.items() if k not in self._manifest({})}
        self.resumed_manifest = m
        if self.cfg.verify_on_resume and self.cfg.checksum != "none":
            self.verify()

    def verify(self) -> None:
        """Re-read the committed slot and compare every chunk's CRC32 with the manifest."""
        for u in self.units:
            for ci, (a, b) in enumerate(self._chunks(u)):
                n = b - a
                buf = self.pool.alloc(align_up(4 * n), "verify")
                for kind in ("p32", "m", "v"):
                    wait_all(self.files[f"{kind}.{self.slot}"].read(u.file_off32 + 4 * a, buf.memview(0, align_up(4 * n))))
                    crc = self._digest(buf.memview(0, 4 * n))
                    if self.cfg.checksum != "none" and crc != self.checksums[u.name][kind][ci]:
                        buf.release()
                        raise StateCorruptError(
                            f"{self.files[f'{kind}.{self.slot}'].path}: unit {u.name} chunk {ci} fails its checksum "
                            f"(step {self.step}); the offload state is corrupt"
                        )
                buf.release()

    # ------------------------------------------------------------------ weights
    def _load_weights(self, u: Unit, slot: int) -> tuple[HostBuffer, list[Future]]:
        if self.bf16:
            buf = self.pool.alloc(align_up(2 * u.numel), f"weights:{u.name}")
            fut = self.files[f"w16.{slot}"].read(u.file_off16, buf.memview(0, align_up(2 * u.numel)))
        else:
            buf = self.pool.alloc(align_up(4 * u.numel), f"weights:{u.name}")
            fut = self.files[f"p32.{slot}"].read(u.file_off32, buf.memview(0, align_up(4 * u.numel)))
        return buf, fut

    def _params(self, u: Unit, buf: HostBuffer, grad: bool) -> dict[str, torch.Tensor]:
        flat = buf.view(self.dtype, u.numel)
        if self.device.type == "cuda":  # pinned host buffer -> device on the copy stream
            with torch.cuda.stream(self.h2d):
                flat = flat.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.h2d)
            torch.cuda.current_stream().wait_event(done)
            done.synchronize()  # the host buffer may be recycled for the next read once this returns
        out = {}
        for n, shp, off in zip(u.names, u.shapes, u.offsets):
            t = flat[off : off + shp.numel()].view(shp)
            out[n] = t.detach().requires_grad_(grad) if grad else t
        return out

    # ------------------------------------------------------------------ activations
    def _stash_write(self, stash: TensorStash) -> None:
        nb = align_up(stash.nbytes)
        stash.ssd_off = self._act_cursor
        self._act_cursor += nb
        stash.futures = self.files["act"].write(stash.ssd_off, stash.buf.memview(0, nb))
        self.counted["activation_ssd_write"] += nb

    def _stash_release_after_write(self, stash: TensorStash) -> None:
        wait_all(stash.futures)
        stash.buf.release()
        stash.buf = None

    def _stash_prefetch(self, stash: TensorStash, tag: str) -> None:
        nb = align_up(stash.nbytes)
        stash.buf = self.pool.alloc(nb, tag)
        stash.futures = self.files["act"].read(stash.ssd_off, stash.buf.memview(0, nb))
        self.counted["activation_ssd_read"] += nb

    # ------------------------------------------------------------------ optimizer
    def _grad_norms(self, u: Unit, grads: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [torch.linalg.vector_norm(grads[n].float()) for n in u.names]

    def _update_unit(self, u: Unit, grad_buf: HostBuffer | None, coef: torch.Tensor | None, step: int, lr: float) -> None:
        """Read slot s, AdamW (grads scaled by ``coef`` when given), write slot 1-s, chunk by chunk,
        reading chunk j+1 while updating chunk j. Grads come from ``grad_buf`` or the SSD grad file."""
        t0 = time.perf_counter()
        src, dst = self.slot, 1 - self.slot
        chunks = self._chunks(u)
        sums = {k: [] for k in ("p32", "m", "v")}
        cmax = max(b - a for a, b in chunks)
        kinds = ["p32", "m", "v"] + (["grad"] if grad_buf is None else [])

        def start_read(a, b):
            bufs = {k: self.pool.alloc(align_up(4 * cmax), f"optimizer:{k}") for k in kinds}
            futs = []
            for k in kinds:
                f = self.files["grad" if k == "grad" else f"{k}.{src}"]
                futs += f.read(u.file_off32 + 4 * a, bufs[k].memview(0, align_up(4 * (b - a))))
            return bufs, futs

        pending_writes: list[tuple[list[Future], list[HostBuffer]]] = []
        nxt = start_read(*chunks[0])
        for ci, (a, b) in enumerate(chunks):
            bufs, futs = nxt
            wait_all(futs)
            if ci + 1 < len(chunks):
                nxt = start_read(*chunks[ci + 1])
            n = b - a
            p, m, v = (bufs[k].view(torch.float32, n) for k in ("p32", "m", "v"))
            g = grad_buf.view(torch.float32, u.numel)[a:b] if grad_buf is not None else bufs["grad"].view(torch.float32, n)
            if coef is not None:
                g = g * coef
            for wd_on in (True, False):
                segs = [(i, lo, hi) for i, lo, hi in u.segments(a, b) if u.decays[i] == wd_on]
                adamw_update([p[lo - a : hi - a] for _, lo, hi in segs], [g[lo - a : hi - a] for _, lo, hi in segs],
                             [m[lo - a : hi - a] for _, lo, hi in segs], [v[lo - a : hi - a] for _, lo, hi in segs],
                             step=step, lr=lr, cfg=self.ocfg, wd=self.ocfg.weight_decay if wd_on else 0.0)
            wfuts: list[Future] = []
            for k in ("p32", "m", "v"):
                sums[k].append(self._digest(bufs[k].memview(0, 4 * n)))
                wfuts += self.files[f"{k}.{dst}"].write(u.file_off32 + 4 * a, bufs[k].memview(0, align_up(4 * n)))
            held = [bufs[k] for k in kinds]
            if self.bf16:
                b16 = self.pool.alloc(align_up(2 * cmax), "optimizer:w16")
                b16.view(torch.bfloat16, n).copy_(p)
                wfuts += self.files[f"w16.{dst}"].write(u.file_off16 + 2 * a, b16.memview(0, align_up(2 * n)))
                held.append(b16)
            pending_writes.append((wfuts, held))
            _crash_point(f"opt_{u.name}_chunk{ci}", step)
            # delayed write-back: keep at most one chunk's writes in flight behind the current update
            while len(pending_writes) > 2:
                fs, hb = pending_writes.pop(0)
                wait_all(fs)
                for h in hb:
                    h.release()
        for fs, hb in pending_writes:
            wait_all(fs)
            for h in hb:
                h.release()
        with self.stats_lock:
            self.updates_log.append((u, grad_buf is None))
            self.new_checksums[u.name] = sums
            self.busy["optimizer"] += time.perf_counter() - t0

    # ------------------------------------------------------------------ one training step
    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor, extra: dict | None = None) -> dict[str, float]:
        """Forward, backward with overlapped optimizer, validation of the clip, commit. Returns metrics."""
        step = self.step + 1
        lr = self.ocfg.lr_at(step)
        max_norm = self.ocfg.clip_grad_norm
        t_start = time.perf_counter()
        io0 = self.io.stats.snapshot()
        self.counted = {"activation_ssd_read": 0, "activation_ssd_write": 0, "activation_host": 0}
        self.new_checksums = {}
        self.updates_log: list[tuple[Unit, bool]] = []
        self._inflight: list[Future] = []
        self._act_cursor = 0
        self.pool.peak_bytes = self.pool.used_bytes
        self.busy = {"compute": 0.0, "optimizer": 0.0}
        tokens, targets = tokens.to(self.device), targets.to(self.device)
        L = self.mcfg.layers
        ends_u, blocks_u = self.units[0], self.units[1:]
        depth = max(0, self.cfg.prefetch_depth) if self.cfg.overlap else 0
        loads: dict[int, tuple[HostBuffer, list[Future]]] = {}

        def prefetch(j: int) -> None:
            if 0 <= j < L and j not in loads:
                loads[j] = self._load_weights(blocks_u[j], self.slot)

        # ---- forward: block i computes while block i+1..i+depth load
        ends_buf, fut = self._load_weights(ends_u, self.slot)
        for j in range(depth):
            prefetch(j)
        wait_all(fut)
        ends_p = self._params(ends_u, ends_buf, grad=True)
        tc = time.perf_counter()
        x0 = self._embed(ends_p, tokens)
        compute = time.perf_counter() - tc
        x = x0.detach()
        stashes: list[dict[str, TensorStash]] = []
        writing: list[TensorStash] = []
        for i in range(L):
            prefetch(i)
            for j in range(i + 1, i + 1 + depth):
                prefetch(j)
            buf, fut = loads[i]
            wait_all(fut)
            plan = self.plans[i]
            params = self._params(blocks_u[i], buf, grad=False)
            tc = time.perf_counter()
            store: dict[int, Any] = {}
            with torch.no_grad(), _op_cache(plan.cached_ops(), store, replay=False):
                y = functional_call(self.block_mod, params, (x,))
            compute += time.perf_counter() - tc
            stash = self._stash_block(x, store, plan)
            stashes.append(stash)
            writing += [s for s in stash.values() if s.ssd_off is not None]
            while len(writing) > 2:  # bound the staging held by SSD writes in flight
                self._stash_release_after_write(writing.pop(0))
            if not (self.cfg.overlap and i == L - 1):  # fuyou keeps the last block: backward starts with it
                buf.release()
                del loads[i]
            x = y
            _crash_point(f"fwd_block{i}", step)
        for s in writing:
            self._stash_release_after_write(s)

        # ---- head and loss
        tc = time.perf_counter()
        h = x.detach().requires_grad_()
        loss = _ends_loss(self.ends_mod, ends_p, h, targets)
        loss.backward()
        compute += time.perf_counter() - tc
        g = h.grad

        # ---- backward: recompute block i (replaying cached ops) while block i-1's weights and
        # activations load and the optimizer updates block i+1
        norms: dict[str, list[torch.Tensor]] = {}
        kept: dict[str, HostBuffer] = {}
        futures: list[Future] = []
        deferred: list[Unit] = []
        running_sq = torch.zeros((), dtype=torch.float32)
        speculate = True
        for i in reversed(range(L)):
            prefetch(i)
            for j in range(i - 1, i - 1 - depth, -1):
                prefetch(j)
                if j >= 0:
                    for s in stashes[j].values():
                        if s.ssd_off is not None and s.buf is None:
                            self._stash_prefetch(s, "act_prefetch")
            st = stashes[i]
            for s in st.values():
                if s.ssd_off is not None:
                    if s.buf is None:
                        self._stash_prefetch(s, "act_prefetch")
                    wait_all(s.futures)
            buf, fut = loads.pop(i)
            wait_all(fut)
            u = blocks_u[i]
            params = self._params(u, buf, grad=True)
            tc = time.perf_counter()
            x_in = st["ckpt"].get("x").to(self.device).detach().requires_grad_()
            store = {k: (nm, _stash_get_op(st["cache"], k, self.device)) for k, nm in st["cache"].names.items()} \
                if "cache" in st else {}
            with _op_cache(self.plans[i].cached_ops(), store, replay=True):
                y = functional_call(self.block_mod, params, (x_in,))
            y.backward(g)
            g = x_in.grad
            del y, x_in, store
            compute += time.perf_counter() - tc
            grad_buf = self._collect_grads(u, params)
            del params
            buf.release()
            for s in st.values():
                s.buf.release()
                s.buf = None
            norms[u.name] = self._grad_norms(u, grad_buf)
            running_sq = running_sq + torch.stack(norms[u.name]).pow(2).sum()
            if max_norm and speculate and float(running_sq.sqrt()) + 1e-6 > max_norm * (1 + 1e-5):
                speculate = False  # clipping is now certain: stop speculating, replay at the end
            futures += self._dispatch(u, grad_buf, step, lr, speculate, kept, deferred)
            _crash_point(f"bwd_block{i}", step)
        tc = time.perf_counter()
        x0.backward(g)  # the embedding's gradient completes the ends unit
        compute += time.perf_counter() - tc
        grad_buf = self._collect_grads(ends_u, ends_p)
        ends_buf.release()
        norms["ends"] = self._grad_norms(ends_u, grad_buf)
        futures += self._dispatch(ends_u, grad_buf, step, lr, speculate, kept, deferred)
        t_bwd_end = time.perf_counter()

        # ---- validate with the exact global norm (torch.nn.utils.clip_grad_norm_'s formula and order)
        total_norm = torch.linalg.vector_norm(torch.stack([n for u in self.units for n in norms[u.name]]))
        for fu in futures:
            fu.result()
        if not torch.isfinite(total_norm):
            self._drop(kept)
            raise NonFiniteGradientError(f"step {step}: gradient norm is {float(total_norm)}; nothing was committed")
        coef = None
        if max_norm:
            clamped = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
            if float(clamped) < 1.0:
                coef = clamped
        rolled_back = coef is not None and bool(futures)
        redo = self.units if coef is not None else deferred
        for u in redo:
            self._update_unit(u, kept.get(u.name), coef, step, lr)
        self._drop(kept)
        t_opt_end = time.perf_counter()
        _crash_point("before_commit", step)

        # ---- commit: slot flip by manifest
        self.step, self.slot = step, 1 - self.slot
        self.checksums = self.new_checksums
        self.rollbacks += int(rolled_back)
        self._commit(extra=extra or {})
        _crash_point("after_commit", step)
        io1 = self.io.stats.snapshot()
        return {
            "loss": float(loss.detach()), "grad_norm": float(total_norm), "lr": lr,
            "clip_coef": float(coef) if coef is not None else 1.0, "rolled_back": int(rolled_back),
            "step_s": time.perf_counter() - t_start, "backward_end_s": t_bwd_end - t_start,
            "optimizer_tail_s": t_opt_end - t_bwd_end, "compute_s": compute,
            "optimizer_busy_s": self.busy["optimizer"],
            "ssd_read_bytes": io1["read_bytes"] - io0["read_bytes"],
            "ssd_write_bytes": io1["write_bytes"] - io0["write_bytes"],
            "activation_ssd_bytes": self.counted["activation_ssd_write"],
            "activation_host_bytes": self.counted["activation_host"],
            "host_pool_peak_bytes": self.pool.peak_bytes, "tokens": int(tokens.numel()),
            **{f"expected_{k}": v for k, v in self.expected_bytes(self.updates_log).items()},
        }

    def expected_bytes(self, updates: list[tuple[Unit, bool]] | None = None) -> dict[str, int]:
        """SSD bytes one step moves, counted from the layout and the plan (requests are 4 KiB padded).

        ``updates`` lists the optimizer passes made (unit, gradient read from SSD); by default one pass
        per unit, i.e. a step without a clip replay.
        """
        if updates is None:
            updates = [(u, self.stores_grads and self.grad_tier == "ssd") for u in self.units]
        w = 2 if self.bf16 else 4
        blocks = self.units[1:]
        reloaded = blocks[:-1] if self.cfg.overlap else blocks
        read = sum(align_up(w * u.numel) for u in self.units) + sum(align_up(w * u.numel) for u in reloaded)
        write = 0
        for u, grad_from_ssd in updates:
            for a, b in self._chunks(u):
                r = align_up(4 * (b - a))
                read += r * (4 if grad_from_ssd else 3)
                write += 3 * r + (align_up(2 * (b - a)) if self.bf16 else 0)
        if self.stores_grads and self.grad_tier == "ssd":
            write += sum(align_up(4 * u.numel) for u in self.units)
        act = host = 0
        for p in self.plans:
            sb = stash_bytes(self.mcfg, p, self.batch, self.seq, self.dtype.itemsize)
            act += align_up(sb["ckpt"]) if p.ckpt_tier == "ssd" else 0
            act += align_up(sb["cache"]) if p.cache_tier == "ssd" and p.cached else 0
            host += sb["ckpt"] if p.ckpt_tier == "host" else 0
            host += sb["cache"] if p.cache_tier == "host" and p.cached else 0
        return {"ssd_read_bytes": read + act, "ssd_write_bytes": write + act, "activation_ssd_bytes": act,
                "activation_host_bytes": host}

    def _drop(self, kept: dict[str, HostBuffer]) -> None:
        for b in kept.values():
            b.release()
        kept.clear()

    @property
    def stores_grads(self) -> bool:
        """Gradients outlive their unit's backward: for a clip replay, or because the optimizer runs after
        backward (zero_infinity)."""
        return bool(self.ocfg.clip_grad_norm) or not self.cfg.overlap

    def _dispatch(self, u: Unit, grad_buf: HostBuffer, step: int, lr: float, speculate: bool,
                  kept: dict[str, HostBuffer], deferred: list[Unit]) -> list[Future]:
        """Hand a unit whose gradient is final to the optimizer: now (fuyou) or after backward (zero_infinity)."""
        on_ssd = self.stores_grads and self.grad_tier == "ssd"
        if on_ssd:  # the gradient waits on SSD and its host buffer goes back to the pool
            wait_all(self.files["grad"].write(u.file_off32, grad_buf.memview(0, align_up(4 * u.numel))))
        if self.cfg.overlap and speculate:
            # backpressure: a slow optimizer must not let gradient buffers pile up in host memory
            while len(self._inflight) >= max(1, self.cfg.max_inflight_updates):
                self._inflight.pop(0).result()
            fut = self.worker.submit(self._update_unit, u, grad_buf, None, step, lr)
            self._inflight.append(fut)
            if self.stores_grads and not on_ssd:
                kept[u.name] = grad_buf
            else:
                fut.add_done_callback(lambda _f, b=grad_buf: b.release())
            return [fut]
        deferred.append(u)
        if on_ssd:
            grad_buf.release()
        else:
            kept[u.name] = grad_buf
        return []

    def _grad_norms(self, u: Unit, grad_buf: HostBuffer) -> list[torch.Tensor]:
        flat = grad_buf.view(torch.float32, u.numel)
        return [torch.linalg.vector_norm(flat[o : o + s.numel()]) for o, s in zip(u.offsets, u.shapes)]

    def _collect_grads(self, u: Unit, params: dict[str, torch.Tensor]) -> HostBuffer:
        buf = self.pool.alloc(align_up(4 * u.numel), f"grads:{u.name}")
        flat = buf.view(torch.float32, u.numel)
        for n, off, shp in zip(u.names, u.offsets, u.shapes):
            gr = params[n].grad
            dst = flat[off : off + shp.numel()]
            if gr is None:
                dst.zero_()
            else:
                dst.copy_(gr.reshape(-1))  # D2H on CUDA: synchronous, so the worker may read it at once
        return buf

    def _embed(self, ends_p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(tokens, ends_p["embed.weight"])

    def _stash_block(self, x: torch.Tensor, store: dict[int, Any], plan: BlockPlan) -> dict[str, TensorStash]:
        """Copy the block input (and the cached op outputs) into host buffers; SSD tiers then write them."""
        parts: dict[str, tuple[TensorStash, dict, str]] = {}
        ck = TensorStash()
        ck.plan("x", x)
        parts["ckpt"] = (ck, {"x": x}, plan.ckpt_tier)
        if store:
            cs = TensorStash()
            tensors = {}
            for k, (name, val) in store.items():
                vals = val if isinstance(val, tuple) else (val,)
                cs.names[k] = name
                cs.arity[k] = (len(vals), isinstance(val, tuple))
                for j, t in enumerate(vals):
                    cs.plan((k, j), t)
                    tensors[(k, j)] = t
            parts["cache"] = (cs, tensors, plan.cache_tier)
        result = {}
        for key, (stash, tensors, tier) in parts.items():
            stash.buf = self.pool.alloc(align_up(stash.nbytes), f"act_{tier}")
            if tier == "host":
                self.counted["activation_host"] += stash.nbytes
            stash.fill(tensors)
            if tier == "ssd":
                self._stash_write(stash)
            result[key] = stash
        return result


def _ends_loss(ends: Ends, p: dict[str, torch.Tensor], x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    w = p["embed.weight"] if ends.cfg.tie_embeddings else p["lm_head.weight"]
    y = functional_call(ends.norm, {"weight": p["norm.weight"]}, (x,))
    logits = torch.nn.functional.linear(y, w)
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def _stash_get_op(stash: TensorStash, k: int, device: torch.device):
    n, is_tuple = stash.arity[k]
    vals = tuple(stash.get((k, j)).to(device) for j in range(n))
    return vals if is_tuple else vals[0]


def read_unit_params(engine: OffloadEngine, which: str = "p32") -> dict[str, torch.Tensor]:
    """The committed fp32 master weights (or m / v) as a ``GPT`` state dict (for tests and export)."""
    out = {}
    for u in engine.units:
        buf = engine.pool.alloc(align_up(4 * u.numel), "export")
        wait_all(engine.files[f"{which}.{engine.slot}"].read(u.file_off32, buf.memview(0, align_up(4 * u.numel))))
        flat = buf.view(torch.float32, u.numel).clone()
        buf.release()
        prefix = "ends." if u.name == "ends" else f"blocks.{u.name[5:]}."
        for n, off, shp in zip(u.names, u.offsets, u.shapes):
            out[prefix + n] = flat[off : off + shp.numel()].view(shp).clone()
    return out


__all__ = ["OffloadEngine", "EngineConfig", "OptimConfig", "NonFiniteGradientError", "StateCorruptError",
           "read_unit_params", "adamw_update", "ALIGN", "field", "Callable"]
