"""The reproduce smoke profile and the side-by-side benchmark, at toy scale."""

from __future__ import annotations

import json

from fuyou_offload.bench import bench_schedules, format_bench, io_bound_seconds
from fuyou_offload.model import GPTConfig
from fuyou_offload.planner import Profile
from fuyou_offload.reproduce import main as reproduce_main


def test_reproduce_smoke_profile_writes_report(tmp_path):
    reproduce_main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"),
                    "--work-dir", str(tmp_path / "work")])
    out = tmp_path / "reports" / "fuyou_offload"
    report = (out / "report.md").read_text()
    assert "speedup over zero_infinity" in report and "figures_smoke.png" in report
    res = json.loads((out / "results.json").read_text())
    text = json.dumps(res)
    assert "equivalence_max_rel_diff" in text
    assert (out / "figures_smoke.png").exists()


def test_bench_runs_the_three_schedules_side_by_side(tmp_path):
    cfg = GPTConfig(vocab_size=64, hidden=32, layers=2, heads=4)
    res = bench_schedules(cfg, tmp_path, batch=1, seq=16, repeats=1, warmup=1, profile=Profile())
    assert set(res["schedules"]) == {"fuyou", "zero_infinity", "in_memory"}
    for s in ("fuyou", "zero_infinity"):
        r = res["schedules"][s]
        assert r["ssd_read_bytes"] == r["expected_ssd_read_bytes"] and r["ssd_write_bytes"] == r["expected_ssd_write_bytes"]
    # zero_infinity reloads every block in backward; fuyou keeps the last one resident
    assert res["schedules"]["zero_infinity"]["ssd_read_bytes"] > res["schedules"]["fuyou"]["ssd_read_bytes"]
    assert "zero_infinity / fuyou" in format_bench(res)


def test_io_floor_uses_the_throttle_when_it_is_the_bottleneck():
    prof = Profile(ssd_read_bps=1e9, ssd_write_bps=2e9)
    assert io_bound_seconds(10**9, 2 * 10**9, prof) == 2.0  # 1 s of reads + 1 s of writes
    # one bucket at 0.5 GB/s meters both directions: 3 GB take 6 s
    assert io_bound_seconds(10**9, 2 * 10**9, prof, throttle_bytes_per_s=5e8) == 6.0
    # a throttle above the drive's own bandwidth changes nothing
    assert io_bound_seconds(10**9, 2 * 10**9, prof, throttle_bytes_per_s=1e10) == 2.0
