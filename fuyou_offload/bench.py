"""``python -m fuyou_offload.bench``: this machine's floors, then the schedules side by side on one model.

Floors: O_DIRECT read/write bandwidth, the compute rate of a real block, memcpy, AdamW rate (and on CUDA the
pinned PCIe bandwidths). Schedules, on the same model, batches, tokens per step and host budget, interleaved
step by step (``common.bench.compare``):

- ``fuyou``: the method (plan from the cost model, overlapped optimizer, exact clipping);
- ``zero_infinity``: the faithful model of DeepSpeed ZeRO-Infinity in the same engine (see ``engine``);
- ``fuyou_serial``: fuyou's plan with nothing overlapped: its compute time is the compute floor, measured
  without the I/O and optimizer threads competing for the cores (the overlap ratio's denominator);
- ``fuyou_next_forward``: fuyou with a binding clip's exact update during the next forward instead of right
  after backward (``offload.clip_overlap``'s other value: the measured trade);
- ``in_memory``: torch AdamW with everything in RAM (when it fits);
- ``deepspeed``: the real DeepSpeed ZeRO-3 with NVMe offload (``fuyou_offload.deepspeed_run``), run in its own
  process with the interpreter given by ``--deepspeed-python`` (its own environment).

Each schedule reports its median step time, the per-phase breakdown (forward, backward, optimizer tail, time
blocked on weights / activations / the optimizer), SSD bytes beside the analytic count, the host pool's
peak, the activation bytes on SSD, and the cost model's prediction (no fitted term) with its error. Ratios:
zero_infinity / fuyou, deepspeed / fuyou, and fuyou / max(compute floor, bytes / measured bandwidth).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.bench import compare, format_bytes, peak_rss_bytes
from common.runinfo import hardware_summary

from .baseline import InMemoryTrainer
from .engine import EngineConfig, OffloadEngine, OptimConfig, read_unit_params
from .memory import HostBudgetError
from .model import GPTConfig, init_gpt
from .planner import (
    CPU_FLASH,
    BlockPlan,
    Profile,
    activation_ssd_fraction,
    choose_plan,
    fixed_host_bytes,
    plan_for_fraction,
    predict_step,
    size_buffers,
    ssd_staging_blocks,
)
from .profiling import io_backends, measure_floors

GPU_CHECK_ARGS = ["--device", "cuda", "--hidden", "1024", "--layers", "4", "--heads", "16", "--vocab", "4096",
                  "--batch", "8", "--seq", "512", "--precision", "bf16", "--clip", "1.0", "--plan", "auto",
                  "--host-budget-mib", "4096", "--repeats", "2", "--schedules", "fuyou,zero_infinity,in_memory",
                  "--parity", "--json"]
"""The GPU check's run (``common.gpu_check`` picks it up): TFLOPS of the three schedules on a 54M-parameter
model at 4,096 tokens per step in bf16 with clipping on, plus the fp32 parity of the engine on CUDA against
in-memory AdamW, in well under its 60 s."""

SCHEDULES = ("fuyou", "zero_infinity", "fuyou_serial", "in_memory")


def engine_for(s: str, mcfg: GPTConfig, work_dir: Path, *, budget: int, precision: str, plans, optim: OptimConfig,
               batch: int, seq: int, throttle: float | None, queue_depth: int, device: str) -> OffloadEngine:
    """An engine of schedule ``s`` with its buffers sized to ``budget`` as ``train`` sizes them."""
    el = 2 if precision == "bf16" else 4
    z3 = s == "zero_infinity"
    from .training import grads_on_host

    on_host, grad_elem = grads_on_host("zero_infinity" if z3 else "fuyou", bool(optim.clip_grad_norm), "auto",
                                       mcfg.num_params(), budget, el)
    depth, chunk, inflight, _ = size_buffers(mcfg, budget, compute_elem=el, grads_all_on_host=on_host,
                                             grad_elem=grad_elem)
    ec = EngineConfig(schedule="zero_infinity" if z3 else "fuyou", compute_dtype=precision, host_budget=budget,
                      queue_depth=queue_depth, throttle_bytes_per_s=throttle, opt_chunk_elems=chunk,
                      prefetch_depth=depth, max_inflight_updates=inflight, overlap=s != "fuyou_serial", device=device,
                      clip_overlap="next_forward" if s == "fuyou_next_forward" else "after_backward")
    return OffloadEngine(mcfg, ec, optim, state_dir=work_dir / s / "state", run_dir=work_dir / s / "run",
                         plans=plans, batch=batch, seq=seq)


def activation_budget(mcfg: GPTConfig, budget: int, *, precision: str, clip: bool) -> tuple[int, int]:
    """(host bytes the plan may use for activations under ``budget``, blocks of SSD activations staged in
    host memory at the engine's prefetch depth), as ``training.host_bytes_for_activations`` and
    ``training.ssd_window`` compute them for a trained model."""
    el = 2 if precision == "bf16" else 4
    from .training import grads_on_host

    on_host, grad_elem = grads_on_host("fuyou", clip, "auto", mcfg.num_params(), budget, el)
    depth, chunk, inflight, _ = size_buffers(mcfg, budget, compute_elem=el, grads_all_on_host=on_host,
                                             grad_elem=grad_elem)
    fixed = fixed_host_bytes(mcfg, compute_elem=el, depth=depth, chunk_elems=chunk, grads_all_on_host=on_host,
                             inflight=inflight, grad_elem=grad_elem)
    return max(0, int(0.8 * (budget - fixed))), ssd_staging_blocks(depth)


def _schedule_of(s: str, row: dict) -> str:
    if s == "zero_infinity":
        return "zero3"
    if s == "fuyou_serial":
        return "none"
    if row.get("deferred_units") or row.get("deferred_units_run"):
        return "deferred"
    return "serial" if row.get("clip_coef", 1.0) < 1.0 else "overlap"


def run_deepspeed(python: str, mcfg: GPTConfig, work_dir: Path, *, batch: int, seq: int, precision: str,
                  clip: float | None, budget: int, repeats: int, warmup: int, timeout: float = 7200) -> dict[str, Any]:
    """The real DeepSpeed run in its own interpreter; returns its JSON, or {"error": <its last lines>}."""
    cmd = [python, "-m", "fuyou_offload.deepspeed_run", "--hidden", str(mcfg.hidden), "--layers", str(mcfg.layers),
           "--heads", str(mcfg.heads), "--vocab", str(mcfg.vocab_size), "--batch", str(batch), "--seq", str(seq),
           "--precision", precision, "--clip", str(clip or 0.0), "--host-budget-mib", str(budget >> 20),
           "--repeats", str(repeats), "--warmup", str(warmup), "--nvme-dir", str(work_dir / "deepspeed_nvme")]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}", "command": " ".join(cmd)}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:]), "returncode": out.returncode,
                "command": " ".join(cmd)}
    res = json.loads(lines[-1])
    res["command"] = " ".join(cmd)
    res["ops_cache_line"] = next((ln for ln in out.stderr.splitlines() if "deepspeed ops cache" in ln), "")
    return res


def bench_schedules(mcfg: GPTConfig, work_dir: str | Path, *, batch: int = 4, seq: int = 64,
                    host_budget: int = 1 << 30, precision: str = "fp32", repeats: int = 3, warmup: int = 1,
                    throttle_bytes_per_s: float | None = None, plan: str | list[BlockPlan] = "auto",
                    clip: float | None = 1.0, schedules=SCHEDULES, profile: Profile | None = None,
                    queue_depth: int = 4, seed: int = 0, device: str = "cpu",
                    deepspeed_python: str | None = None) -> dict[str, Any]:
    """Time the schedules on one model; returns per-schedule medians, phases, predictions and the ratios.
    ``host_budget`` is the staging pool each engine gets; ``plan="auto"`` lets the cost model choose under it
    (a small budget puts activations on SSD)."""
    work_dir = Path(work_dir)
    optim = OptimConfig(lr=1e-4, clip_grad_norm=clip)
    el = 2 if precision == "bf16" else 4
    if profile is None:
        profile, _ = measure_floors(work_dir / "floors", io_bytes=32 << 20, throttle=throttle_bytes_per_s,
                                    model=mcfg, batch=batch, seq=seq, dtype=torch.bfloat16 if el == 2 else torch.float32,
                                    device=device)
    act_free, window = activation_budget(mcfg, host_budget, precision=precision, clip=bool(clip))
    if plan == "auto":
        # the steady state of a binding clip under the default clip_overlap (after_backward) is the serial schedule
        plans, _ = choose_plan(mcfg, profile, batch=batch, seq=seq, compute_elem=el, host_bytes_free=act_free,
                               ssd_window=window, schedule="serial" if clip else "overlap")
    elif plan == "recompute":
        plans = plan_for_fraction(mcfg, 0, batch=batch, seq=seq, compute_elem=el, host_bytes_free=act_free,
                                  ssd_window=window)
    else:
        plans = list(plan)
    model = init_gpt(mcfg, seed)
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, mcfg.vocab_size, (64, batch, seq + 1), generator=g)
    trainers: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        for s in schedules:
            if s == "in_memory":
                if 16 * mcfg.num_params() > host_budget and device == "cpu":
                    skipped[s] = f"needs {16 * mcfg.num_params() / 2**20:.0f} MiB of state, budget {host_budget >> 20} MiB"
                    continue
                trainers[s] = InMemoryTrainer(copy.deepcopy(model), optim, precision, device)
                continue
            try:
                eng = engine_for(s, mcfg, work_dir, budget=host_budget, precision=precision, plans=plans, optim=optim,
                                 batch=batch, seq=seq, throttle=throttle_bytes_per_s, queue_depth=queue_depth,
                                 device=device)
            except HostBudgetError as e:
                skipped[s] = str(e)
                continue
            eng.open(copy.deepcopy(model), resume="never")
            trainers[s] = eng
        del model
        rows: dict[str, list[dict]] = {s: [] for s in trainers}
        counters = {s: 0 for s in trainers}
        traces: dict[str, list] = {}

        def stepper(name):
            def fn():
                i = counters[name] % data.shape[0]
                counters[name] += 1
                rows[name].append(trainers[name].train_step(data[i, :, :-1], data[i, :, 1:]))
                if name != "in_memory":
                    traces[name] = list(trainers[name].trace)
            return fn

        timings = compare({s: stepper(s) for s in trainers}, warmup=warmup, repeats=repeats,
                          items_per_call=batch * seq)
    finally:
        for s, t in trainers.items():
            if s != "in_memory":
                t.close()
    t = batch * seq
    per_block = mcfg.block_matmul_flops(t, seq)
    f_fwd = mcfg.layers * sum(per_block.values()) + 2.0 * t * mcfg.hidden * mcfg.vocab_size
    attn = next((x.attn for x in trainers.values() if isinstance(x, OffloadEngine)), CPU_FLASH)
    out: dict[str, Any] = {"model_params": mcfg.num_params(), "tokens_per_step": t, "device": device,
                           "precision": precision, "clip": clip, "host_budget_bytes": host_budget,
                           "floors": {k: v for k, v in profile.__dict__.items() if v != float("inf")},
                           "plan": [list(p.cached) + [p.ckpt_tier, p.cache_tier] for p in plans[:1]],
                           "activation_ssd_fraction": activation_ssd_fraction(mcfg, plans, batch=batch, seq=seq,
                                                                              compute_elem=el, attn=attn),
                           "schedules": {}, "skipped": skipped, "timeline": traces.get("fuyou", [])}
    for s in trainers:
        steady = rows[s][warmup:]

        def med(k: str, steady=steady) -> float:
            return statistics.median(r[k] for r in steady)

        info = {"median_step_s": timings[s].median, "min_step_s": timings[s].min, "max_step_s": timings[s].max,
                "tokens_per_s": timings[s].throughput, "compute_s": med("compute_s"),
                "model_tflops": 3 * f_fwd / timings[s].median / 1e12,
                "ssd_read_bytes": steady[-1]["ssd_read_bytes"], "ssd_write_bytes": steady[-1]["ssd_write_bytes"],
                "losses": [r["loss"] for r in rows[s]]}
        if s != "in_memory":
            eng = trainers[s]
            preds = [predict_step(mcfg, eng.plans, profile, batch=batch, seq=seq, compute_elem=el,
                                  schedule=_schedule_of(s, r), grads_to_ssd=eng.grads_to_ssd, attn=eng.attn).total_s
                     for r in steady]
            info.update(expected_ssd_read_bytes=steady[-1]["expected_ssd_read_bytes"],
                        expected_ssd_write_bytes=steady[-1]["expected_ssd_write_bytes"],
                        bytes_match=all(r["ssd_read_bytes"] == r["expected_ssd_read_bytes"]
                                        and r["ssd_write_bytes"] == r["expected_ssd_write_bytes"] for r in rows[s]),
                        host_pool_peak_bytes=max(r["host_pool_peak_bytes"] for r in steady),
                        activation_ssd_bytes=steady[-1]["activation_ssd_bytes"],
                        activation_host_bytes=steady[-1]["activation_host_bytes"],
                        predicted_step_s=statistics.median(preds), predicted_schedule=_schedule_of(s, steady[-1]),
                        clip_binds=all(r["clip_coef"] < 1.0 for r in steady),
                        **{k: med(k) for k in ("forward_s", "backward_end_s", "optimizer_tail_s", "wait_weights_s",
                                               "wait_activations_s", "wait_optimizer_s", "optimizer_busy_s")})
            info["prediction_error"] = info["predicted_step_s"] / info["median_step_s"] - 1
            if device == "cuda":  # hardware FLOPs (recompute included) over the GPU-timed compute
                rec = sum(sum(per_block.values()) - sum(per_block[g] for g in p.cached) for p in eng.plans)
                info["compute_tflops"] = (3 * f_fwd + rec) / max(info["compute_s"], 1e-12) / 1e12
        out["schedules"][s] = info
    if deepspeed_python:
        out["deepspeed"] = run_deepspeed(deepspeed_python, mcfg, work_dir, batch=batch, seq=seq, precision=precision,
                                         clip=clip, budget=host_budget, repeats=repeats, warmup=warmup)
    if "fuyou" in out["schedules"]:
        f = out["schedules"]["fuyou"]
        io_s = io_bound_seconds(f["ssd_read_bytes"], f["ssd_write_bytes"], profile, throttle_bytes_per_s)
        serial = out["schedules"].get("fuyou_serial")
        f["io_bound_s"] = io_s
        f["compute_floor_s"] = serial["compute_s"] if serial else f["compute_s"]
        f["compute_floor_from"] = "fuyou_serial (no overlap)" if serial else "fuyou (overlapped: inflated)"
        f["overlap_ratio"] = f["median_step_s"] / max(f["compute_floor_s"], io_s)
        if "zero_infinity" in out["schedules"]:
            out["speedup_vs_zero_infinity"] = out["schedules"]["zero_infinity"]["median_step_s"] / f["median_step_s"]
        ds = out.get("deepspeed", {})
        if "median_step_s" in ds:
            out["speedup_vs_deepspeed"] = ds["median_step_s"] / f["median_step_s"]
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def io_bound_seconds(read_bytes: int, write_bytes: int, profile: Profile,
                     throttle_bytes_per_s: float | None = None) -> float:
    """The I/O floor of a step: reads and writes at the measured bandwidths, one after the other; under a
    throttle no faster than its one token bucket (it meters both directions together) lets through."""
    io_s = read_bytes / profile.ssd_read_bps + write_bytes / profile.ssd_write_bps
    if throttle_bytes_per_s:
        io_s = max(io_s, (read_bytes + write_bytes) / throttle_bytes_per_s)
    return io_s


def parity(device: str, steps: int = 3, work_dir: Path | None = None) -> dict[str, float]:
    """Max relative parameter difference of the engine (fp32, clipping binding, activations on host and SSD,
    attention core cached) against in-memory AdamW on ``device`` after ``steps`` steps."""
    cfg = GPTConfig(vocab_size=64, hidden=64, layers=3, heads=4, kv_heads=2, intermediate=128)
    model = init_gpt(cfg, 0)
    optim = OptimConfig(lr=1e-2, clip_grad_norm=0.5, weight_decay=0.1)
    plans = [BlockPlan("ssd", ("qkv", "attn_core"), "ssd"), BlockPlan("host", ("mlp_down", "attn_out"), "host"),
             BlockPlan()]
    with tempfile.TemporaryDirectory(dir=work_dir or "runs", prefix="parity_") as d:
        eng = OffloadEngine(cfg, EngineConfig(host_budget=64 << 20, opt_chunk_elems=4096, device=device), optim,
                            state_dir=Path(d) / "state", run_dir=Path(d) / "run", plans=plans, batch=2, seq=32)
        eng.open(copy.deepcopy(model))
        ref = InMemoryTrainer(copy.deepcopy(model), optim, device=device)
        g = torch.Generator().manual_seed(1)
        loss_diff = 0.0
        for _ in range(steps):
            t = torch.randint(0, 64, (2, 33), generator=g)
            a, b = eng.train_step(t[:, :-1], t[:, 1:]), ref.train_step(t[:, :-1], t[:, 1:])
            loss_diff = max(loss_diff, abs(a["loss"] - b["loss"]))
        got = read_unit_params(eng)
        want = {k: v.detach().cpu() for k, v in ref.model.state_dict().items()}
        attn = eng.attn
        eng.close()
    return {"max_rel_param_diff": max(((got[k] - want[k]).abs().max() / want[k].abs().max()).item() for k in want),
            "max_loss_diff": loss_diff, "attention_fused": float(attn.fused), "steps": steps}


def format_bench(res: dict[str, Any]) -> str:
    lines = [f"model {res['model_params'] / 1e6:.2f}M params, {res['tokens_per_step']} tokens/step, "
             f"{res['precision']}, clip {res['clip']}, device {res['device']}; plan (block 0) {res['plan']}; "
             f"activation bytes on SSD {res['activation_ssd_fraction']:.0%}",
             "floors: " + ", ".join(f"{k}={v:.3g}" for k, v in res["floors"].items())]
    for s, r in res["schedules"].items():
        extra = ""
        if "expected_ssd_read_bytes" in r:
            extra = (f" | SSD read {format_bytes(r['ssd_read_bytes'])} (analytic {format_bytes(r['expected_ssd_read_bytes'])})"
                     f" write {format_bytes(r['ssd_write_bytes'])} (analytic {format_bytes(r['expected_ssd_write_bytes'])})"
                     f" | pool peak {format_bytes(r['host_pool_peak_bytes'])} | predicted {r['predicted_step_s']:.3f}s "
                     f"({r['predicted_schedule']}, error {r['prediction_error']:+.0%})"
                     f" | fwd {r['forward_s']:.2f}s bwd-end {r['backward_end_s']:.2f}s tail {r['optimizer_tail_s']:.2f}s"
                     f" waits w/a/o {r['wait_weights_s']:.2f}/{r['wait_activations_s']:.2f}/{r['wait_optimizer_s']:.2f}s")
        lines.append(f"{s:>14}: step {r['median_step_s']:.3f}s [{r['min_step_s']:.3f}, {r['max_step_s']:.3f}] "
                     f"{r['tokens_per_s']:.0f} tok/s compute {r['compute_s']:.3f}s{extra}")
    for s, why in res.get("skipped", {}).items():
        lines.append(f"{s:>14}: not run ({why})")
    ds = res.get("deepspeed")
    if ds:
        lines.append(f"{'deepspeed':>14}: " + (f"step {ds['median_step_s']:.3f}s, peak RSS {format_bytes(ds['peak_rss_bytes'])}"
                                               f" (DeepSpeed {ds['deepspeed_version']}; {ds.get('ops_cache_line', '')})"
                                               if "median_step_s" in ds else f"FAILED: {ds['error']}"))
    f = res["schedules"].get("fuyou")
    if f:
        lines.append(f"fuyou / max(compute floor {f['compute_floor_s']:.2f}s [{f['compute_floor_from']}], "
                     f"bytes/bandwidth {f['io_bound_s']:.2f}s) = {f['overlap_ratio']:.2f} (issue target <= 1.25)")
    if "speedup_vs_zero_infinity" in res:
        lines.append(f"zero_infinity / fuyou = {res['speedup_vs_zero_infinity']:.2f}x (issue target >= 1.3)")
    if "speedup_vs_deepspeed" in res:
        lines.append(f"deepspeed / fuyou = {res['speedup_vs_deepspeed']:.2f}x")
    if "parity" in res:
        lines.append("parity vs in-memory AdamW: " + ", ".join(f"{k}={v:.3g}" for k, v in res["parity"].items()))
    lines.append(f"peak RSS {format_bytes(res['peak_rss_bytes'])}; hardware: {hardware_summary()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m fuyou_offload.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--host-budget-mib", type=int, default=1024, help="staging pool of each engine")
    ap.add_argument("--throttle-mb-s", type=float, default=None)
    ap.add_argument("--plan", default="auto", help="auto (cost model under the budget) | recompute")
    ap.add_argument("--clip", type=float, default=1.0, help="global-norm clip (the default config); 0: off")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--deepspeed-python", default=None,
                    help="interpreter of an environment with DeepSpeed (e.g. .venv-ds/bin/python): adds the real run")
    ap.add_argument("--parity", action="store_true", help="also the engine's parity against in-memory AdamW")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object (the GPU check reads it)")
    ap.add_argument("--work-dir", default=None, help="offload files (default: a temporary dir under runs/)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--io-backends", action="store_true",
                    help="also compare the thread pool with io_uring (needs the liburing package)")
    a = ap.parse_args(argv)
    mcfg = GPTConfig(vocab_size=a.vocab, hidden=a.hidden, layers=a.layers, heads=a.heads)
    Path("runs").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.work_dir or "runs", prefix="bench_") as d:
        res = bench_schedules(mcfg, d, batch=a.batch, seq=a.seq, host_budget=a.host_budget_mib << 20,
                              precision=a.precision, repeats=a.repeats,
                              throttle_bytes_per_s=a.throttle_mb_s * 1e6 if a.throttle_mb_s else None,
                              plan=a.plan, clip=a.clip or None, schedules=tuple(a.schedules.split(",")),
                              device=a.device, deepspeed_python=a.deepspeed_python)
        if a.parity:
            res["parity"] = parity(a.device, work_dir=Path(d))
        if a.io_backends:
            res["io_backends"] = io_backends(Path(d) / "io", 64 << 20)
    print(format_bench(res), file=sys.stderr if a.json else sys.stdout)
    if "io_backends" in res:
        print("O_DIRECT backends: " + ", ".join(f"{k}={v / 1e9:.2f} GB/s" for k, v in res["io_backends"].items()))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    if a.json:
        print(json.dumps({k: v for k, v in res.items() if k != "timeline"}))
    return res


if __name__ == "__main__":
    main()
