"""The out-of-core training engine: SSD-resident state, layer-by-layer compute, overlapped AdamW.

Units. The model is cut into units: ``ends`` (embedding, final norm, head; resident for the whole step
because the tied head is used last and the embedding's gradient is final only at the very end) and
one unit per block. Each unit's parameters are one flat fp32 vector.

State on SSD, two versioned slots. ``p32``, ``m``, ``v`` (and ``w16``, the bf16 working copy, in bf16
mode) exist twice. Step k reads slot s (committed after step k-1) and writes slot 1-s; it commits by
atomically writing a manifest (step, slot, a digest per chunk) with ``common.checkpoint``. A crash at
any point before the manifest leaves slot s and the previous manifest as they were; after it, the new
step is committed. The same slots make global-norm clipping exact:

Speculate, then validate. As soon as backward finishes a block, a worker thread reads that unit's
state, runs AdamW on it with clip coefficient 1 and writes slot 1-s, while backward continues. When
the global norm is known: if ``clip_coef = max_norm / (norm + 1e-6)`` is at least 1 (torch clamps it
to exactly 1) the speculative updates are exactly standard training's and are committed; otherwise
every unit is updated again from slot s with the clipped gradients (kept in host memory or on SSD). A
non-finite norm abandons the step: nothing is committed. Once the running norm already exceeds the
threshold speculation stops, and after a clipped step the next one does not speculate at all.

Where the exact (clipped) update runs (``clip_overlap``). No schedule can overlap it with backward: every
unit's update depends on the global norm, which needs the gradient of the first block, computed last.
``next_forward`` runs it during the *next* step's forward, in forward order, each block's forward waiting
only for its own unit's update; the step is committed once forward has all its weights. ``after_backward``
(the default: measured faster in the ``full`` run, where the deferred update slowed forward by more than it
saved) runs it right after backward (ZeRO-Infinity's order). Both give the same numbers.

``schedule=zero_infinity`` models DeepSpeed ZeRO-Infinity (ZeRO-3 with ``offload_param`` and
``offload_optimizer`` on NVMe and activation checkpointing to CPU) in the same engine: weights prefetched
from SSD ahead of use (``stage3_prefetch_bucket_size`` / NVMe prefetch), the last block kept for backward
(reuse distance), gradients in a host buffer of the model dtype (``grad_partitions_flat_buffer``) with the
fp32 copy swapped out to SSD during backward (``swap_out_gradients``), and ``step()`` after backward:
sub-group by sub-group, P32, m, v and the gradient swapped in, clipped with the global norm, AdamW, swapped
out, with the next sub-group's read overlapping this one's update and write (``pipeline_read/write``).

Activations. Block inputs are checkpointed to host or SSD. During forward the outputs of the op
groups chosen by the plan are cached (host or SSD) by a ``TorchDispatchMode``; the backward pass
recomputes the block and replays those outputs instead of recomputing them, so gradients are exactly
those of standard training whatever the plan. The attention core is whatever fused SDPA op the backend
runs (its whole output tuple, undefined tensors and integers included, is cached); with the math backend,
which has no single op, the core is recomputed.

CUDA. Weights go host -> GPU on their own stream into a window of device copies, activations and
gradients GPU -> host on another; events order the streams, ``record_stream`` keeps the allocator from
reusing a tensor another stream still reads, and a host buffer returns to the pool only once its copy's
event has completed. AdamW runs on the CPU (the host state), after waiting for the gradient's copy event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import zlib
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
from .model import ATTENTION_REGION, GPT, Block, Ends, GPTConfig, attention_core
from .planner import OP_GROUPS, AttentionLayout, BlockPlan, stash_bytes, supported
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
    """torch's own AdamW kernel on (views of) flat state, so chunked updates equal torch.optim.AdamW with the
    same kernel (``foreach=False``, fused or not); the default foreach kernel rounds differently (~1e-6)."""
    if not params:
        return
    steps = [torch.tensor(float(step - 1)) for _ in params]
    torch_adamw.adamw(
        params, grads, ms, vs, [], steps, foreach=False, fused=cfg.impl == "fused", amsgrad=False,
        beta1=cfg.betas[0], beta2=cfg.betas[1], lr=lr, weight_decay=wd, eps=cfg.eps, maximize=False,
    )


@dataclass
class EngineConfig:
    schedule: str = "fuyou"          # fuyou | zero_infinity (the faithful DeepSpeed ZeRO-Infinity model)
    compute_dtype: str = "fp32"      # fp32 | bf16 (bf16 working weights, fp32 master state)
    host_budget: int = 2 << 30
    queue_depth: int = 4
    request_bytes: int = 4 << 20
    throttle_bytes_per_s: float | None = None
    prefetch_depth: int = 1          # blocks whose weights load ahead of use (both schedules: ZeRO-3 prefetches)
    opt_chunk_elems: int = 1 << 20   # optimizer chunk (ZeRO-Infinity: its sub-group size)
    max_inflight_updates: int = 2    # units queued for the optimizer before backward waits (bounds grad memory)
    grad_tier: str = "auto"          # host | ssd | auto (host if all fp32 grads fit in a quarter of the budget)
    clip_overlap: str = "after_backward"  # where a binding clip's exact update runs: after_backward | next_forward
    overlap: bool = True             # False: nothing overlapped (diagnostic run: its compute time is the floor)
    verify_on_resume: bool = True
    checksum: str = "xxh3"           # xxh3 | crc32 | none: digest of every state chunk written
    device: str = "cpu"
    gpu_window: int | None = None    # CUDA: block weight copies held on the GPU (None: sized from free memory)

    def __post_init__(self):
        if self.schedule not in ("fuyou", "zero_infinity"):
            raise ValueError(f"schedule must be fuyou or zero_infinity, not {self.schedule!r}")
        if self.clip_overlap not in ("next_forward", "after_backward"):
            raise ValueError(f"clip_overlap must be next_forward or after_backward, not {self.clip_overlap!r}")


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


@dataclass
class _Job:
    """One optimizer pass over a unit: gradients from ``grad`` (host) or the SSD grad file (None)."""

    unit: Unit
    grad: HostBuffer | None
    coef: torch.Tensor | None
    release_grad: bool = True


@dataclass
class _Pending:
    """A step whose exact update was deferred to the next forward (clip binding, ``next_forward``)."""

    step: int
    lr: float
    jobs: list[_Job]
    sums: dict
    rng: dict
    extra: dict
    unit_done: dict[str, Future] = field(default_factory=dict)
    future: Future | None = None


def _crash_point(name: str, step: int) -> None:
    """Fault injection for the crash-safety tests: FUYOU_CRASH_AT=<step>:<point> SIGKILLs this process."""
    spec = os.environ.get("FUYOU_CRASH_AT")
    if spec and spec == f"{step}:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


def _is_sdpa(func) -> bool:
    return "scaled_dot_product" in func.name()


def _with_logsumexp(func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Arguments of a fused attention op with ``compute_log_sumexp=True``: memory-efficient and cuDNN
    attention skip the log-sum-exp under ``no_grad`` (forward), but the backward of the replayed op needs it."""
    names = [a.name for a in func._schema.arguments]
    if "compute_log_sumexp" not in names:
        return args, kwargs
    i = names.index("compute_log_sumexp")
    if i < len(args):
        return args[:i] + (True,) + args[i + 1:], kwargs
    return args, {**kwargs, "compute_log_sumexp": True}


class OpCache(TorchDispatchMode):
    """Records (forward) or replays (backward recompute) the outputs of chosen ops of one block.

    Recorded ops, numbered in execution order: every matmul (``mm``/``addmm``) and, inside the attention
    region (``model.attention_core``), the fused SDPA op. When the region runs no fused op (the math
    backend) its number is skipped, so the matmuls after it keep theirs whatever the backend."""

    def __init__(self, keep: frozenset[int], store: dict[int, Any], replay: bool):
        super().__init__()
        self.keep, self.store, self.replay = keep, store, replay
        self.index = 0
        self.in_attention = False
        self.fused_seen = False
        self._token = None

    def __enter__(self):
        self._token = ATTENTION_REGION.set(self.attention_region)
        return super().__enter__()

    def __exit__(self, *exc):
        ATTENTION_REGION.reset(self._token)
        return super().__exit__(*exc)

    def attention_region(self, core):
        self.in_attention, self.fused_seen = True, False
        try:
            out = core()
        finally:
            self.in_attention = False
        if not self.fused_seen:
            self.index += 1  # math backend: the core is recomputed, its number skipped
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.in_attention:
            hit = _is_sdpa(func) and not self.fused_seen
            self.fused_seen |= hit
        else:
            hit = func in (aten.mm.default, aten.addmm.default)
        if not hit:
            return func(*args, **kwargs)
        i = self.index
        self.index += 1
        if i not in self.keep:
            return func(*args, **kwargs)
        if self.replay:
            name, out = self.store[i]
            if name != func.name():
                raise RuntimeError(f"op {i} replays {name} but recompute called {func.name()}")
            return out
        if _is_sdpa(func):
            args, kwargs = _with_logsumexp(func, args, kwargs)
        out = func(*args, **kwargs)
        self.store[i] = (func.name(), out)
        return out


def _op_cache(keep: frozenset[int], store: dict[int, Any], replay: bool):
    """An ``OpCache`` when the plan caches something (a dispatch mode is not free), else a no-op."""
    return OpCache(keep, store, replay) if keep else contextlib.nullcontext()


def probe_attention(cfg: GPTConfig, device: torch.device, dtype: torch.dtype, seq: int) -> AttentionLayout:
    """Run the attention core once as the engine records it and describe what its SDPA op returns."""
    kv = torch.zeros(1, cfg.kv_heads, seq, cfg.head_dim, dtype=dtype, device=device)
    q = torch.zeros(1, cfg.heads, seq, cfg.head_dim, dtype=dtype, device=device)
    store: dict[int, Any] = {}
    with torch.no_grad(), OpCache(frozenset({0}), store, replay=False):
        attention_core(q, kv, kv, cfg.kv_heads != cfg.heads)
    if 0 not in store:
        return AttentionLayout(fused=False, lse_multiple=0)
    out = store[0][1]
    tensors = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]
    rest = tensors[1:]
    multiple, elem = 0, 4
    if rest and rest[0].numel() and rest[0].numel() % cfg.heads == 0 and rest[0].numel() // cfg.heads >= seq:
        padded = rest[0].numel() // cfg.heads
        elem = rest[0].element_size()
        multiple = next((m for m in (1, 8, 16, 32, 64, 128) if -(-seq // m) * m == padded), padded)
        rest = rest[1:]
    return AttentionLayout(True, multiple, elem, tuple(t.numel() * t.element_size() for t in rest))


class TensorStash:
    """Tensors of one block packed into one host buffer (and optionally mirrored on SSD). Values that are
    not tensors (an op's undefined outputs, integers) are kept as they are."""

    def __init__(self):
        self.items: list[tuple[Any, torch.Size, tuple, torch.dtype, int]] = []  # key, shape, stride, dtype, offset
        self.nbytes = 0
        self.names: dict[int, str] = {}
        self.arity: dict[int, tuple[int, bool]] = {}
        self.consts: dict[Any, Any] = {}
        self.devices: dict[Any, torch.device] = {}
        self.buf: HostBuffer | None = None
        self.ssd_off: int | None = None
        self.futures: list[Future] = []
        self.d2h_event = None

    @staticmethod
    def span(t: torch.Tensor) -> int:
        return 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0

    def plan(self, key, t: torch.Tensor) -> None:
        self.items.append((key, t.shape, t.stride(), t.dtype, self.nbytes))
        self.devices[key] = t.device
        self.nbytes += align_up(self.span(t) * t.element_size(), 64)

    def _view(self, shape, stride, dtype, off) -> torch.Tensor:
        n = 1 + sum((s - 1) * st for s, st in zip(shape, stride)) if all(shape) else 0
        return torch.as_strided(self.buf.view(dtype, n, off), shape, stride)

    def fill(self, tensors: dict, stream=None) -> None:
        for key, shape, stride, dtype, off in self.items:
            src = tensors[key]
            self._view(shape, stride, dtype, off).copy_(src, non_blocking=stream is not None)
            if stream is not None and src.is_cuda:
                src.record_stream(stream)

    def get(self, key) -> torch.Tensor:
        for k, shape, stride, dtype, off in self.items:
            if k == key:
                return self._view(shape, stride, dtype, off)
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


def _release_when_done(futures: list[Future], buf: HostBuffer) -> None:
    """Return ``buf`` to the pool once every future (its SSD writes) has completed."""
    if not futures:
        buf.release()
        return
    left, lock = [len(futures)], threading.Lock()

    def done(_f):
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            buf.release()

    for f in futures:
        f.add_done_callback(done)


class _Load:
    """The weights of one unit on their way in: SSD -> pool buffer (-> GPU). The SSD read may be issued
    later, from another thread, once the unit's deferred update has written them."""

    def __init__(self, unit: Unit):
        self.unit = unit
        self.buf: HostBuffer | None = None
        self.futures: list[Future] = []
        self.issued = threading.Event()
        self.error: BaseException | None = None
        self.dev: torch.Tensor | None = None
        self.h2d_event = None

    def read_done(self) -> bool:
        return self.issued.is_set() and all(f.done() for f in self.futures)

    def wait(self) -> None:
        self.issued.wait()
        if self.error is not None:
            raise self.error
        wait_all(self.futures)


class _Clock:
    """Compute time of the main stream: wall time on the CPU, CUDA events on the GPU (CPU time there only
    measures kernel launches)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_s = 0.0
        self.pairs: list = []

    @contextlib.contextmanager
    def __call__(self):
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((start, end))
        else:
            t = time.perf_counter()
            yield
            self.cpu_s += time.perf_counter() - t

    def seconds(self) -> float:
        if not self.cuda:
            return self.cpu_s
        for _, end in self.pairs:
            end.synchronize()
        return sum(s.elapsed_time(e) for s, e in self.pairs) / 1000.0


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
        self.cuda = self.device.type == "cuda"
        self.zero3 = cfg.schedule == "zero_infinity"
        self.ends_mod = Ends(model_cfg).to("meta")
        self.block_mod = Block(model_cfg).to("meta")
        self.units = self._layout()
        self.n_params = sum(u.numel for u in self.units)
        self.attn = probe_attention(model_cfg, self.device, self.dtype, seq)
        if plans is None or self.zero3:  # ZeRO-Infinity: block inputs in host RAM (cpu_checkpointing), full recompute
            plans = [BlockPlan() for _ in range(model_cfg.layers)]
        self.plans = [supported(p, self.attn) for p in plans]
        grad_bytes = 4 * self.n_params
        self.grad_tier = cfg.grad_tier if cfg.grad_tier != "auto" else ("host" if grad_bytes <= cfg.host_budget // 4 else "ssd")
        if self.zero3:
            self.grad_tier = "ssd"  # the NVMe optimizer swapper swaps fp32 gradients out during backward
        self.pool = HostPool(cfg.host_budget, pin=self.cuda)
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
        self.counted = {"activation_ssd_read": 0, "activation_ssd_write": 0, "activation_host": 0}
        self.trace: list[tuple[str, str, float, float]] = []
        self._pending: _Pending | None = None
        self._last_clipped = False
        self._zero3_grads: HostBuffer | None = None
        self._t0 = time.perf_counter()
        if self.cuda:
            self.h2d = torch.cuda.Stream(self.device)
            self.d2h = torch.cuda.Stream(self.device)
            self.waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="d2h-wait")
            self._held: list[tuple[Any, HostBuffer]] = []  # host buffers returned once their copy event completes
            self.gpu_window = cfg.gpu_window or self._size_gpu_window()

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

    def _size_gpu_window(self) -> int:
        """Block weight copies the GPU may hold: the prefetch window, capped at a quarter of free memory."""
        free, _ = torch.cuda.mem_get_info(self.device)
        block = self.dtype.itemsize * self.mcfg.block_params()
        return max(1, min(self.cfg.prefetch_depth + 2, int(0.25 * free // max(block, 1))))

    def _act_file_bytes(self, plans: list[BlockPlan] | None = None) -> int:
        """SSD bytes of one step's activations under ``plans``; for fuyou the file is sized for the
        worst plan (everything cached on SSD) so the planner may change the plan after the profiling step."""
        if plans is None:
            plans = self.plans
            if not self.zero3:
                plans = [supported(BlockPlan("ssd", tuple(OP_GROUPS), "ssd"), self.attn) for _ in self.plans]
        total = 0
        for p in plans:
            sb = stash_bytes(self.mcfg, p, self.batch, self.seq, self.dtype.itemsize, self.attn)
            total += align_up(sb["ckpt"]) if p.ckpt_tier == "ssd" else 0
            total += align_up(sb["cache"]) if p.cache_tier == "ssd" and p.cached else 0
        return total

    @property
    def stores_grads(self) -> bool:
        """Gradients outlive their unit's backward: for a clip replay, or because the optimizer runs after
        backward (zero_infinity, the no-overlap run)."""
        return bool(self.ocfg.clip_grad_norm) or self.zero3 or not self.cfg.overlap

    @property
    def grads_to_ssd(self) -> bool:
        """Every unit's fp32 gradient is written to the SSD grad file during backward."""
        return self.stores_grads and self.grad_tier == "ssd"

    def _file_specs(self) -> dict[str, int]:
        specs = {}
        for s in (0, 1):
            for k in ("p32", "m", "v"):
                specs[f"{k}.{s}"] = self._bytes32
            if self.bf16:
                specs[f"w16.{s}"] = self._bytes16
        if self.grads_to_ssd:
            specs["grad"] = self._bytes32
        act = self._act_file_bytes()
        if act:
            specs["act"] = act
        return specs

    def set_plans(self, plans: list[BlockPlan]) -> None:
        """Switch the activation plan between steps (after the profiling step)."""
        if len(plans) != self.mcfg.layers:
            raise ValueError(f"{len(plans)} block plans for {self.mcfg.layers} blocks")
        plans = [supported(p, self.attn) for p in plans]
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

    def flush(self) -> None:
        """Finish a deferred update and commit it (before reading the state, and at close)."""
        if self._pending is not None:
            if self._pending.future is None:
                self._start_pending(self._pending, [])
            self._finish_pending()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.worker.shutdown(wait=True)
            if self.cuda:
                torch.cuda.synchronize(self.device)
                self._reap(all_=True)
                self.waiter.shutdown(wait=True)
            if self._zero3_grads is not None:
                self._zero3_grads.release()
                self._zero3_grads = None
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
                    yield u.name, torch.cat([sd[prefix + n].reshape(-1).float().cpu() for n in u.names])

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
        self._commit(extra={}, rng=capture_rng_state())

    def _manifest(self, extra: dict, rng: dict | None = None) -> dict:
        return {
            "step": self.step, "slot": self.slot, "checksums": self.checksums,
            "layout": [(u.name, u.numel) for u in self.units], "chunk_elems": self.cfg.opt_chunk_elems,
            # str(): from a Hydra config these are closed-choice enums; the manifest holds builtin types only, so
            # it loads with weights-only unpickling
            "compute_dtype": str(self.cfg.compute_dtype), "checksum": str(self.cfg.checksum),
            "rng": rng if rng is not None else capture_rng_state(), "state_dir": str(self.state_dir),
            **extra,
        }

    def _commit(self, extra: dict, rng: dict) -> None:
        for f in self.files.values():
            f.fsync()
        self.ckpt.save(self.step, self._manifest(extra, rng))
        self.last_extra = extra

    def _commit_step(self, step: int, sums: dict, rng: dict, extra: dict) -> None:
        """Flip to the slot this step wrote: the manifest write is the commit point."""
        _crash_point("before_commit", step)
        self.step, self.slot = step, 1 - self.slot
        self.checksums = sums
        self._commit(extra=extra, rng=rng)
        _crash_point("after_commit", step)

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
        self.last_extra = {k: v for k, v in m.items() if k not in self._manifest({}, {})}
        self.resumed_manifest = m
        if self.cfg.verify_on_resume and self.cfg.checksum != "none":
            self.verify()

    def verify(self) -> None:
        """Re-read the committed slot and compare every chunk's digest with the manifest."""
        self.flush()
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

    # ------------------------------------------------------------------ tracing
    def _mark(self, lane: str, label: str, start: float) -> None:
        """One interval of the per-phase timeline (seconds since the step started)."""
        end = time.perf_counter()
        with self.stats_lock:
            self.trace.append((lane, label, start - self._t0, end - self._t0))

    # ------------------------------------------------------------------ CUDA copies
    def _reap(self, all_: bool = False) -> None:
        """Return host buffers whose host<->device copy has completed (all of them with ``all_``)."""
        keep = []
        for ev, buf in self._held:
            if all_ or ev.query():
                if all_:
                    ev.synchronize()
                buf.release()
            else:
                keep.append((ev, buf))
        self._held = keep

    def _release_after(self, ev, buf: HostBuffer) -> None:
        if ev is None:
            buf.release()
        else:
            self._held.append((ev, buf))

    def _h2d(self, load: _Load) -> None:
        """Issue the host -> GPU copy of a loaded unit on the copy stream (once its SSD read is done)."""
        if load.dev is not None:
            return
        load.wait()
        with torch.cuda.stream(self.h2d):
            load.dev = torch.empty(load.unit.numel, dtype=self.dtype, device=self.device)
            load.dev.copy_(load.buf.view(self.dtype, load.unit.numel), non_blocking=True)
            load.h2d_event = torch.cuda.Event()
            load.h2d_event.record(self.h2d)

    def _tensor_to_device(self, t: torch.Tensor, after=None) -> tuple[torch.Tensor, Any]:
        """A host (pool) tensor on the GPU, copied on the copy stream; returns it and the copy's event."""
        with torch.cuda.stream(self.h2d):
            if after is not None:
                self.h2d.wait_event(after)
            dev = t.to(self.device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.h2d)
        torch.cuda.current_stream(self.device).wait_event(ev)
        dev.record_stream(torch.cuda.current_stream(self.device))
        return dev, ev

    # ------------------------------------------------------------------ weights
    def _start_load(self, u: Unit, slot: int, after: Future | None = None) -> _Load:
        """Read a unit's working weights from ``slot``; with ``after`` (its deferred update), once that is done."""
        load = _Load(u)

        def issue(_f=None):
            try:
                if _f is not None and _f.exception() is not None:
                    raise _f.exception()
                if self.bf16:
                    load.buf = self.pool.alloc(align_up(2 * u.numel), f"weights:{u.name}")
                    load.futures = self.files[f"w16.{slot}"].read(u.file_off16, load.buf.memview(0, align_up(2 * u.numel)))
                else:
                    load.buf = self.pool.alloc(align_up(4 * u.numel), f"weights:{u.name}")
                    load.futures = self.files[f"p32.{slot}"].read(u.file_off32, load.buf.memview(0, align_up(4 * u.numel)))
            except BaseException as e:  # surfaces in load.wait() on the main thread
                load.error = e
            finally:
                load.issued.set()

        if after is None:
            issue()
        else:
            after.add_done_callback(issue)
        return load

    def _params(self, load: _Load, grad: bool) -> dict[str, torch.Tensor]:
        u = load.unit
        if self.cuda:
            self._h2d(load)
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(load.h2d_event)
            load.dev.record_stream(cur)
            flat = load.dev
        else:
            flat = load.buf.view(self.dtype, u.numel)
        out = {}
        for n, shp, off in zip(u.names, u.shapes, u.offsets):
            t = flat[off : off + shp.numel()].view(shp)
            out[n] = t.detach().requires_grad_(grad) if grad else t
        return out

    def _drop_load(self, load: _Load) -> None:
        """The unit's weights are no longer needed on the host (the GPU copy, if any, lives on)."""
        if load.buf is not None:
            self._release_after(load.h2d_event, load.buf) if self.cuda else load.buf.release()
            load.buf = None

    # ------------------------------------------------------------------ activations
    def _stash_write(self, stash: TensorStash) -> None:
        nb = align_up(stash.nbytes)
        stash.ssd_off = self._act_cursor
        self._act_cursor += nb
        self.counted["activation_ssd_write"] += nb
        if stash.d2h_event is None:
            stash.futures = self.files["act"].write(stash.ssd_off, stash.buf.memview(0, nb))
        else:  # the GPU -> host copy must land before the SSD write starts
            ev, f, off, view = stash.d2h_event, self.files["act"], stash.ssd_off, stash.buf.memview(0, nb)
            stash.futures = [self.waiter.submit(lambda: (ev.synchronize(), wait_all(f.write(off, view))))]
        if not self.cfg.overlap:
            wait_all(stash.futures)

    def _stash_release_after_write(self, stash: TensorStash) -> None:
        wait_all(stash.futures)
        stash.buf.release()
        stash.buf = None

    def _stash_prefetch(self, stash: TensorStash, tag: str) -> None:
        nb = align_up(stash.nbytes)
        stash.buf = self.pool.alloc(nb, tag)
        stash.futures = self.files["act"].read(stash.ssd_off, stash.buf.memview(0, nb))
        self.counted["activation_ssd_read"] += nb

    def _stash_block(self, x: torch.Tensor, store: dict[int, Any], plan: BlockPlan) -> dict[str, TensorStash]:
        """Copy the block input (and the cached op outputs) into host buffers; SSD tiers then write them.
        Op outputs may be tuples holding undefined tensors (None) and integers: those are kept as values."""
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
                    if isinstance(t, torch.Tensor):
                        cs.plan((k, j), t)
                        tensors[(k, j)] = t
                    else:
                        cs.consts[(k, j)] = t
            parts["cache"] = (cs, tensors, plan.cache_tier)
        result = {}
        for key, (stash, tensors, tier) in parts.items():
            stash.buf = self.pool.alloc(align_up(max(stash.nbytes, 1)), f"act_{tier}")
            if tier == "host":
                self.counted["activation_host"] += stash.nbytes
            if self.cuda:
                self.d2h.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.d2h):
                    stash.fill(tensors, stream=self.d2h)
                    stash.d2h_event = torch.cuda.Event()
                    stash.d2h_event.record(self.d2h)
            else:
                stash.fill(tensors)
            if tier == "ssd":
                self._stash_write(stash)
            result[key] = stash
        return result

    def _stash_to_device(self, stash: TensorStash, key) -> torch.Tensor | Any:
        if key in stash.consts:
            return stash.consts[key]
        t = stash.get(key)
        dev = stash.devices.get(key, self.device)
        if not self.cuda or dev.type != "cuda":
            return t.to(dev)
        out, ev = self._tensor_to_device(t, after=stash.d2h_event)
        stash.h2d_events = getattr(stash, "h2d_events", []) + [ev]
        return out

    def _stash_op(self, stash: TensorStash, k: int):
        n, is_tuple = stash.arity[k]
        vals = tuple(self._stash_to_device(stash, (k, j)) for j in range(n))
        return vals if is_tuple else vals[0]

    def _stash_release(self, stash: TensorStash) -> None:
        if stash.buf is None:
            return
        events = getattr(stash, "h2d_events", [])
        if self.cuda and events:
            self._release_after(events[-1], stash.buf)  # copy-stream events complete in order
        else:
            stash.buf.release()
        stash.buf = None

    # ------------------------------------------------------------------ optimizer
    def _update_chunks(self, jobs: list[_Job], step: int, lr: float, sums: dict, log: list, *, src: int,
                       pipelined: bool = True, unit_done=None) -> None:
        """Read slot ``src``, AdamW (grads scaled by the job's ``coef``), write slot 1-src, chunk by chunk over
        every job in order. Pipelined: the next chunk (of this unit or the next) is read while this one
        updates, and writes trail by one chunk (delayed write-back); otherwise each transfer is waited for."""
        t0 = time.perf_counter()
        dst = 1 - src
        items = [(job, ci, a, b) for job in jobs for ci, (a, b) in enumerate(self._chunks(job.unit))]
        if not items:
            return
        last_chunk = {id(job): len(self._chunks(job.unit)) - 1 for job in jobs}
        unit_sums = {job.unit.name: {k: [] for k in ("p32", "m", "v")} for job in jobs}
        cmax = max(b - a for _, _, a, b in items)

        def start_read(job: _Job, a: int, b: int):
            kinds = ["p32", "m", "v"] + (["grad"] if job.grad is None else [])
            bufs = {k: self.pool.alloc(align_up(4 * cmax), f"optimizer:{k}") for k in kinds}
            futs = []
            for k in kinds:
                f = self.files["grad" if k == "grad" else f"{k}.{src}"]
                futs += f.read(job.unit.file_off32 + 4 * a, bufs[k].memview(0, align_up(4 * (b - a))))
            return bufs, futs

        def finish(job: _Job) -> None:
            if job.grad is not None and job.release_grad:
                job.grad.release()
            with self.stats_lock:
                log.append((job.unit, job.grad is None))
                sums[job.unit.name] = unit_sums[job.unit.name]
            self._mark("optimizer", job.unit.name, t_unit.pop(id(job)))
            if unit_done is not None:
                unit_done(job.unit)

        def drain(keep: int) -> None:
            while len(pending_writes) > keep:
                fs, held, job, is_last = pending_writes.pop(0)
                wait_all(fs)
                for h in held:
                    h.release()
                if is_last:
                    finish(job)

        t_unit: dict[int, float] = {}
        pending_writes: list[tuple[list[Future], list[HostBuffer], _Job, bool]] = []
        nxt = start_read(items[0][0], items[0][2], items[0][3])
        for idx, (job, ci, a, b) in enumerate(items):
            u = job.unit
            t_unit.setdefault(id(job), time.perf_counter())
            bufs, futs = nxt
            wait_all(futs)
            if pipelined and idx + 1 < len(items):
                nxt = start_read(items[idx + 1][0], items[idx + 1][2], items[idx + 1][3])
            n = b - a
            p, m, v = (bufs[k].view(torch.float32, n) for k in ("p32", "m", "v"))
            if job.grad is not None:
                if job.grad.ready_event is not None:  # CUDA: the gradient's GPU -> host copy
                    job.grad.ready_event.synchronize()
                g = job.grad.view(torch.float32, u.numel)[a:b]
            else:
                g = bufs["grad"].view(torch.float32, n)
            if job.coef is not None:
                g = g * job.coef
            for wd_on in (True, False):
                segs = [(i, lo, hi) for i, lo, hi in u.segments(a, b) if u.decays[i] == wd_on]
                adamw_update([p[lo - a : hi - a] for _, lo, hi in segs], [g[lo - a : hi - a] for _, lo, hi in segs],
                             [m[lo - a : hi - a] for _, lo, hi in segs], [v[lo - a : hi - a] for _, lo, hi in segs],
                             step=step, lr=lr, cfg=self.ocfg, wd=self.ocfg.weight_decay if wd_on else 0.0)
            wfuts: list[Future] = []
            for k in ("p32", "m", "v"):
                unit_sums[u.name][k].append(self._digest(bufs[k].memview(0, 4 * n)))
                wfuts += self.files[f"{k}.{dst}"].write(u.file_off32 + 4 * a, bufs[k].memview(0, align_up(4 * n)))
            held = list(bufs.values())
            if self.bf16:
                b16 = self.pool.alloc(align_up(2 * cmax), "optimizer:w16")
                b16.view(torch.bfloat16, n).copy_(p)
                wfuts += self.files[f"w16.{dst}"].write(u.file_off16 + 2 * a, b16.memview(0, align_up(2 * n)))
                held.append(b16)
            pending_writes.append((wfuts, held, job, ci == last_chunk[id(job)]))
            _crash_point(f"opt_{u.name}_chunk{ci}", step)
            drain(1 if pipelined else 0)  # delayed write-back: one chunk's writes trail the current update
            if not pipelined and idx + 1 < len(items):
                nxt = start_read(items[idx + 1][0], items[idx + 1][2], items[idx + 1][3])
        drain(0)
        with self.stats_lock:
            self.busy["optimizer"] += time.perf_counter() - t0

    def _start_pending(self, pend: _Pending, log: list) -> None:
        """Submit a deferred update to the optimizer worker (units in forward order, one future each)."""
        pend.unit_done = {job.unit.name: Future() for job in pend.jobs}

        def done(u: Unit) -> None:
            pend.unit_done[u.name].set_result(None)

        def run() -> None:
            try:
                self._update_chunks(pend.jobs, pend.step, pend.lr, pend.sums, log, src=self.slot, unit_done=done)
            except BaseException as e:
                for f in pend.unit_done.values():
                    if not f.done():
                        f.set_exception(e)
                raise

        pend.future = self.worker.submit(run)

    def _finish_pending(self) -> None:
        pend, self._pending = self._pending, None
        pend.future.result()
        self._commit_step(pend.step, pend.sums, pend.rng, pend.extra)

    def _grad_norms(self, u: Unit, grad_buf: HostBuffer, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per-parameter gradient norms, as ``clip_grad_norm_`` forms them: on the device holding the grads."""
        if self.cuda:
            return [torch.linalg.vector_norm(params[n].grad.float()) if params[n].grad is not None
                    else torch.zeros((), device=self.device) for n in u.names]
        flat = grad_buf.view(torch.float32, u.numel)
        return [torch.linalg.vector_norm(flat[o : o + s.numel()]) for o, s in zip(u.offsets, u.shapes)]

    def _collect_grads(self, u: Unit, params: dict[str, torch.Tensor]) -> HostBuffer:
        """The unit's gradients as one fp32 host vector (on CUDA: copied on the D2H stream; the buffer's
        ``ready_event`` marks the copy's end). ZeRO-Infinity also keeps them, in the model dtype, in its flat
        host gradient buffer."""
        buf = self.pool.alloc(align_up(4 * u.numel), f"grads:{u.name}")
        flat = buf.view(torch.float32, u.numel)
        z3 = None
        if self.zero3:
            if self._zero3_grads is None:  # DeepSpeed allocates it once, for every parameter
                self._zero3_grads = self.pool.alloc(align_up(self.dtype.itemsize * self.n_params), "grads:zero3_buffer")
            z3 = self._zero3_grads.view(self.dtype, self.n_params)[self._unit_offset(u):][: u.numel]
        ctx = contextlib.nullcontext()
        if self.cuda:
            self.d2h.wait_stream(torch.cuda.current_stream(self.device))
            ctx = torch.cuda.stream(self.d2h)
        with ctx:
            for n, off, shp in zip(u.names, u.offsets, u.shapes):
                gr = params[n].grad
                dst = flat[off : off + shp.numel()]
                if gr is None:
                    dst.zero_()
                    if z3 is not None:
                        z3[off : off + shp.numel()].zero_()
                    continue
                dst.copy_(gr.reshape(-1), non_blocking=self.cuda)
                if z3 is not None:
                    z3[off : off + shp.numel()].copy_(gr.reshape(-1), non_blocking=self.cuda)
                if self.cuda:
                    gr.record_stream(self.d2h)
            if self.cuda:
                buf.ready_event = torch.cuda.Event()
                buf.ready_event.record(self.d2h)
        return buf

    def _unit_offset(self, u: Unit) -> int:
        """Element offset of ``u`` in the concatenation of all units (ZeRO-3's flat gradient buffer)."""
        return sum(x.numel for x in self.units[: u.index])

    def _write_grads(self, u: Unit, grad_buf: HostBuffer) -> list[Future]:
        """Swap the fp32 gradient out to the SSD grad file (after its D2H copy on CUDA)."""
        f, off, view = self.files["grad"], u.file_off32, grad_buf.memview(0, align_up(4 * u.numel))
        if grad_buf.ready_event is None:
            return f.write(off, view)
        ev = grad_buf.ready_event
        return [self.waiter.submit(lambda: (ev.synchronize(), wait_all(f.write(off, view))))]

    def _dispatch(self, u: Unit, grad_buf: HostBuffer, step: int, lr: float, speculate: bool,
                  kept: dict[str, HostBuffer], deferred: list[Unit]) -> list[Future]:
        """Hand a unit whose gradient is final to the optimizer: now (fuyou's speculation) or later."""
        writes: list[Future] = []
        if self.grads_to_ssd:  # the gradient waits on SSD; its host buffer goes back once written
            writes = self._write_grads(u, grad_buf)
            self._grad_writes += writes
        if speculate:
            # backpressure: a slow optimizer must not let gradient buffers pile up in host memory
            t = time.perf_counter()
            while len(self._inflight) >= max(1, self.cfg.max_inflight_updates):
                self._inflight.pop(0).result()
            self._waits["optimizer"] += time.perf_counter() - t
            keep = self.stores_grads and not self.grads_to_ssd
            if keep:
                kept[u.name] = grad_buf
            job = _Job(u, grad_buf, None, release_grad=False)
            fut = self.worker.submit(self._update_chunks, [job], step, lr, self._sums, self._log, src=self.slot)
            if not keep:
                fut.add_done_callback(lambda _f, b=grad_buf, w=writes: _release_when_done(w, b))
            self._inflight.append(fut)
            return [fut]
        deferred.append(u)
        if self.grads_to_ssd:
            _release_when_done(writes, grad_buf)
        else:
            kept[u.name] = grad_buf
        return []

    def _drop(self, kept: dict[str, HostBuffer]) -> None:
        for b in kept.values():
            b.release()
        kept.clear()

    # ------------------------------------------------------------------ one training step
    def train_step(self, tokens: torch.Tensor, targets: torch.Tensor, extra: dict | None = None) -> dict[str, float]:
        """Forward (running a deferred update of the previous step alongside), backward with the overlapped
        optimizer, validation of the clip, commit (or deferral of the exact update). Returns metrics."""
        pend = self._pending
        step = (pend.step if pend else self.step) + 1
        lr = self.ocfg.lr_at(step)
        max_norm = self.ocfg.clip_grad_norm
        self._t0 = t_start = time.perf_counter()
        self.trace = []
        io0 = self.io.stats.snapshot()
        self.counted = {"activation_ssd_read": 0, "activation_ssd_write": 0, "activation_host": 0}
        self._log: list[tuple[Unit, bool]] = []   # optimizer passes run in this step's window
        self._sums: dict = {}
        self._inflight: list[Future] = []
        self._grad_writes: list[Future] = []
        self._waits = {"weights": 0.0, "activations": 0.0, "optimizer": 0.0}
        self._act_cursor = 0
        self.pool.peak_bytes = self.pool.used_bytes
        self.busy = {"compute": 0.0, "optimizer": 0.0}
        clock = _Clock(self.device)
        deferred_in = len(pend.jobs) if pend else 0
        if pend is not None:
            self._start_pending(pend, self._log)  # the previous step's exact update runs during this forward
        w_slot = 1 - self.slot if pend else self.slot
        after = pend.unit_done if pend else {}
        tokens, targets = tokens.to(self.device), targets.to(self.device)
        L = self.mcfg.layers
        ends_u, blocks_u = self.units[0], self.units[1:]
        depth = max(0, self.cfg.prefetch_depth) if self.cfg.overlap else 0
        loads: dict[int, _Load] = {}

        def prefetch(j: int) -> None:
            if 0 <= j < L and j not in loads:
                loads[j] = self._start_load(blocks_u[j], self.slot if self._pending is None else w_slot,
                                            after.get(blocks_u[j].name) if self._pending is not None else None)

        def wait_load(load: _Load) -> None:
            t = time.perf_counter()
            load.wait()
            self._waits["weights"] += time.perf_counter() - t
            self._mark("wait", f"weights {load.unit.name}", t)

        def h2d_window(js) -> None:  # CUDA: move loaded blocks of the window to the GPU ahead of use
            if self.cuda:
                self._reap()
                on_gpu = sum(1 for ld in loads.values() if ld.dev is not None)
                for j in js:
                    ld = loads.get(j)
                    if ld is not None and ld.dev is None and ld.read_done() and on_gpu < self.gpu_window:
                        self._h2d(ld)
                        on_gpu += 1

        # ---- forward: block i computes while blocks i+1..i+depth load
        ends_load = self._start_load(ends_u, w_slot, after.get(ends_u.name))
        for j in range(depth):
            prefetch(j)
        wait_load(ends_load)
        ends_p = self._params(ends_load, grad=True)
        t = time.perf_counter()
        with clock():
            x0 = self._embed(ends_p, tokens)
        self._mark("compute", "embed", t)
        x = x0.detach()
        stashes: list[dict[str, TensorStash]] = []
        writing: list[TensorStash] = []
        for i in range(L):
            prefetch(i)
            for j in range(i + 1, i + 1 + depth):
                prefetch(j)
            load = loads[i]
            wait_load(load)
            plan = self.plans[i]
            params = self._params(load, grad=False)
            h2d_window(range(i + 1, i + 1 + depth))
            t = time.perf_counter()
            store: dict[int, Any] = {}
            with clock(), torch.no_grad(), _op_cache(plan.cached_ops(), store, replay=False):
                y = functional_call(self.block_mod, params, (x,))
            self._mark("compute", f"fwd block{i}", t)
            stash = self._stash_block(x, store, plan)
            stashes.append(stash)
            writing += [s for s in stash.values() if s.ssd_off is not None]
            while len(writing) > 2:  # bound the staging held by SSD writes in flight
                t = time.perf_counter()
                self._stash_release_after_write(writing.pop(0))
                self._waits["activations"] += time.perf_counter() - t
            del params
            if i < L - 1:
                self._drop_load(load)
                load.dev = None
                del loads[i]
            elif self.cuda:  # the last block stays for backward, which starts with it: its GPU copy suffices
                self._drop_load(load)
            x = y
            _crash_point(f"fwd_block{i}", step)
        for s in writing:
            self._stash_release_after_write(s)
        if self._pending is not None:  # every unit has its updated weights: the previous step commits
            self._finish_pending()
        t_fwd_end = time.perf_counter()

        # ---- head and loss
        t = time.perf_counter()
        with clock():
            h = x.detach().requires_grad_()
            loss = _ends_loss(self.ends_mod, ends_p, h, targets)
            loss.backward()
        self._mark("compute", "head", t)
        g = h.grad

        # ---- backward: recompute block i (replaying cached ops) while block i-1's weights and
        # activations load and the optimizer updates block i+1
        norms: dict[str, list[torch.Tensor]] = {}
        kept: dict[str, HostBuffer] = {}
        futures: list[Future] = []
        deferred: list[Unit] = []
        running_sq = torch.zeros((), dtype=torch.float32, device=self.device)
        # fuyou speculates unless the last step's clip bound (then it most likely binds again)
        speculate = not self.zero3 and self.cfg.overlap and not (max_norm and self._last_clipped)
        for i in reversed(range(L)):
            prefetch(i)
            for j in range(i - 1, i - 1 - depth, -1):
                prefetch(j)
                if j >= 0:
                    for s in stashes[j].values():
                        if s.ssd_off is not None and s.buf is None:
                            self._stash_prefetch(s, "act_prefetch")
            st = stashes[i]
            t = time.perf_counter()
            for s in st.values():
                if s.ssd_off is not None:
                    if s.buf is None:
                        self._stash_prefetch(s, "act_prefetch")
                    wait_all(s.futures)
            self._waits["activations"] += time.perf_counter() - t
            load = loads.pop(i)
            wait_load(load)
            u = blocks_u[i]
            params = self._params(load, grad=True)
            h2d_window(range(i - 1, i - 1 - depth, -1))
            t = time.perf_counter()
            with clock():
                x_in = self._stash_to_device(st["ckpt"], "x").detach().requires_grad_()
                store = {k: (nm, self._stash_op(st["cache"], k)) for k, nm in st["cache"].names.items()} \
                    if "cache" in st else {}
                with _op_cache(self.plans[i].cached_ops(), store, replay=True):
                    y = functional_call(self.block_mod, params, (x_in,))
                y.backward(g)
                g = x_in.grad
                del y, x_in, store
            self._mark("compute", f"bwd block{i}", t)
            grad_buf = self._collect_grads(u, params)
            norms[u.name] = self._grad_norms(u, grad_buf, params)
            del params
            self._drop_load(load)
            load.dev = None
            for s in st.values():
                self._stash_release(s)
            running_sq = running_sq + torch.stack(norms[u.name]).pow(2).sum()
            if max_norm and speculate and float(running_sq.sqrt()) + 1e-6 > max_norm * (1 + 1e-5):
                speculate = False  # clipping is now certain: stop speculating
            futures += self._dispatch(u, grad_buf, step, lr, speculate, kept, deferred)
            _crash_point(f"bwd_block{i}", step)
        t = time.perf_counter()
        with clock():
            x0.backward(g)  # the embedding's gradient completes the ends unit
        self._mark("compute", "embed bwd", t)
        grad_buf = self._collect_grads(ends_u, ends_p)
        norms["ends"] = self._grad_norms(ends_u, grad_buf, ends_p)
        self._drop_load(ends_load)
        del ends_p
        futures += self._dispatch(ends_u, grad_buf, step, lr, speculate, kept, deferred)
        t_bwd_end = time.perf_counter()

        # ---- validate with the exact global norm (torch.nn.utils.clip_grad_norm_'s formula and order)
        total_norm = torch.linalg.vector_norm(torch.stack([n for u in self.units for n in norms[u.name]])).cpu()
        t = time.perf_counter()
        for fu in futures:
            fu.result()
        wait_all(self._grad_writes)
        self._waits["optimizer"] += time.perf_counter() - t
        if not torch.isfinite(total_norm):
            self._drop(kept)
            raise NonFiniteGradientError(f"step {step}: gradient norm is {float(total_norm)}; nothing was committed")
        coef = None
        if max_norm:
            clamped = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
            if float(clamped) < 1.0:
                coef = clamped
        self._last_clipped = coef is not None
        rolled_back = coef is not None and bool(futures)
        late = {u.name for u in deferred}
        redo = self.units if coef is not None else [u for u in self.units if u.name in late]
        jobs = [_Job(u, kept.pop(u.name, None), coef) for u in redo]
        self._drop(kept)
        rng = capture_rng_state()
        deferred_out = 0
        if jobs and not self.zero3 and self.cfg.overlap and self.cfg.clip_overlap == "next_forward":
            self._pending = _Pending(step, lr, jobs, self._sums, rng, extra or {})
            deferred_out = len(jobs)
        else:
            if jobs:  # after backward: ZeRO-Infinity's step(), or fuyou's replay with clip_overlap=after_backward
                self._update_chunks(jobs, step, lr, self._sums, self._log, src=self.slot, pipelined=self.cfg.overlap)
            self._commit_step(step, self._sums, rng, extra or {})
        t_opt_end = time.perf_counter()
        self.rollbacks += int(rolled_back)
        io1 = self.io.stats.snapshot()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._reap()
        return {
            "loss": float(loss.detach()), "grad_norm": float(total_norm), "lr": lr,
            "clip_coef": float(coef) if coef is not None else 1.0, "rolled_back": int(rolled_back),
            "deferred_units": deferred_out, "deferred_units_run": deferred_in, "committed": int(deferred_out == 0),
            "step_s": time.perf_counter() - t_start, "forward_s": t_fwd_end - t_start,
            "backward_end_s": t_bwd_end - t_start, "optimizer_tail_s": t_opt_end - t_bwd_end,
            "compute_s": clock.seconds(), "optimizer_busy_s": self.busy["optimizer"],
            "wait_weights_s": self._waits["weights"], "wait_activations_s": self._waits["activations"],
            "wait_optimizer_s": self._waits["optimizer"],
            "ssd_read_bytes": io1["read_bytes"] - io0["read_bytes"],
            "ssd_write_bytes": io1["write_bytes"] - io0["write_bytes"],
            "activation_ssd_bytes": self.counted["activation_ssd_write"],
            "activation_host_bytes": self.counted["activation_host"],
            "host_pool_peak_bytes": self.pool.peak_bytes, "tokens": int(tokens.numel()),
            **{f"expected_{k}": v for k, v in self.expected_bytes(self._log).items()},
        }

    def expected_bytes(self, updates: list[tuple[Unit, bool]] | None = None) -> dict[str, int]:
        """SSD bytes one step moves, counted from the layout and the plan (requests are 4 KiB padded).

        ``updates`` lists the optimizer passes run in the step's window (unit, gradient read from SSD): a
        deferred update counts in the step during whose forward it runs. By default one pass per unit.
        """
        if updates is None:
            updates = [(u, self.grads_to_ssd) for u in self.units]
        w = 2 if self.bf16 else 4
        blocks = self.units[1:]
        read = sum(align_up(w * u.numel) for u in self.units) + sum(align_up(w * u.numel) for u in blocks[:-1])
        write = 0
        for u, grad_from_ssd in updates:
            for a, b in self._chunks(u):
                r = align_up(4 * (b - a))
                read += r * (4 if grad_from_ssd else 3)
                write += 3 * r + (align_up(2 * (b - a)) if self.bf16 else 0)
        if self.grads_to_ssd:
            write += sum(align_up(4 * u.numel) for u in self.units)
        act = host = 0
        for p in self.plans:
            sb = stash_bytes(self.mcfg, p, self.batch, self.seq, self.dtype.itemsize, self.attn)
            act += align_up(sb["ckpt"]) if p.ckpt_tier == "ssd" else 0
            act += align_up(sb["cache"]) if p.cache_tier == "ssd" and p.cached else 0
            host += sb["ckpt"] if p.ckpt_tier == "host" else 0
            host += sb["cache"] if p.cache_tier == "host" and p.cached else 0
        return {"ssd_read_bytes": read + act, "ssd_write_bytes": write + act, "activation_ssd_bytes": act,
                "activation_host_bytes": host}

    def _embed(self, ends_p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.embedding(tokens, ends_p["embed.weight"])


def _ends_loss(ends: Ends, p: dict[str, torch.Tensor], x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    w = p["embed.weight"] if ends.cfg.tie_embeddings else p["lm_head.weight"]
    y = functional_call(ends.norm, {"weight": p["norm.weight"]}, (x,))
    logits = torch.nn.functional.linear(y, w)
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def read_unit_params(engine: OffloadEngine, which: str = "p32") -> dict[str, torch.Tensor]:
    """The committed fp32 master weights (or m / v) as a ``GPT`` state dict (for tests and export)."""
    engine.flush()
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
           "read_unit_params", "adamw_update", "probe_attention", "OpCache", "ALIGN"]
