"""``python -m fuyou_offload.bench``: this machine's floors, then the three schedules side by side.

Floors: O_DIRECT read/write bandwidth, GEMM rate, memcpy, AdamW rate. Schedules: ``fuyou``,
``zero_infinity`` and ``in_memory`` train the same model on the same batches, interleaved step by
step (``common.bench.compare``), and the report gives each one's median step time, tokens/s, SSD
bytes per step (beside the analytic count), host pool peak and the two overlap ratios of issue #3:
fuyou / max(compute, bytes / bandwidth) and zero_infinity / fuyou.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.bench import compare, format_bytes, peak_rss_bytes
from common.runinfo import hardware_summary

from .baseline import InMemoryTrainer
from .engine import EngineConfig, OffloadEngine, OptimConfig
from .model import GPTConfig, init_gpt
from .planner import BlockPlan, Profile, choose_plan, predict_step
from .profiling import io_backends, measure_floors


def bench_schedules(mcfg: GPTConfig, work_dir: str | Path, *, batch: int = 4, seq: int = 64,
                    host_budget: int = 1 << 30, precision: str = "fp32", repeats: int = 3, warmup: int = 1,
                    throttle_bytes_per_s: float | None = None, plan: str | list[BlockPlan] = "recompute",
                    clip: float | None = None, schedules=("fuyou", "zero_infinity", "in_memory"),
                    profile: Profile | None = None, queue_depth: int = 4, seed: int = 0) -> dict[str, Any]:
    """Time the schedules on one model; returns per-schedule medians and the overlap ratios."""
    work_dir = Path(work_dir)
    model = init_gpt(mcfg, seed)
    optim = OptimConfig(lr=1e-4, clip_grad_norm=clip)
    el = 2 if precision == "bf16" else 4
    if profile is None:
        profile, _ = measure_floors(work_dir / "floors", io_bytes=32 << 20, throttle=throttle_bytes_per_s,
                                    model=mcfg, batch=batch, seq=seq, dtype=torch.bfloat16 if el == 2 else torch.float32)
    if plan == "auto":
        plans, _ = choose_plan(mcfg, profile, batch=batch, seq=seq, compute_elem=el, host_bytes_free=host_budget // 4)
    elif plan == "recompute":
        plans = [BlockPlan() for _ in range(mcfg.layers)]
    else:
        plans = list(plan)
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, mcfg.vocab_size, (64, batch, seq + 1), generator=g)
    trainers: dict[str, Any] = {}
    for s in schedules:
        if s == "in_memory":
            trainers[s] = InMemoryTrainer(copy.deepcopy(model), optim, precision)
            continue
        ec = EngineConfig(schedule=s, compute_dtype=precision, host_budget=host_budget, queue_depth=queue_depth,
                          throttle_bytes_per_s=throttle_bytes_per_s, opt_chunk_elems=1 << 20)
        eng = OffloadEngine(mcfg, ec, optim, state_dir=work_dir / s / "state", run_dir=work_dir / s / "run",
                            plans=plans, batch=batch, seq=seq)
        eng.open(copy.deepcopy(model), resume="never")
        trainers[s] = eng
    rows: dict[str, list[dict]] = {s: [] for s in schedules}
    counters = {s: 0 for s in schedules}

    def stepper(name):
        def fn():
            i = counters[name] % data.shape[0]
            counters[name] += 1
            rows[name].append(trainers[name].train_step(data[i, :, :-1], data[i, :, 1:]))
        return fn

    try:
        timings = compare({s: stepper(s) for s in schedules}, warmup=warmup, repeats=repeats,
                          items_per_call=batch * seq)
    finally:
        for s, t in trainers.items():
            if s != "in_memory":
                t.close()
    out: dict[str, Any] = {"model_params": mcfg.num_params(), "tokens_per_step": batch * seq,
                           "floors": profile.__dict__, "schedules": {}}
    for s in schedules:
        steady = rows[s][warmup:]

        def med(k: str, steady=steady) -> float:
            return statistics.median(r[k] for r in steady)

        info = {"median_step_s": timings[s].median, "min_step_s": timings[s].min, "max_step_s": timings[s].max,
                "tokens_per_s": timings[s].throughput, "compute_s": med("compute_s"),
                "ssd_read_bytes": steady[-1]["ssd_read_bytes"], "ssd_write_bytes": steady[-1]["ssd_write_bytes"]}
        if s != "in_memory":
            info.update(expected_ssd_read_bytes=steady[-1]["expected_ssd_read_bytes"],
                        expected_ssd_write_bytes=steady[-1]["expected_ssd_write_bytes"],
                        host_pool_peak_bytes=max(r["host_pool_peak_bytes"] for r in steady),
                        optimizer_tail_s=med("optimizer_tail_s"),
                        predicted_step_s=predict_step(mcfg, trainers[s].plans, profile, batch=batch, seq=seq,
                                                      compute_elem=el, schedule="overlap" if s == "fuyou" else "zero3",
                                                      grads_to_ssd=trainers[s].grads_to_ssd).total_s)
        out["schedules"][s] = info
    if "fuyou" in out["schedules"]:
        f = out["schedules"]["fuyou"]
        io_s = io_bound_seconds(f["ssd_read_bytes"], f["ssd_write_bytes"], profile, throttle_bytes_per_s)
        f["io_bound_s"] = io_s
        f["overlap_ratio"] = f["median_step_s"] / max(f["compute_s"], io_s)
        if "zero_infinity" in out["schedules"]:
            out["speedup_vs_zero_infinity"] = out["schedules"]["zero_infinity"]["median_step_s"] / f["median_step_s"]
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


def format_bench(res: dict[str, Any]) -> str:
    lines = [f"model {res['model_params'] / 1e6:.2f}M params, {res['tokens_per_step']} tokens/step",
             "floors: " + ", ".join(f"{k}={v:.3g}" for k, v in res["floors"].items())]
    for s, r in res["schedules"].items():
        extra = ""
        if "expected_ssd_read_bytes" in r:
            extra = (f" | SSD read {format_bytes(r['ssd_read_bytes'])} (analytic {format_bytes(r['expected_ssd_read_bytes'])})"
                     f" write {format_bytes(r['ssd_write_bytes'])} (analytic {format_bytes(r['expected_ssd_write_bytes'])})"
                     f" | pool peak {format_bytes(r['host_pool_peak_bytes'])} | predicted {r['predicted_step_s']:.3f}s")
        lines.append(f"{s:>14}: step {r['median_step_s']:.3f}s [{r['min_step_s']:.3f}, {r['max_step_s']:.3f}] "
                     f"{r['tokens_per_s']:.0f} tok/s compute {r['compute_s']:.3f}s{extra}")
    f = res["schedules"].get("fuyou")
    if f:
        lines.append(f"fuyou / max(compute, bytes/bandwidth) = {f['overlap_ratio']:.2f} (issue target <= 1.25)")
    if "speedup_vs_zero_infinity" in res:
        lines.append(f"zero_infinity / fuyou = {res['speedup_vs_zero_infinity']:.2f}x (issue target >= 1.5)")
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
    ap.add_argument("--host-budget-mib", type=int, default=1024)
    ap.add_argument("--throttle-mb-s", type=float, default=None)
    ap.add_argument("--plan", default="recompute", help="recompute | auto")
    ap.add_argument("--clip", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=3)
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
                              plan=a.plan, clip=a.clip)
        if a.io_backends:
            res["io_backends"] = io_backends(Path(d) / "io", 64 << 20)
    print(format_bench(res))
    if "io_backends" in res:
        print("O_DIRECT backends: " + ", ".join(f"{k}={v / 1e9:.2f} GB/s" for k, v in res["io_backends"].items()))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
