"""The out-of-core engine against standard training: exact equivalence, bf16 tracking, bytes per tier,
non-finite gradients, crash-safe slots and checksums."""

from __future__ import annotations

import copy

import pytest
import torch

from fuyou_offload.baseline import InMemoryTrainer
from fuyou_offload.engine import NonFiniteGradientError, OptimConfig, StateCorruptError, read_unit_params
from fuyou_offload.memory import HostBudgetError
from fuyou_offload.model import init_gpt
from fuyou_offload.planner import BlockPlan


def max_rel_diff(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max()).item() for k in b)


MIXED = [BlockPlan("ssd", ("qkv", "attn_core"), "ssd"), BlockPlan("host", ("mlp_down", "mlp_up", "attn_out"), "host"),
         BlockPlan()]


@pytest.mark.parametrize(("schedule", "plans", "grad_tier", "clip", "impl"), [
    ("fuyou", None, "host", 1.0, "fused"),      # clipping active every step: speculation rolled back, replayed
    ("fuyou", None, "host", 1.0, "single"),     # the same against AdamW's per-tensor loop
    ("fuyou", MIXED, "ssd", 1.0, "fused"),      # activations on host and SSD, gradients waiting on SSD
    ("fuyou", MIXED, "host", 100.0, "fused"),   # clipping never binds: speculative updates are committed
    ("fuyou", None, "host", None, "fused"),     # no clipping (option a)
    ("zero_infinity", None, "host", 1.0, "fused"),
])
def test_five_steps_equal_in_memory_adamw(tiny_cfg, batches, make_engine, schedule, plans, grad_tier, clip, impl):
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=clip, weight_decay=0.1, impl=impl)
    eng = make_engine(tiny_cfg, model=model, schedule=schedule, plans=plans, grad_tier=grad_tier, optim=optim)
    ref = InMemoryTrainer(copy.deepcopy(model), optim)
    rolled = 0
    for tokens, targets in batches:
        a, b = eng.train_step(tokens, targets), ref.train_step(tokens, targets)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-6)
        assert a["ssd_read_bytes"] == a["expected_ssd_read_bytes"]
        assert a["ssd_write_bytes"] == a["expected_ssd_write_bytes"]
        assert a["activation_ssd_bytes"] == a["expected_activation_ssd_bytes"]
        assert a["activation_host_bytes"] == a["expected_activation_host_bytes"] > 0
        rolled += a["rolled_back"]
    if clip == 1.0 and schedule == "fuyou":
        assert rolled > 0  # the test really exercised the replay path
    assert max_rel_diff(read_unit_params(eng), ref.model.state_dict()) <= 1e-6
    assert max_rel_diff(read_unit_params(eng, "m"), _moments(ref, "exp_avg")) <= 1e-6


def _moments(ref: InMemoryTrainer, key: str) -> dict:
    return {n: ref.opt.state[p][key] for n, p in ref.model.named_parameters()}


def test_a_layer_larger_than_the_optimizer_chunk_streams_through(tiny_cfg, batches, make_engine):
    model = init_gpt(tiny_cfg, 0)
    eng = make_engine(tiny_cfg, model=model, opt_chunk_elems=2048)  # ends unit: 2,080 elements -> 2 chunks
    assert max(len(eng._chunks(u)) for u in eng.units) >= 2
    ref = InMemoryTrainer(copy.deepcopy(model), eng.ocfg)
    for tokens, targets in batches[:2]:
        eng.train_step(tokens, targets)
        ref.train_step(tokens, targets)
    assert max_rel_diff(read_unit_params(eng), ref.model.state_dict()) <= 1e-6


def test_bf16_tracks_fp32_within_bf16_tolerance(tiny_cfg, batches, make_engine):
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-3, clip_grad_norm=1.0)
    eng = make_engine(tiny_cfg, model=model, compute_dtype="bf16", plans=MIXED, optim=optim)
    ref = InMemoryTrainer(copy.deepcopy(model), optim)
    for tokens, targets in batches:
        a, b = eng.train_step(tokens, targets), ref.train_step(tokens, targets)
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-2)
        assert a["ssd_write_bytes"] == a["expected_ssd_write_bytes"]
    got, want, init = read_unit_params(eng), ref.model.state_dict(), model.state_dict()
    for k in want:  # the bf16 run moved each tensor like fp32 did, up to a fraction of the update
        upd = (want[k] - init[k]).abs().max()
        assert (got[k] - want[k]).abs().max() <= 0.5 * upd + 1e-3, k


def test_non_finite_gradient_commits_nothing(tiny_cfg, batches, make_engine):
    eng = make_engine(tiny_cfg)
    eng.train_step(*batches[0])
    before = read_unit_params(eng)
    tokens, targets = batches[1]
    emb = eng.units[0]
    # a NaN in the forward pass (as an overflow would produce) poisons every gradient
    orig = eng._embed
    eng._embed = lambda p, t: orig(p, t) * float("nan")
    with pytest.raises(NonFiniteGradientError, match="nothing was committed"):
        eng.train_step(tokens, targets)
    eng._embed = orig
    assert eng.step == 1 and emb.name == "ends"
    after = read_unit_params(eng)
    assert all(torch.equal(before[k], after[k]) for k in before)
    eng.train_step(tokens, targets)  # and training goes on from the committed step
    eng.flush()  # a binding clip defers step 2's exact update (and so its commit) to the next forward
    assert eng.step == 2


def test_resume_verifies_checksums_and_detects_corruption(tiny_cfg, batches, make_engine, tmp_path):
    eng = make_engine(tiny_cfg, name="r")
    for b in batches[:2]:
        eng.train_step(*b)
    want = read_unit_params(eng)
    eng.close()
    again = make_engine(tiny_cfg, name="r", resume="auto")
    assert again.step == 2
    assert all(torch.equal(want[k], v) for k, v in read_unit_params(again).items())
    again.close()
    # flip one byte of the committed slot's m: resume must refuse
    path = tmp_path / "r" / "state" / f"m.{again.slot}.bin"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StateCorruptError, match="fails its checksum"):
        make_engine(tiny_cfg, name="r", resume="auto")


def test_budget_too_small_is_a_clear_error(tiny_cfg, batches, make_engine):
    eng = make_engine(tiny_cfg, host_budget=20 << 10)
    with pytest.raises(HostBudgetError, match="Raise memory.host_budget"):
        eng.train_step(*batches[0])
    assert eng.step == 0


def test_zero_infinity_baseline_prefetches_weights_as_zero3_does(tiny_cfg, batches, make_engine):
    """The faithful baseline issues block i+1's (forward) and i-1's (backward) SSD reads before block i computes."""
    eng = make_engine(tiny_cfg, schedule="zero_infinity", prefetch_depth=1)
    started: list[tuple[str, int]] = []  # (unit, compute intervals done when its read was issued)
    orig = eng._start_load

    def spy(u, slot, after=None):
        started.append((u.name, sum(1 for lane, *_ in eng.trace if lane == "compute")))
        return orig(u, slot, after)

    eng._start_load = spy
    eng.train_step(*batches[0])
    fwd = started[: 1 + tiny_cfg.layers]
    # block 0 loads with the ends; block j >= 1 is issued after j compute intervals (the embedding and blocks
    # 0..j-2), i.e. before block j-1 computes. Without prefetch it would come after j + 1.
    assert fwd == [("ends", 0), ("block0", 0)] + [(f"block{j}", j) for j in range(1, tiny_cfg.layers)]
    bwd = started[1 + tiny_cfg.layers:]
    # backward: block L-2's read is issued before block L-1's backward compute (kept from forward) runs
    head_done = 1 + tiny_cfg.layers + 1
    assert bwd[0] == (f"block{tiny_cfg.layers - 2}", head_done)


def test_zero_infinity_swaps_fp32_gradients_out_and_keeps_a_model_dtype_buffer(tiny_cfg, batches, make_engine):
    eng = make_engine(tiny_cfg, schedule="zero_infinity", compute_dtype="bf16")
    moved = {"read": 0, "write": 0}
    grad_file = eng.files["grad"]
    def counting(kind, orig):
        def spy(off, view):
            moved[kind] += len(view)
            return orig(off, view)
        return spy

    grad_file.read, grad_file.write = counting("read", grad_file.read), counting("write", grad_file.write)
    m = eng.train_step(*batches[0])
    n = eng.n_params
    assert eng._zero3_grads.nbytes == -(-2 * n // 4096) * 4096  # bf16: 2 bytes per parameter, as DeepSpeed's
    assert m["ssd_write_bytes"] == m["expected_ssd_write_bytes"] and m["ssd_read_bytes"] == m["expected_ssd_read_bytes"]
    # fp32 gradients: written during backward, read back by step(): 4 + 4 bytes per parameter (4 KiB padded)
    assert moved["write"] == moved["read"] == sum(-(-4 * u.numel // 4096) * 4096 for u in eng.units)
    assert m["deferred_units"] == 0 and m["committed"] == 1  # ZeRO-Infinity's step() runs after backward


@pytest.mark.parametrize("clip_overlap", ["next_forward", "after_backward"])
def test_binding_clip_update_runs_in_the_next_forward_and_stays_exact(tiny_cfg, batches, make_engine, clip_overlap):
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=0.01)  # binds at every step
    eng = make_engine(tiny_cfg, model=model, optim=optim, clip_overlap=clip_overlap)
    ref = InMemoryTrainer(copy.deepcopy(model), optim)
    rows = []
    for tokens, targets in batches:
        rows.append(eng.train_step(tokens, targets))
        ref.train_step(tokens, targets)
        assert rows[-1]["ssd_read_bytes"] == rows[-1]["expected_ssd_read_bytes"]
        assert rows[-1]["ssd_write_bytes"] == rows[-1]["expected_ssd_write_bytes"]
    assert all(r["clip_coef"] < 1 for r in rows)
    if clip_overlap == "next_forward":
        assert [r["deferred_units"] for r in rows] == [tiny_cfg.layers + 1] * 5
        assert [r["deferred_units_run"] for r in rows] == [0] + [tiny_cfg.layers + 1] * 4
        assert not any(r["rolled_back"] for r in rows[1:])  # after a clipped step: no speculation to waste
        # the optimizer's intervals of the last step lie inside its forward (before the head computes)
        head = next(s for lane, label, s, e in eng.trace if label == "head")
        assert [e for lane, _, s, e in eng.trace if lane == "optimizer"] and \
            all(e <= head for lane, _, s, e in eng.trace if lane == "optimizer")
        assert eng.step == 4  # step 5 commits during the next forward, or at flush
    else:
        assert all(r["deferred_units"] == 0 for r in rows) and eng.step == 5
    assert max_rel_diff(read_unit_params(eng), ref.model.state_dict()) <= 1e-6
    assert eng.step == 5


@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"])
def test_attention_caching_for_every_sdpa_backend_that_runs_here(tiny_cfg, batches, make_engine, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    be = getattr(SDPBackend, backend)
    q = torch.zeros(1, 4, 16, 8)
    try:
        with sdpa_kernel([be]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:
        pytest.skip(f"{backend} does not run on this device")
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=1.0)
    plans = [BlockPlan("ssd", ("attn_core", "attn_out"), "ssd"), BlockPlan("host", ("attn_core", "qkv"), "host"),
             BlockPlan()]
    with sdpa_kernel([be]):
        eng = make_engine(tiny_cfg, model=model, optim=optim, plans=plans)
        ref = InMemoryTrainer(copy.deepcopy(model), optim)
        recorded: list[dict] = []
        orig = eng._stash_block
        eng._stash_block = lambda x, store, plan: (recorded.append(dict(store)), orig(x, store, plan))[1]
        for tokens, targets in batches[:3]:
            a = eng.train_step(tokens, targets)
            ref.train_step(tokens, targets)
            assert a["ssd_read_bytes"] == a["expected_ssd_read_bytes"]
            assert a["activation_ssd_bytes"] == a["expected_activation_ssd_bytes"] > 0
            assert a["activation_host_bytes"] == a["expected_activation_host_bytes"]
        assert max_rel_diff(read_unit_params(eng), ref.model.state_dict()) <= 1e-6
    names = {k: v[0] for k, v in recorded[0].items()}
    assert names[4] == "aten::mm"  # o_proj keeps its number whatever the backend
    if eng.attn.fused:
        assert "scaled_dot_product" in names[3]
    else:  # math: no single op to cache; the core is recomputed and dropped from the plan
        assert 3 not in names and "attn_core" not in eng.plans[0].cached


def test_attention_outputs_with_undefined_tensors_and_integers_round_trip(tiny_cfg, make_engine):
    """CUDA flash attention returns (out, lse, None, None, max_q, max_k, seed, offset, empty mask)."""
    eng = make_engine(tiny_cfg)
    out = torch.randn(2, 4, 16, 8)
    val = (out, torch.randn(2, 4, 16), None, None, 16, 16, torch.tensor([7, 9]), torch.tensor(3), torch.empty(0))
    x = torch.randn(2, 16, 32)
    eng._act_cursor = 0
    st = eng._stash_block(x, {3: ("aten::_scaled_dot_product_flash_attention", val)}, BlockPlan("host", ("attn_core",)))
    back = eng._stash_op(st["cache"], 3)
    assert isinstance(back, tuple) and len(back) == len(val)
    for a, b in zip(back, val):
        if isinstance(b, torch.Tensor):
            assert torch.equal(a, b) and a.dtype == b.dtype and a.shape == b.shape
        else:
            assert a == b
    assert torch.equal(eng._stash_to_device(st["ckpt"], "x"), x)


def test_memory_efficient_and_cudnn_attention_record_their_logsumexp():
    from fuyou_offload.engine import _with_logsumexp

    q = torch.zeros(1)
    for op in (torch.ops.aten._scaled_dot_product_efficient_attention.default,
               torch.ops.aten._scaled_dot_product_cudnn_attention.default):
        args, kwargs = _with_logsumexp(op, (q, q, q, None, False), {})
        assert args[4] is True and not kwargs
        args, kwargs = _with_logsumexp(op, (q, q, q, None), {"compute_log_sumexp": False})
        assert kwargs["compute_log_sumexp"] is True
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    assert _with_logsumexp(flash, (q, q, q), {}) == ((q, q, q), {})


@pytest.mark.parametrize("schedule", ["fuyou", "zero_infinity"])
def test_every_host_buffer_returns_to_the_pool(tiny_cfg, batches, make_engine, schedule):
    eng = make_engine(tiny_cfg, plans=MIXED, schedule=schedule, prefetch_depth=2)
    for tokens, targets in batches[:3]:
        eng.train_step(tokens, targets)
    eng.flush()
    held = eng._zero3_grads.nbytes if eng._zero3_grads is not None else 0  # ZeRO-3's buffer lives until close
    assert eng.pool.live_bytes == held


class _FakeEvent:
    def __init__(self, enable_timing: bool = False):
        self.t = 0.0

    def record(self, stream=None):
        import time

        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 1000 * (other.t - self.t)


class _FakeStream:
    def __init__(self, device=None):
        pass

    def wait_event(self, event):
        pass

    def wait_stream(self, stream):
        pass


@pytest.mark.parametrize("schedule", ["fuyou", "zero_infinity"])
def test_cuda_code_path_simulated_on_the_cpu(tiny_cfg, batches, tmp_path, monkeypatch, schedule):
    """The CUDA branches (copy streams, events, the GPU window, deferred host-buffer release, D2H of gradients
    and activations through the waiter thread) run with no-op streams and the CPU as the device: they must give
    the same numbers as standard training and return every buffer. The real thing runs in test_gpu.py."""
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    from fuyou_offload.engine import EngineConfig, OffloadEngine

    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 << 30, 16 << 30))
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: None)
    model = init_gpt(tiny_cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=0.5, weight_decay=0.1)
    eng = OffloadEngine(tiny_cfg, EngineConfig(schedule=schedule, host_budget=64 << 20, opt_chunk_elems=4096,
                                               prefetch_depth=2), optim, state_dir=tmp_path / "s", run_dir=tmp_path / "r",
                        plans=MIXED, batch=2, seq=16)
    eng.cuda, eng.h2d, eng.d2h = True, _FakeStream(), _FakeStream()
    eng.waiter, eng._held = ThreadPoolExecutor(1), []
    eng.gpu_window = eng._size_gpu_window()
    eng.open(copy.deepcopy(model))
    ref = InMemoryTrainer(copy.deepcopy(model), optim)
    for tokens, targets in batches:
        a, b = eng.train_step(tokens, targets), ref.train_step(tokens, targets)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["ssd_write_bytes"] == a["expected_ssd_write_bytes"]
    assert max_rel_diff(read_unit_params(eng), ref.model.state_dict()) <= 1e-6
    held = eng._zero3_grads.nbytes if eng._zero3_grads is not None else 0
    assert eng.pool.live_bytes == held
    eng.close()
