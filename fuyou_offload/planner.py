"""Activation plan and the cost model that chooses it.

Every block's input is checkpointed (to host or SSD). Inside a block, the outputs of selected heavy
ops (matmul groups, the attention core) can be cached during forward so that the backward recompute
replays them instead of recomputing; everything else is recomputed. Caching an op costs bytes moved
(host memcpy, or SSD write + read) and saves its FLOPs: the planner ranks op groups by offloading
benefit OB = FLOPs saved / bytes stored, fills host memory first, spills to SSD, and scans the number
of cached groups for the smallest predicted step time.

The step time is modelled per schedule, each phase the maximum of the channels that run concurrently
in it (compute, SSD, and on CUDA the two PCIe directions) or their sum where nothing overlaps:

    overlap   fuyou, clip off or not binding: the optimizer runs during backward
              T = max(C_f, IO_f) + max(C_b, IO_b + OPT - OPT_unit) + OPT_unit
    deferred  fuyou, clip binding, offload.clip_overlap=next_forward: the exact update waits for the
              global norm, then runs during the next forward
              T = OPT_ends + max(C_f, IO_f + OPT_io, ADAM) + max(C_b, IO_b)
    serial    fuyou, clip binding, offload.clip_overlap=after_backward; and ``zero3`` (the ZeRO-Infinity
              baseline: the same, plus fp32 gradients written during backward and read back by step())
              T = max(C_f, IO_f) + max(C_b, IO_b) + OPT
    none      nothing overlapped (the diagnostic run that measures the compute floor)
              T = C_f + IO_f + C_b + IO_b + OPT_io + ADAM

with C the FLOPs over the measured compute rate (plus host copies on the CPU), IO the weight and
activation traffic over the measured O_DIRECT bandwidths, OPT = max(OPT_io, ADAM) the pipelined
optimizer (P32, m, v and gradients in, P32, m, v and the working copy out). No term is fitted to the
measured step time: the prediction error is the model's error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .memory import HostBudgetError
from .model import GPTConfig

# Ops recorded inside a block, in execution order (see model.Block): q, k, v, attention core, o,
# gate, up, down. Groups are what the plan caches.
OP_GROUPS: dict[str, tuple[int, ...]] = {
    "qkv": (0, 1, 2),
    "attn_core": (3,),
    "attn_out": (4,),
    "mlp_up": (5, 6),
    "mlp_down": (7,),
}

SCHEDULES = ("overlap", "deferred", "serial", "zero3", "none")


@dataclass(frozen=True)
class AttentionLayout:
    """What the attention core's SDPA op returns on this device and dtype (probed by the engine), so that
    the bytes of caching it are counted analytically for every backend."""

    fused: bool = True
    """A fused SDPA kernel runs (flash, memory-efficient, cuDNN, CPU flash): its outputs can be cached. False
    for the math backend, which decomposes into bmm/softmax: the core is then always recomputed."""
    lse_multiple: int = 1
    """The log-sum-exp (batch x heads x seq) pads seq to this multiple (32 for memory-efficient
    attention); 0: no log-sum-exp."""
    lse_elem: int = 4
    """Bytes per log-sum-exp element (fp32 for every backend seen so far)."""
    extra_bytes: tuple[int, ...] = ()
    """Other tensor outputs, of fixed size (RNG seed and offset, empty debug masks)."""


CPU_FLASH = AttentionLayout()


@dataclass(frozen=True)
class BlockPlan:
    ckpt_tier: str = "host"            # where the block input goes: host | ssd
    cached: tuple[str, ...] = ()      # op groups whose outputs are kept instead of recomputed
    cache_tier: str = "host"          # host | ssd

    def cached_ops(self) -> frozenset[int]:
        return frozenset(i for g in self.cached for i in OP_GROUPS[g])


@dataclass
class Profile:
    """Measured floors of this machine (``profiling.measure_floors``)."""

    flops_per_s: float = 50e9
    ssd_read_bps: float = 1e9
    ssd_write_bps: float = 1e9
    memcpy_bps: float = 10e9
    adam_params_per_s: float = 3e8
    h2d_bps: float = math.inf
    """Pinned host -> GPU bandwidth (CUDA only; inf on the CPU: no PCIe)."""
    d2h_bps: float = math.inf
    """GPU -> pinned host bandwidth."""


@dataclass
class StepPrediction:
    total_s: float
    fwd_s: float
    bwd_s: float
    tail_s: float
    terms: dict = field(default_factory=dict)


def op_output_bytes(cfg: GPTConfig, batch: int, seq: int, elem: int,
                    attn: AttentionLayout = CPU_FLASH) -> dict[int, list[int]]:
    """Bytes of each tensor output of the recorded ops (indices as in ``OP_GROUPS``)."""
    t, h, kv, i = batch * seq, cfg.hidden, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    core = [t * h * elem]
    if attn.lse_multiple:
        core.append(batch * cfg.heads * (-(-seq // attn.lse_multiple) * attn.lse_multiple) * attn.lse_elem)
    core += list(attn.extra_bytes)
    return {0: [t * h * elem], 1: [t * kv * elem], 2: [t * kv * elem], 3: core,
            4: [t * h * elem], 5: [t * i * elem], 6: [t * i * elem], 7: [t * h * elem]}


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def group_bytes(cfg: GPTConfig, group: str, batch: int, seq: int, elem: int, attn: AttentionLayout = CPU_FLASH) -> int:
    out = op_output_bytes(cfg, batch, seq, elem, attn)
    return sum(_align(b, 64) for i in OP_GROUPS[group] for b in out[i])


def stash_bytes(cfg: GPTConfig, plan: BlockPlan, batch: int, seq: int, elem: int,
                attn: AttentionLayout = CPU_FLASH) -> dict[str, int]:
    """Host bytes of one block's checkpoint and cache stashes (as the engine lays them out)."""
    ck = _align(batch * seq * cfg.hidden * elem, 64)
    cache = sum(group_bytes(cfg, g, batch, seq, elem, attn) for g in plan.cached)
    return {"ckpt": ck, "cache": cache}


def supported(plan: BlockPlan, attn: AttentionLayout) -> BlockPlan:
    """The plan without the attention core when no fused kernel runs (the math backend): nothing to cache."""
    if attn.fused or "attn_core" not in plan.cached:
        return plan
    return BlockPlan(plan.ckpt_tier, tuple(g for g in plan.cached if g != "attn_core"), plan.cache_tier)


def ranked_groups(cfg: GPTConfig, batch: int, seq: int, elem: int,
                  attn: AttentionLayout = CPU_FLASH) -> list[tuple[str, float]]:
    """Op groups by offloading benefit (FLOPs saved per byte stored), best first."""
    flops = cfg.block_matmul_flops(batch * seq, seq)
    obs = [(g, flops[g] / group_bytes(cfg, g, batch, seq, elem, attn)) for g in OP_GROUPS
           if attn.fused or g != "attn_core"]
    return sorted(obs, key=lambda kv: -kv[1])


def optimizer_bytes(n: int, compute_elem: int, grads_from_ssd: bool) -> tuple[int, int]:
    """(read, write) SSD bytes of one optimizer pass over ``n`` parameters: P32, m, v (and the fp32
    gradient when it waits on SSD) in; P32, m, v and, in bf16, the working copy out."""
    return (16 if grads_from_ssd else 12) * n, 12 * n + (2 * n if compute_elem == 2 else 0)


def predict_step(cfg: GPTConfig, plans: list[BlockPlan], prof: Profile, *, batch: int, seq: int,
                 compute_elem: int, schedule: str = "overlap", grads_to_ssd: bool = False,
                 attn: AttentionLayout = CPU_FLASH) -> StepPrediction:
    """Predicted step time of ``schedule`` (see the module docstring). ``grads_to_ssd``: fp32 gradients
    are written to SSD during backward and read back by the optimizer (fuyou's replay tier ``ssd``;
    always for ``zero3``, as DeepSpeed's NVMe optimizer swapper does)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
    grads_to_ssd = grads_to_ssd or schedule == "zero3"
    t = batch * seq
    n, nb, ne = cfg.num_params(), cfg.block_params(), cfg.ends_params()
    per_block = cfg.block_matmul_flops(t, seq)
    f_block = sum(per_block.values())
    f_fwd = cfg.layers * f_block + 2.0 * t * cfg.hidden * cfg.vocab_size
    f_bwd = 2 * f_fwd
    f_rec = sum(f_block - sum(per_block[g] for g in supported(p, attn).cached) for p in plans)
    w = compute_elem
    weights_fwd = n * w                          # every unit once
    weights_bwd = (n - ne - nb) * w              # blocks again, but the last one (kept) and the ends
    act_ssd = act_host = 0.0
    for p in plans:
        sb = stash_bytes(cfg, supported(p, attn), batch, seq, compute_elem, attn)
        for part, tier in (("ckpt", p.ckpt_tier), ("cache", p.cache_tier)):
            if tier == "ssd":
                act_ssd += sb[part]
            else:
                act_host += sb[part]
    rd, wr = prof.ssd_read_bps, prof.ssd_write_bps
    opt_r, opt_w = optimizer_bytes(n, compute_elem, grads_to_ssd)
    grad_w = 4 * n if grads_to_ssd else 0
    opt_io = opt_r / rd + opt_w / wr
    adam = n / prof.adam_params_per_s
    opt = max(opt_io, adam)                       # pipelined: chunk j+1 read while j updates
    copies = act_host / prof.memcpy_bps if math.isinf(prof.h2d_bps) else 0.0  # CPU: stash copies are memcpy
    c_fwd = f_fwd / prof.flops_per_s + copies
    c_bwd = (f_bwd + f_rec) / prof.flops_per_s + copies
    io_fwd = weights_fwd / rd + act_ssd / wr
    io_bwd = weights_bwd / rd + act_ssd / rd + grad_w / wr
    acts = act_ssd + act_host
    pcie_fwd = max(weights_fwd / prof.h2d_bps, acts / prof.d2h_bps)
    pcie_bwd = max((weights_bwd + acts) / prof.h2d_bps, 4 * n / prof.d2h_bps)
    unit = opt * max(nb, ne) / n
    if schedule == "overlap":
        fwd, bwd, tail = max(c_fwd, io_fwd, pcie_fwd), max(c_bwd, io_bwd + opt - unit, pcie_bwd), unit
    elif schedule == "deferred":
        fwd = opt * ne / n + max(c_fwd, io_fwd + opt_io, adam, pcie_fwd)
        bwd, tail = max(c_bwd, io_bwd, pcie_bwd), 0.0
    elif schedule in ("serial", "zero3"):
        fwd, bwd, tail = max(c_fwd, io_fwd, pcie_fwd), max(c_bwd, io_bwd, pcie_bwd), opt
    else:  # none
        fwd, bwd, tail = c_fwd + io_fwd + pcie_fwd, c_bwd + io_bwd + pcie_bwd, opt_io + adam
    terms = {"compute_fwd": c_fwd, "compute_bwd": c_bwd, "io_fwd": io_fwd, "io_bwd": io_bwd, "optimizer_io": opt_io,
             "adam": adam, "pcie_fwd": pcie_fwd, "pcie_bwd": pcie_bwd, "recompute_flops": f_rec,
             "activation_ssd_bytes": act_ssd, "activation_host_bytes": act_host}
    return StepPrediction(fwd + bwd + tail, fwd, bwd, tail, terms)


def ssd_staging_blocks(depth: int) -> int:
    """Blocks' worth of SSD activations the engine stages in host memory at once: forward keeps up to
    two stashes writing plus the current block's (three blocks when one part per block goes to SSD);
    backward holds the current block's plus ``depth`` prefetched ones."""
    return max(depth + 1, 3)


def _greedy_tiers(cfg: GPTConfig, ck: int, per_block: int, groups: list[str], free: int,
                  ckpt_tier: str) -> tuple[list[BlockPlan], int]:
    plans, used = [], 0
    for _ in range(cfg.layers):
        c_tier = ckpt_tier
        if c_tier == "host" and used + ck > free:
            c_tier = "ssd"
        used += ck if c_tier == "host" else 0
        tier = "host"
        if used + per_block > free:
            tier = "ssd"
        used += per_block if tier == "host" else 0
        plans.append(BlockPlan(ckpt_tier=c_tier, cached=tuple(groups), cache_tier=tier))
    return plans, used


def plan_for_fraction(cfg: GPTConfig, k: int, *, batch: int, seq: int, compute_elem: int,
                      host_bytes_free: int, ssd_window: int, ckpt_tier: str = "host",
                      attn: AttentionLayout = CPU_FLASH) -> list[BlockPlan]:
    """The plan that caches the ``k`` best op groups (by OB) in every block, host first, then SSD.

    SSD activations pass through host staging buffers (written from them in forward, prefetched into
    them in backward): ``ssd_window`` blocks' worth (``ssd_staging_blocks``) is reserved out of
    ``host_bytes_free`` whenever any part goes to SSD, so host-tier stashes plus staging fit together.
    Raises ``HostBudgetError`` when not even the all-SSD plan's staging fits."""
    groups = [g for g, _ in ranked_groups(cfg, batch, seq, compute_elem, attn)][:k]
    ck = batch * seq * cfg.hidden * compute_elem
    per_block = sum(group_bytes(cfg, g, batch, seq, compute_elem, attn) for g in groups)
    free = host_bytes_free
    for _ in range(4):  # the reserve takes one of three values (ckpt, cache, both): this settles
        plans, used = _greedy_tiers(cfg, ck, per_block, groups, free, ckpt_tier)
        part = max([(ck if p.ckpt_tier == "ssd" else 0) + (per_block if p.cache_tier == "ssd" else 0)
                    for p in plans] + [0])
        reserve = ssd_window * part
        if used + reserve <= host_bytes_free:
            return plans
        if reserve > host_bytes_free:
            break
        free = host_bytes_free - reserve
    raise HostBudgetError(
        f"activations need {ssd_window} x {(ck + per_block) / 2**20:.1f} MiB of host staging for the SSD tier "
        f"(one block's input{' and cached ops' if groups else ''} at {batch}x{seq} tokens) but only "
        f"{host_bytes_free / 2**20:.1f} MiB of the pool are left for activations. Raise memory.host_budget or "
        "lower the tokens per step.")


def fixed_host_bytes(cfg: GPTConfig, *, compute_elem: int, depth: int, chunk_elems: int, grads_all_on_host: bool,
                     inflight: int = 2, grad_elem: int = 4) -> int:
    """Host bytes the engine needs besides activations: the weight window (ends + current block +
    ``depth`` prefetched + the block kept for backward), gradients (the one being collected + those
    queued for the optimizer, or all of them, ``grad_elem`` bytes each, when they wait for a clip replay
    in host memory or in ZeRO-3's gradient buffer) and the optimizer's double-buffered chunks (P32, m, v,
    grad, bf16 copy)."""
    nb, ne = cfg.block_params(), cfg.ends_params()
    weights = compute_elem * (ne + (depth + 2) * nb)
    grads = 4 * (ne + (inflight + 1) * nb) + (grad_elem * cfg.num_params() if grads_all_on_host else 0)
    opt = 2 * (4 * 4 + 2) * chunk_elems
    return weights + grads + opt


def size_buffers(cfg: GPTConfig, budget: int, *, compute_elem: int, grads_all_on_host: bool, max_depth: int = 2,
                 max_chunk: int = 1 << 22, share: float = 0.75, grad_elem: int = 4) -> tuple[int, int, int, int]:
    """(prefetch depth, optimizer chunk elements, units queued for the optimizer, fixed bytes): the
    deepest prefetch, then the most queued units, then the largest chunk whose fixed buffers fit in
    ``share`` of the budget (the rest is left to activations). Raises ``HostBudgetError`` when not even
    depth 0, one queued unit and the smallest chunk fit."""
    kw = dict(compute_elem=compute_elem, grads_all_on_host=grads_all_on_host, grad_elem=grad_elem)
    for depth in range(max_depth, -1, -1):
        for inflight in (2, 1):
            chunk = max_chunk
            while chunk >= 2048:
                need = fixed_host_bytes(cfg, depth=depth, chunk_elems=chunk, inflight=inflight, **kw)
                if need <= share * budget:
                    return depth, chunk, inflight, need
                chunk //= 2
    need = fixed_host_bytes(cfg, depth=0, chunk_elems=2048, inflight=1, **kw)
    raise HostBudgetError(f"host budget {budget / 2**20:.1f} MiB is below the {need / share / 2**20:.1f} MiB this model "
                          "needs at prefetch depth 0, one queued unit and the smallest optimizer chunk ("
                          + ("all gradients wait in host memory until the optimizer runs"
                             if grads_all_on_host else "one block's weights and gradients") + ")")


def choose_plan(cfg: GPTConfig, prof: Profile, *, batch: int, seq: int, compute_elem: int,
                host_bytes_free: int, ssd_window: int, schedule: str = "overlap", grads_to_ssd: bool = False,
                attn: AttentionLayout = CPU_FLASH) -> tuple[list[BlockPlan], StepPrediction]:
    """Scan the number of cached op groups and keep the plan with the smallest predicted time (among the
    plans whose SSD staging fits ``host_bytes_free``)."""
    best = None
    for k in range(len(ranked_groups(cfg, batch, seq, compute_elem, attn)) + 1):
        try:
            plans = plan_for_fraction(cfg, k, batch=batch, seq=seq, compute_elem=compute_elem,
                                      host_bytes_free=host_bytes_free, ssd_window=ssd_window, attn=attn)
        except HostBudgetError:
            if k == 0:  # block inputs alone do not fit: nothing caching more will
                raise
            break  # staging grows with k
        pred = predict_step(cfg, plans, prof, batch=batch, seq=seq, compute_elem=compute_elem, schedule=schedule,
                            grads_to_ssd=grads_to_ssd, attn=attn)
        if best is None or pred.total_s < best[1].total_s:
            best = (plans, pred)
    return best


def activation_ssd_fraction(cfg: GPTConfig, plans: list[BlockPlan], *, batch: int, seq: int, compute_elem: int,
                            attn: AttentionLayout = CPU_FLASH) -> float:
    """Share of the plan's activation bytes (checkpoints and cached ops) that go to SSD."""
    ssd = total = 0
    for p in plans:
        sb = stash_bytes(cfg, supported(p, attn), batch, seq, compute_elem, attn)
        ssd += (sb["ckpt"] if p.ckpt_tier == "ssd" else 0) + (sb["cache"] if p.cache_tier == "ssd" else 0)
        total += sb["ckpt"] + sb["cache"]
    return ssd / total if total else 0.0
