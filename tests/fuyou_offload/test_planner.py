"""The cost model: offloading-benefit ranking, host-first placement, convex scan, and each schedule's
prediction (overlap, deferred, serial, ZeRO-Infinity, none) from its terms, with nothing fitted."""

from __future__ import annotations

import dataclasses

import pytest

from fuyou_offload.memory import HostBudgetError
from fuyou_offload.model import GPTConfig
from fuyou_offload.planner import (
    AttentionLayout,
    BlockPlan,
    Profile,
    activation_ssd_fraction,
    choose_plan,
    group_bytes,
    optimizer_bytes,
    plan_for_fraction,
    predict_step,
    ranked_groups,
    ssd_staging_blocks,
)

CFG = GPTConfig(vocab_size=256, hidden=256, layers=4, heads=4, intermediate=1024)


def test_offloading_benefit_ranking_matches_the_flops_per_byte_table():
    # per token: mlp_down 2*I*h FLOPs for h elements -> OB = 2I = 8h; qkv, attn_out, mlp_up -> 2h
    ranked = dict(ranked_groups(CFG, batch=1, seq=128, elem=4))
    assert next(iter(ranked)) == "mlp_down"
    assert ranked["mlp_down"] == pytest.approx(2 * 1024 / 4)
    assert ranked["qkv"] == pytest.approx(2 * 256 / 4) == pytest.approx(ranked["attn_out"])
    assert ranked["mlp_up"] == pytest.approx(2 * 256 / 4)
    # with the math backend there is no fused attention op to cache: the core is not a candidate
    assert "attn_core" not in dict(ranked_groups(CFG, 1, 128, 4, AttentionLayout(fused=False, lse_multiple=0)))


def test_attention_core_bytes_follow_the_probed_layout():
    flash = group_bytes(CFG, "attn_core", 2, 100, 2)  # out (bf16) + fp32 log-sum-exp
    assert flash == 2 * 100 * 256 * 2 + 2 * 4 * 100 * 4
    # memory-efficient attention pads the log-sum-exp to 32 positions; CUDA flash adds RNG state tensors
    eff = group_bytes(CFG, "attn_core", 2, 100, 2, AttentionLayout(True, 32, 4, (8, 8)))
    assert eff == 2 * 100 * 256 * 2 + 2 * 4 * 128 * 4 + 64 + 64


def test_plan_fills_host_first_then_spills_to_ssd():
    per_block = group_bytes(CFG, "mlp_down", 1, 128, 4) + 128 * 256 * 4
    plans = plan_for_fraction(CFG, 1, batch=1, seq=128, compute_elem=4, host_bytes_free=2 * per_block, ssd_window=0)
    assert [p.cached for p in plans] == [("mlp_down",)] * 4
    assert [p.cache_tier for p in plans] == ["host", "host", "ssd", "ssd"]
    assert [p.ckpt_tier for p in plans] == ["host", "host", "ssd", "ssd"]
    assert activation_ssd_fraction(CFG, plans, batch=1, seq=128, compute_elem=4) == pytest.approx(0.5)


def test_ssd_staging_is_reserved_beside_host_stashes_and_refused_when_it_cannot_fit():
    """Regression (fuyou full run, clip off): the plan filled 80 % of the pool with host-tier stashes and
    left the SSD prefetch window (depth + 1 blocks in backward, three stashes writing in forward) to the
    headroom; backward then ran out of pool. Host stashes + the staging window must fit the free bytes."""
    kw = dict(batch=1, seq=128, compute_elem=4)
    ck = 128 * 256 * 4
    per_block = group_bytes(CFG, "mlp_down", 1, 128, 4) + ck
    free = 3 * per_block
    plans = plan_for_fraction(CFG, 1, host_bytes_free=free, ssd_window=3, **kw)
    host = sum((ck if p.ckpt_tier == "host" else 0) + (per_block - ck if p.cache_tier == "host" else 0)
               for p in plans)
    part = max((ck if p.ckpt_tier == "ssd" else 0) + (per_block - ck if p.cache_tier == "ssd" else 0) for p in plans)
    assert part > 0 and host + 3 * part <= free
    # without the reserve the same budget keeps three blocks on host and overflows by the window
    old = plan_for_fraction(CFG, 1, host_bytes_free=free, ssd_window=0, **kw)
    assert sum(p.cache_tier == "host" for p in old) == 3 and sum(p.cache_tier == "host" for p in plans) == 0
    assert ssd_staging_blocks(0) == 3 and ssd_staging_blocks(2) == 3 and ssd_staging_blocks(4) == 5
    with pytest.raises(HostBudgetError, match="host staging for the SSD tier"):
        plan_for_fraction(CFG, 0, host_bytes_free=3 * ck - 1, ssd_window=3, **kw)
    prof = Profile(flops_per_s=1e9, ssd_read_bps=1e10, ssd_write_bps=1e10, memcpy_bps=1e10)
    with pytest.raises(HostBudgetError):  # not even block inputs alone: the scan refuses
        choose_plan(CFG, prof, host_bytes_free=3 * ck - 1, ssd_window=3, **kw)
    plans, _ = choose_plan(CFG, prof, host_bytes_free=3 * ck, ssd_window=3, **kw)  # k = 0 only fits
    assert all(p.cached == () for p in plans)


def test_prediction_trades_recompute_for_traffic_and_the_scan_takes_the_argmin():
    slow_disk = Profile(flops_per_s=50e9, ssd_read_bps=1e8, ssd_write_bps=1e8, memcpy_bps=1e10)
    fast_disk = Profile(flops_per_s=1e9, ssd_read_bps=1e10, ssd_write_bps=1e10, memcpy_bps=1e10)
    kw = dict(batch=4, seq=128, compute_elem=4)
    pk = dict(kw, ssd_window=0)  # staging is tested below
    none = plan_for_fraction(CFG, 0, host_bytes_free=0, **pk)
    all_ssd = plan_for_fraction(CFG, 5, host_bytes_free=0, **pk)
    assert predict_step(CFG, all_ssd, fast_disk, **kw).total_s < predict_step(CFG, none, fast_disk, **kw).total_s
    assert predict_step(CFG, all_ssd, slow_disk, **kw).total_s > predict_step(CFG, none, slow_disk, **kw).total_s
    for prof in (slow_disk, fast_disk):
        for schedule in ("overlap", "deferred"):
            plans, pred = choose_plan(CFG, prof, host_bytes_free=0, schedule=schedule, **pk)
            scan = [predict_step(CFG, plan_for_fraction(CFG, k, host_bytes_free=0, **pk), prof, schedule=schedule,
                                 **kw).total_s for k in range(6)]
            assert pred.total_s == pytest.approx(min(scan))


def test_each_schedule_is_modelled_explicitly_from_its_terms():
    """The serial case (clip binding, ZeRO-Infinity) has its own formula: the optimizer after backward,
    not the overlapped model plus a fitted constant."""
    prof = Profile(flops_per_s=2e9, ssd_read_bps=1e9, ssd_write_bps=5e8, memcpy_bps=1e10, adam_params_per_s=1e8)
    assert not any("overhead" in f.name for f in dataclasses.fields(Profile))  # nothing to fit
    kw = dict(batch=2, seq=64, compute_elem=4)
    plans = [BlockPlan("ssd", ("mlp_down",), "host")] * CFG.layers
    p = {s: predict_step(CFG, plans, prof, schedule=s, **kw) for s in ("overlap", "deferred", "serial", "zero3", "none")}
    t = p["serial"].terms
    n, nb, ne = CFG.num_params(), CFG.block_params(), CFG.ends_params()
    opt_r, opt_w = optimizer_bytes(n, 4, grads_from_ssd=False)
    assert t["optimizer_io"] == pytest.approx(opt_r / 1e9 + opt_w / 5e8)
    assert t["adam"] == pytest.approx(n / 1e8)
    opt = max(t["optimizer_io"], t["adam"])
    # serial: forward and backward overlap their own transfers, the whole optimizer comes after
    assert p["serial"].fwd_s == pytest.approx(max(t["compute_fwd"], t["io_fwd"]))
    assert p["serial"].bwd_s == pytest.approx(max(t["compute_bwd"], t["io_bwd"]))
    assert p["serial"].tail_s == pytest.approx(opt)
    # overlap: the optimizer runs beside backward, one unit's update exposed
    unit = opt * max(nb, ne) / n
    assert p["overlap"].bwd_s == pytest.approx(max(t["compute_bwd"], t["io_bwd"] + opt - unit))
    assert p["overlap"].tail_s == pytest.approx(unit)
    # deferred: the exact update shares the next forward's window (the ends unit's update is exposed first)
    assert p["deferred"].fwd_s == pytest.approx(opt * ne / n + max(t["compute_fwd"], t["io_fwd"] + t["optimizer_io"],
                                                                   t["adam"]))
    assert p["deferred"].tail_s == 0.0
    # ZeRO-Infinity: serial, plus fp32 gradients written in backward and read back by step()
    z = p["zero3"].terms
    assert z["io_bwd"] == pytest.approx(t["io_bwd"] + 4 * n / 5e8)
    assert z["optimizer_io"] == pytest.approx(t["optimizer_io"] + 4 * n / 1e9)
    # nothing overlapped: every term adds up
    assert p["none"].total_s == pytest.approx(t["compute_fwd"] + t["io_fwd"] + t["compute_bwd"] + t["io_bwd"]
                                              + t["optimizer_io"] + t["adam"])
    assert max(p["overlap"].total_s, p["deferred"].total_s) <= p["serial"].total_s <= p["zero3"].total_s \
        <= p["none"].total_s


def test_pcie_terms_bound_a_gpu_step():
    cpu = Profile(flops_per_s=1e15, ssd_read_bps=1e12, ssd_write_bps=1e12, adam_params_per_s=1e12)
    gpu = dataclasses.replace(cpu, h2d_bps=1e9, d2h_bps=1e9)
    kw = dict(batch=2, seq=64, compute_elem=2)
    plans = [BlockPlan()] * CFG.layers
    a, b = predict_step(CFG, plans, cpu, **kw), predict_step(CFG, plans, gpu, **kw)
    assert a.terms["pcie_fwd"] == 0.0
    # forward moves every weight host -> GPU: at 1 GB/s that bounds the forward phase
    assert b.fwd_s == pytest.approx(max(b.terms["compute_fwd"], b.terms["io_fwd"], CFG.num_params() * 2 / 1e9))
    assert b.total_s > a.total_s


def test_buffers_are_sized_to_the_budget_and_refused_below_one_block():
    from fuyou_offload.memory import HostBudgetError
    from fuyou_offload.planner import fixed_host_bytes, size_buffers

    big = size_buffers(CFG, 64 << 20, compute_elem=4, grads_all_on_host=False)
    small = size_buffers(CFG, 30 << 20, compute_elem=4, grads_all_on_host=False)
    assert big[0] == 2 and small[0] < 2  # less memory: shallower prefetch first
    for depth, chunk, inflight, need in (big, small):
        assert need == fixed_host_bytes(CFG, compute_elem=4, depth=depth, chunk_elems=chunk,
                                        grads_all_on_host=False, inflight=inflight)
    with pytest.raises(HostBudgetError, match="all gradients wait in host memory"):
        size_buffers(CFG, 8 << 20, compute_elem=4, grads_all_on_host=True)
    # ZeRO-3's gradient buffer holds the model dtype: 2 bytes per parameter in bf16
    bf16 = fixed_host_bytes(CFG, compute_elem=2, depth=1, chunk_elems=4096, grads_all_on_host=True, grad_elem=2)
    fp32 = fixed_host_bytes(CFG, compute_elem=2, depth=1, chunk_elems=4096, grads_all_on_host=True, grad_elem=4)
    assert fp32 - bf16 == 2 * CFG.num_params()
