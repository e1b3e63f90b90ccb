"""The reproduce smoke profile and the side-by-side benchmark, at toy scale."""

from __future__ import annotations

import json

from fuyou_offload.bench import bench_schedules, format_bench
from fuyou_offload.model import GPTConfig
from fuyou_offload.planner import Profile
from fuyou_offload.reproduce import main as reproduce_main


def test_reproduce_smoke_profile_writes_report(tmp_path):
    reproduce_main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"),
                    "--work-dir", str(tmp_path / "work")])
    out = tmp_path / "reports" / "fuyou_offload"
    report = (out / "report.md").read_text()
    assert "speedup over zero_infinity" in report and "figures.png" in report
    res = json.loads((out / "results.json").read_text())
    text = json.dumps(res)
    assert "equivalence_max_rel_diff" in text
    assert (out / "figures.png").exists()


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
