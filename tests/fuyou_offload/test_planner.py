"""The cost model: offloading-benefit ranking, host-first placement, convex scan, prediction terms."""

from __future__ import annotations

import pytest

from fuyou_offload.model import GPTConfig
from fuyou_offload.planner import (
    Profile,
    choose_plan,
    group_bytes,
    plan_for_fraction,
    predict_step,
    ranked_groups,
)

CFG = GPTConfig(vocab_size=256, hidden=256, layers=4, heads=4, intermediate=1024)


def test_offloading_benefit_ranking_matches_the_flops_per_byte_table():
    # per token: mlp_down 2*I*h FLOPs for h elements -> OB = 2I = 8h; qkv, attn_out, mlp_up -> 2h
    ranked = dict(ranked_groups(CFG, batch=1, seq=128, elem=4))
    assert next(iter(ranked)) == "mlp_down"
    assert ranked["mlp_down"] == pytest.approx(2 * 1024 / 4)
    assert ranked["qkv"] == pytest.approx(2 * 256 / 4) == pytest.approx(ranked["attn_out"])
    assert ranked["mlp_up"] == pytest.approx(2 * 256 / 4)


def test_plan_fills_host_first_then_spills_to_ssd():
    per_block = group_bytes(CFG, "mlp_down", 1, 128, 4) + 128 * 256 * 4
    plans = plan_for_fraction(CFG, 1, batch=1, seq=128, compute_elem=4, host_bytes_free=2 * per_block)
    assert [p.cached for p in plans] == [("mlp_down",)] * 4
    assert [p.cache_tier for p in plans] == ["host", "host", "ssd", "ssd"]


def test_prediction_trades_recompute_for_traffic_and_the_scan_takes_the_argmin():
    slow_disk = Profile(flops_per_s=50e9, ssd_read_bps=1e8, ssd_write_bps=1e8, memcpy_bps=1e10)
    fast_disk = Profile(flops_per_s=1e9, ssd_read_bps=1e10, ssd_write_bps=1e10, memcpy_bps=1e10)
    kw = dict(batch=4, seq=128, compute_elem=4)
    none = plan_for_fraction(CFG, 0, host_bytes_free=0, **kw)
    all_ssd = plan_for_fraction(CFG, 5, host_bytes_free=0, **kw)
    assert predict_step(CFG, all_ssd, fast_disk, overlap=True, **kw).total_s < predict_step(CFG, none, fast_disk, overlap=True, **kw).total_s
    assert predict_step(CFG, all_ssd, slow_disk, overlap=True, **kw).total_s > predict_step(CFG, none, slow_disk, overlap=True, **kw).total_s
    for prof in (slow_disk, fast_disk):
        plans, pred = choose_plan(CFG, prof, host_bytes_free=0, **kw)
        scan = [predict_step(CFG, plan_for_fraction(CFG, k, host_bytes_free=0, **kw), prof, overlap=True, **kw).total_s
                for k in range(6)]
        assert pred.total_s == pytest.approx(min(scan))
    # overlap never predicts slower than the serial schedule
    serial = predict_step(CFG, none, slow_disk, overlap=False, **kw)
    assert predict_step(CFG, none, slow_disk, overlap=True, **kw).total_s <= serial.total_s


def test_buffers_are_sized_to_the_budget_and_refused_below_one_block():
    from fuyou_offload.memory import HostBudgetError
    from fuyou_offload.planner import fixed_host_bytes, size_buffers

    big = size_buffers(CFG, 64 << 20, compute_elem=4, grads_all_on_host=False)
    small = size_buffers(CFG, 30 << 20, compute_elem=4, grads_all_on_host=False)
    assert big[0] == 2 and small[0] < 2  # less memory: shallower prefetch first
    for depth, chunk, inflight, need in (big, small):
        assert need == fixed_host_bytes(CFG, compute_elem=4, depth=depth, chunk_elems=chunk,
                                        grads_all_on_host=False, inflight=inflight)
    with pytest.raises(HostBudgetError, match="all fp32 gradients wait in host memory"):
        size_buffers(CFG, 8 << 20, compute_elem=4, grads_all_on_host=True)
