"""Activation plan and the cost model that chooses it.

Every block's input is checkpointed (to host or SSD). Inside a block, the outputs of selected heavy
ops (matmul groups, the attention core) can be cached during forward so that the backward recompute
replays them instead of recomputing; everything else is recomputed. Caching an op costs bytes moved
(host memcpy, or SSD write + read) and saves its FLOPs: the planner ranks op groups by offloading
benefit OB = FLOPs saved / bytes stored, fills host memory first, spills to SSD, and scans the number
of cached groups for the smallest predicted step time

    T = T_fwd + T_bwd + T_tail
    T_fwd = max(F_fwd / R, weight reads, activation writes)
    T_bwd = max((F_bwd + F_recompute(x)) / R, weight reads + activation reads, optimizer traffic)
    T_tail = the optimizer work of the last unit updated (exposed before the next forward)

with R the measured compute rate and the traffic terms divided by measured SSD bandwidths. The
recompute term falls and the traffic terms rise with x, so T is convex in x and a scan finds its argmin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class BlockPlan:
    ckpt_tier: str = "host"            # where the block input goes: host | ssd
    cached: tuple[str, ...] = ()      # op groups whose outputs are kept instead of recomputed
    cache_tier: str = "host"          # host | ssd

    def cached_ops(self) -> frozenset[int]:
        return frozenset(i for g in self.cached for i in OP_GROUPS[g])


@dataclass
class Profile:
    """Measured floors of this machine (see bench.measure_floors)."""

    flops_per_s: float = 50e9
    ssd_read_bps: float = 1e9
    ssd_write_bps: float = 1e9
    memcpy_bps: float = 10e9
    adam_params_per_s: float = 3e8
    overhead_s: float = 0.0
    """Per-step time the model does not explain (Python, thread hand-offs, small requests), calibrated
    by the profiling step; a constant, so it never moves the argmin."""


@dataclass
class StepPrediction:
    total_s: float
    fwd_s: float
    bwd_s: float
    tail_s: float
    terms: dict = field(default_factory=dict)


def op_output_bytes(cfg: GPTConfig, batch: int, seq: int, elem: int) -> dict[int, list[int]]:
    """Bytes of each tensor output of the recorded ops (indices as in ``OP_GROUPS``)."""
    t, h, kv, i = batch * seq, cfg.hidden, cfg.kv_heads * cfg.head_dim, cfg.intermediate
    return {0: [t * h * elem], 1: [t * kv * elem], 2: [t * kv * elem],
            3: [t * h * elem, batch * cfg.heads * seq * 4],  # attention output + fp32 logsumexp
            4: [t * h * elem], 5: [t * i * elem], 6: [t * i * elem], 7: [t * h * elem]}


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def group_bytes(cfg: GPTConfig, group: str, batch: int, seq: int, elem: int) -> int:
    out = op_output_bytes(cfg, batch, seq, elem)
    return sum(_align(b, 64) for i in OP_GROUPS[group] for b in out[i])


def stash_bytes(cfg: GPTConfig, plan: BlockPlan, batch: int, seq: int, elem: int) -> dict[str, int]:
    """Host bytes of one block's checkpoint and cache stashes (as the engine lays them out)."""
    ck = _align(batch * seq * cfg.hidden * elem, 64)
    cache = sum(group_bytes(cfg, g, batch, seq, elem) for g in plan.cached)
    return {"ckpt": ck, "cache": cache}


def ranked_groups(cfg: GPTConfig, batch: int, seq: int, elem: int) -> list[tuple[str, float]]:
    """Op groups by offloading benefit (FLOPs saved per byte stored), best first."""
    flops = cfg.block_matmul_flops(batch * seq, seq)
    obs = [(g, flops[g] / group_bytes(cfg, g, batch, seq, elem)) for g in OP_GROUPS]
    return sorted(obs, key=lambda kv: -kv[1])


def predict_step(cfg: GPTConfig, plans: list[BlockPlan], prof: Profile, *, batch: int, seq: int,
                 compute_elem: int, overlap: bool, clip: bool = False, grad_tier: str = "host") -> StepPrediction:
    t = batch * seq
    n, nb = cfg.num_params(), cfg.block_params()
    per_block = cfg.block_matmul_flops(t, seq)
    f_block = sum(per_block.values())
    f_ends = 2.0 * t * cfg.hidden * cfg.vocab_size
    f_fwd = cfg.layers * f_block + f_ends
    f_bwd = 2 * f_fwd
    f_rec = sum(f_block - sum(per_block[g] for g in p.cached) for p in plans)
    w_elem = compute_elem
    w_bytes = n * w_elem
    act_w = act_r = 0.0
    host_copy = 0.0
    for p in plans:
        ck = t * cfg.hidden * compute_elem
        cache = sum(group_bytes(cfg, g, batch, seq, compute_elem) for g in p.cached)
        if p.ckpt_tier == "ssd":
            act_w += ck
        else:
            host_copy += ck
        if p.cache_tier == "ssd":
            act_w += cache
        else:
            host_copy += cache
    act_r = act_w
    rd, wr = prof.ssd_read_bps, prof.ssd_write_bps
    opt_read = 12 * n
    opt_write = 12 * n + (2 * n if compute_elem == 2 else 0) + (4 * n if clip and grad_tier == "ssd" else 0)
    opt_s = opt_read / rd + opt_write / wr + n / prof.adam_params_per_s
    unit_opt_s = opt_s * max(nb, cfg.ends_params()) / n
    compute_fwd = f_fwd / prof.flops_per_s + host_copy / prof.memcpy_bps
    compute_bwd = (f_bwd + f_rec) / prof.flops_per_s + host_copy / prof.memcpy_bps
    io_fwd = w_bytes / rd + act_w / wr
    io_bwd = w_bytes / rd + act_r / rd
    if overlap:
        fwd = max(compute_fwd, io_fwd)
        bwd = max(compute_bwd, io_bwd + opt_s - unit_opt_s)
        tail = unit_opt_s
    else:
        fwd = compute_fwd + io_fwd
        bwd = compute_bwd + io_bwd
        tail = opt_s
    terms = {"compute_fwd": compute_fwd, "compute_bwd": compute_bwd, "io_fwd": io_fwd, "io_bwd": io_bwd,
             "optimizer": opt_s, "recompute_flops": f_rec}
    terms["overhead"] = prof.overhead_s
    return StepPrediction(fwd + bwd + tail + prof.overhead_s, fwd, bwd, tail, terms)


def plan_for_fraction(cfg: GPTConfig, k: int, *, batch: int, seq: int, compute_elem: int,
                      host_bytes_free: int, ckpt_tier: str = "host") -> list[BlockPlan]:
    """The plan that caches the ``k`` best op groups (by OB) in every block, host first, then SSD."""
    groups = [g for g, _ in ranked_groups(cfg, batch, seq, compute_elem)][:k]
    ck = batch * seq * cfg.hidden * compute_elem
    per_block = sum(group_bytes(cfg, g, batch, seq, compute_elem) for g in groups)
    plans, used = [], 0
    for _ in range(cfg.layers):
        c_tier = ckpt_tier
        if c_tier == "host" and used + ck > host_bytes_free:
            c_tier = "ssd"
        used += ck if c_tier == "host" else 0
        tier = "host"
        if used + per_block > host_bytes_free:
            tier = "ssd"
        used += per_block if tier == "host" else 0
        plans.append(BlockPlan(ckpt_tier=c_tier, cached=tuple(groups), cache_tier=tier))
    return plans


def fixed_host_bytes(cfg: GPTConfig, *, compute_elem: int, depth: int, chunk_elems: int, grads_all_on_host: bool,
                     inflight: int = 2) -> int:
    """Host bytes the engine needs besides activations: the weight window (ends + current block +
    ``depth`` prefetched + the block kept for backward), gradients (the one being collected + those
    queued for the optimizer, or all of them when they wait for a clip replay in host memory) and the
    optimizer's double-buffered chunks (P32, m, v, grad, bf16 copy)."""
    nb, ne = cfg.block_params(), cfg.ends_params()
    weights = compute_elem * (ne + (depth + 2) * nb)
    grads = 4 * cfg.num_params() if grads_all_on_host else 4 * (ne + (inflight + 1) * nb)
    opt = 2 * (4 * 4 + 2) * chunk_elems
    return weights + grads + opt


def size_buffers(cfg: GPTConfig, budget: int, *, compute_elem: int, grads_all_on_host: bool, max_depth: int = 2,
                 max_chunk: int = 1 << 22, share: float = 0.75) -> tuple[int, int, int, int]:
    """(prefetch depth, optimizer chunk elements, units queued for the optimizer, fixed bytes): the
    deepest prefetch, then the most queued units, then the largest chunk whose fixed buffers fit in
    ``share`` of the budget (the rest is left to activations). Raises ``HostBudgetError`` when not even
    depth 0, one queued unit and the smallest chunk fit."""
    for depth in range(max_depth, -1, -1):
        for inflight in (2, 1):
            chunk = max_chunk
            while chunk >= 2048:
                need = fixed_host_bytes(cfg, compute_elem=compute_elem, depth=depth, chunk_elems=chunk,
                                        grads_all_on_host=grads_all_on_host, inflight=inflight)
                if need <= share * budget:
                    return depth, chunk, inflight, need
                chunk //= 2
    need = fixed_host_bytes(cfg, compute_elem=compute_elem, depth=0, chunk_elems=2048,
                            grads_all_on_host=grads_all_on_host, inflight=1)
    from .memory import HostBudgetError

    raise HostBudgetError(f"host budget {budget / 2**20:.1f} MiB is below the {need / share / 2**20:.1f} MiB this model "
                          "needs at prefetch depth 0, one queued unit and the smallest optimizer chunk ("
                          + ("all fp32 gradients wait in host memory until the optimizer runs"
                             if grads_all_on_host else "one block's weights and gradients") + ")")


def choose_plan(cfg: GPTConfig, prof: Profile, *, batch: int, seq: int, compute_elem: int,
                host_bytes_free: int, clip: bool = False, grad_tier: str = "host") -> tuple[list[BlockPlan], StepPrediction]:
    """Scan the number of cached op groups (0..5) and keep the plan with the smallest predicted time."""
    best = None
    for k in range(len(OP_GROUPS) + 1):
        plans = plan_for_fraction(cfg, k, batch=batch, seq=seq, compute_elem=compute_elem,
                                  host_bytes_free=host_bytes_free)
        pred = predict_step(cfg, plans, prof, batch=batch, seq=seq, compute_elem=compute_elem, overlap=True,
                            clip=clip, grad_tier=grad_tier)
        if best is None or pred.total_s < best[1].total_s:
            best = (plans, pred)
    return best
