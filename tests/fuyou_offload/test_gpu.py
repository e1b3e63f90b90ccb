"""The CUDA path (pinned pool, copy stream, CPU AdamW on host state): parity with AdamW on the GPU."""

from __future__ import annotations

import copy

import pytest

from fuyou_offload.baseline import InMemoryTrainer
from fuyou_offload.engine import OptimConfig, read_unit_params
from fuyou_offload.model import init_gpt
from fuyou_offload.planner import BlockPlan

pytestmark = pytest.mark.gpu


def test_cuda_engine_matches_adamw_on_gpu(tiny_cfg, batches, make_engine):
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=1.0)
    plans = [BlockPlan("ssd", ("qkv", "attn_core"), "ssd"), BlockPlan("host", ("mlp_down",), "host"), BlockPlan()]
    eng = make_engine(tiny_cfg, model=model, optim=optim, device="cuda", plans=plans)
    assert eng.pool.pin
    ref = InMemoryTrainer(copy.deepcopy(model), optim, device="cuda")
    for tokens, targets in batches:
        a, b = eng.train_step(tokens, targets), ref.train_step(tokens, targets)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    want = {k: v.cpu() for k, v in ref.model.state_dict().items()}
    got = read_unit_params(eng)
    assert max(((got[k] - want[k]).abs().max() / want[k].abs().max()).item() for k in want) <= 1e-5
