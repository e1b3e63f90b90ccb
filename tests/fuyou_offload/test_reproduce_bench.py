"""The reproduce smoke profile and the side-by-side benchmark, at toy scale."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from common.gpu_check import discovered_benches, last_json_object
from fuyou_offload.bench import GPU_CHECK_ARGS, bench_schedules, format_bench, io_bound_seconds
from fuyou_offload.bench import main as bench_main
from fuyou_offload.model import GPTConfig
from fuyou_offload.planner import Profile
from fuyou_offload.reproduce import main as reproduce_main


@pytest.mark.slow  # ~6-9 s; CI runs this profile end to end anyway (`make check` compares every number)
def test_reproduce_smoke_profile_writes_report(tmp_path):
    reproduce_main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"),
                    "--work-dir", str(tmp_path / "work")])
    out = tmp_path / "reports" / "fuyou_offload"
    report = (out / "report.md").read_text()
    assert "speedup over the faithful ZeRO-Infinity model" in report and "figures_smoke.png" in report
    res = json.loads((out / "results.json").read_text())
    extra = res["extra"] if "extra" in res else res
    assert "equivalence" in json.dumps(res)
    # capacity is the whole process through the CLI: the child's peak RSS, far above the staging pool's peak
    cap = extra["capacity"]
    assert cap and all(c["peak_rss_bytes"] > 10 * (c["pool_peak_bytes"] or 0) for c in cap if c["fits"])
    assert (out / "figures_smoke.png").exists()


def test_bench_runs_the_schedules_side_by_side_with_a_compute_floor_without_overlap(tmp_path):
    cfg = GPTConfig(vocab_size=64, hidden=32, layers=2, heads=4)
    res = bench_schedules(cfg, tmp_path, batch=1, seq=16, repeats=1, warmup=1, profile=Profile())
    assert set(res["schedules"]) == {"fuyou", "zero_infinity", "fuyou_serial", "in_memory"}
    for s in ("fuyou", "zero_infinity", "fuyou_serial"):
        r = res["schedules"][s]
        assert r["ssd_read_bytes"] == r["expected_ssd_read_bytes"] and r["ssd_write_bytes"] == r["expected_ssd_write_bytes"]
        assert r["predicted_step_s"] > 0 and "prediction_error" in r
    # zero_infinity reads the fp32 gradients back in step(): more SSD reads than fuyou
    assert res["schedules"]["zero_infinity"]["ssd_read_bytes"] > res["schedules"]["fuyou"]["ssd_read_bytes"]
    f = res["schedules"]["fuyou"]
    # the overlap ratio's compute time comes from the run without overlap, not fuyou's own (inflated) one
    assert f["compute_floor_from"].startswith("fuyou_serial")
    assert f["compute_floor_s"] == res["schedules"]["fuyou_serial"]["compute_s"]
    assert res["schedules"]["zero_infinity"]["predicted_schedule"] == "zero3"
    assert "zero_infinity / fuyou" in format_bench(res)


@pytest.mark.parametrize("budget_kib", [2000, 4000, 6000])
def test_auto_plan_with_ssd_activations_runs_within_the_pool_clip_off(tmp_path, budget_kib):
    """Regression (fuyou full run, cell '1 x SSD, clip None'): the auto plan left the SSD activations'
    staging to the pool's headroom and backward raised HostBudgetError mid-step. Each of these budgets
    failed that way on the old planner; the plan puts activations on SSD and the pool now holds."""
    cfg = GPTConfig(vocab_size=256, hidden=64, layers=6, heads=4, intermediate=256)
    prof = Profile(flops_per_s=1e9, ssd_read_bps=1e10, ssd_write_bps=1e10, memcpy_bps=1e10)
    res = bench_schedules(cfg, tmp_path, batch=4, seq=64, repeats=1, warmup=1, profile=prof, clip=None,
                          host_budget=budget_kib << 10, schedules=("fuyou",))
    f = res["schedules"]["fuyou"]
    assert f["ssd_read_bytes"] == f["expected_ssd_read_bytes"] > 0


def test_io_floor_uses_the_throttle_when_it_is_the_bottleneck():
    prof = Profile(ssd_read_bps=1e9, ssd_write_bps=2e9)
    assert io_bound_seconds(10**9, 2 * 10**9, prof) == 2.0  # 1 s of reads + 1 s of writes
    # one bucket at 0.5 GB/s meters both directions: 3 GB take 6 s
    assert io_bound_seconds(10**9, 2 * 10**9, prof, throttle_bytes_per_s=5e8) == 6.0
    # a throttle above the drive's own bandwidth changes nothing
    assert io_bound_seconds(10**9, 2 * 10**9, prof, throttle_bytes_per_s=1e10) == 2.0


def test_gpu_check_runs_the_bench_and_reads_its_json(tmp_path):
    """``make gpu-check`` picks up GPU_CHECK_ARGS; the same command on the CPU, at toy size, prints the JSON
    object the check parses, with TFLOPS and the parity against in-memory AdamW."""
    assert discovered_benches()["fuyou_offload"] == GPU_CHECK_ARGS and "cuda" in GPU_CHECK_ARGS
    args = list(GPU_CHECK_ARGS)
    for key, value in (("--device", "cpu"), ("--hidden", "32"), ("--layers", "2"), ("--heads", "4"),
                       ("--vocab", "64"), ("--batch", "1"), ("--seq", "16"), ("--repeats", "1"),
                       ("--host-budget-mib", "64")):
        args[args.index(key) + 1] = value
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        bench_main(args + ["--work-dir", str(tmp_path)])
    obj = last_json_object(out.getvalue())
    assert obj["parity"]["max_rel_param_diff"] <= 1e-6
    assert obj["schedules"]["fuyou"]["model_tflops"] > 0 and obj["precision"] == "bf16"


def test_deepspeed_run_failure_is_reported_with_its_error(tmp_path):
    """Without DeepSpeed in the given interpreter the bench keeps going and records the exact error line."""
    import importlib.util
    import sys

    from fuyou_offload.bench import run_deepspeed

    if importlib.util.find_spec("deepspeed") is not None:
        import pytest

        pytest.skip("DeepSpeed is installed in this interpreter")
    res = run_deepspeed(sys.executable, GPTConfig(vocab_size=64, hidden=32, layers=2, heads=4), tmp_path, batch=1,
                        seq=16, precision="fp32", clip=1.0, budget=64 << 20, repeats=1, warmup=1, timeout=120)
    assert "No module named 'deepspeed'" in res["error"] and res["returncode"] != 0
    assert "fuyou_offload.deepspeed_run" in res["command"]
