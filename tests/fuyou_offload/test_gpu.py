"""The CUDA path: the whole engine on the GPU (pinned pool, H2D/D2H copy streams with events, a GPU weight
window, CPU AdamW on host state) against in-memory AdamW on the GPU, and attention caching with every SDPA
backend that runs there. ``make gpu-check`` runs these (``pytest -m gpu``)."""

from __future__ import annotations

import copy

import pytest
import torch

from fuyou_offload.baseline import InMemoryTrainer
from fuyou_offload.engine import OptimConfig, read_unit_params
from fuyou_offload.model import GPTConfig, init_gpt
from fuyou_offload.planner import BlockPlan

pytestmark = pytest.mark.gpu

PLANS = [BlockPlan("ssd", ("qkv", "attn_core"), "ssd"), BlockPlan("host", ("mlp_down", "attn_out"), "host"), BlockPlan()]


def _max_rel(got: dict, want: dict) -> float:
    return max(((got[k] - want[k].detach().cpu()).abs().max() / want[k].abs().max().cpu()).item() for k in want)


@pytest.mark.parametrize(("schedule", "clip"), [("fuyou", 1.0), ("fuyou", 0.01), ("zero_infinity", 1.0)])
def test_cuda_engine_matches_adamw_on_gpu(tiny_cfg, batches, make_engine, schedule, clip):
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=clip, weight_decay=0.1)
    eng = make_engine(tiny_cfg, model=model, optim=optim, device="cuda", plans=PLANS, schedule=schedule,
                      prefetch_depth=1)
    assert eng.pool.pin and eng.h2d != torch.cuda.current_stream() and eng.d2h != eng.h2d
    ref = InMemoryTrainer(copy.deepcopy(model), optim, device="cuda")
    for tokens, targets in batches:
        a, b = eng.train_step(tokens, targets), ref.train_step(tokens, targets)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["ssd_read_bytes"] == a["expected_ssd_read_bytes"]
        assert a["ssd_write_bytes"] == a["expected_ssd_write_bytes"]
        assert a["activation_ssd_bytes"] == a["expected_activation_ssd_bytes"]
        assert a["compute_s"] > 0  # timed with CUDA events
    # CPU AdamW on host state against torch's CUDA kernel: equal up to kernel rounding
    assert _max_rel(read_unit_params(eng), ref.model.state_dict()) <= 1e-5
    eng.close()
    assert eng.pool.live_bytes == 0  # every host buffer came back once its copy event completed


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"])
def test_attention_caching_with_every_cuda_sdpa_backend(batches, make_engine, backend):
    """bf16 (flash and cuDNN need it), the core cached on SSD and on the host: the cached run equals the run
    that recomputes everything, and the bytes cached equal the probed layout's analytic count."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = GPTConfig(vocab_size=64, hidden=128, layers=3, heads=2, kv_heads=2, intermediate=256)  # head_dim 64
    be = getattr(SDPBackend, backend)
    q = torch.zeros(2, 2, 16, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    try:
        with sdpa_kernel([be]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    except RuntimeError:
        pytest.skip(f"{backend} does not run on this GPU / dtype")
    model = init_gpt(cfg, 0)
    optim = OptimConfig(lr=1e-3, clip_grad_norm=1.0)
    runs = {}
    with sdpa_kernel([be]):
        for name, plans in (("cached", PLANS), ("recompute", None)):
            eng = make_engine(cfg, model=model, optim=optim, device="cuda", plans=plans, compute_dtype="bf16",
                              name=name)
            rows = [eng.train_step(t, y) for t, y in batches[:3]]
            for r in rows:
                assert r["activation_ssd_bytes"] == r["expected_activation_ssd_bytes"]
                assert r["activation_host_bytes"] == r["expected_activation_host_bytes"]
            runs[name] = (rows, read_unit_params(eng), eng.attn)
            eng.close()
    (cached, p_c, attn), (recomputed, p_r, _) = runs["cached"], runs["recompute"]
    assert attn.fused == (backend != "MATH")
    for a, b in zip(cached, recomputed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    assert max((p_c[k] - p_r[k]).abs().max().item() for k in p_r) <= 1e-3


def test_gpu_window_and_copy_streams_leave_no_host_buffer_behind(tiny_cfg, batches, make_engine):
    eng = make_engine(tiny_cfg, device="cuda", plans=PLANS, prefetch_depth=2, compute_dtype="bf16")
    assert 1 <= eng.gpu_window <= 4
    for tokens, targets in batches[:2]:
        m = eng.train_step(tokens, targets)
        assert m["compute_s"] > 0
    eng.flush()
    assert eng.pool.live_bytes == 0
