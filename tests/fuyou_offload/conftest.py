"""Shared fixtures: a tiny GPT, fixed batches, and an engine factory writing under tmp_path."""

from __future__ import annotations

import copy

import pytest
import torch

from fuyou_offload.engine import EngineConfig, OffloadEngine, OptimConfig
from fuyou_offload.model import GPTConfig, init_gpt


@pytest.fixture
def tiny_cfg() -> GPTConfig:
    return GPTConfig(vocab_size=64, hidden=32, layers=3, heads=4, kv_heads=2, intermediate=48, tie_embeddings=True)


@pytest.fixture
def batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(5):
        t = torch.randint(0, 64, (2, 17), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


@pytest.fixture
def make_engine(tmp_path):
    made = []

    def factory(model_cfg, *, seed=0, plans=None, optim=None, name="e", resume="never", model=None, **ec):
        ec.setdefault("host_budget", 64 << 20)
        ec.setdefault("opt_chunk_elems", 4096)
        eng = OffloadEngine(model_cfg, EngineConfig(**ec), optim or OptimConfig(lr=1e-2, clip_grad_norm=1.0),
                            state_dir=tmp_path / name / "state", run_dir=tmp_path / name / "run", plans=plans,
                            batch=2, seq=16)
        eng.open(copy.deepcopy(model) if model is not None else init_gpt(model_cfg, seed), resume=resume)
        made.append(eng)
        return eng

    yield factory
    for e in made:
        try:
            e.close()
        except Exception:
            pass
