"""Benchmark helpers and run info."""

import json

import numpy as np

from common.bench import (
    compare,
    current_rss_bytes,
    format_bytes,
    peak_rss_bytes,
    ratio,
    reset_peak_rss,
    time_fn,
)
from common.runinfo import hardware_summary, write_run_info


def test_peak_rss_sees_a_large_allocation():
    # Compare against the *current* RSS: the earlier peak of a long pytest process may lie above it
    # (and clear_refs may be refused in a sandbox), so "peak before" is no baseline.
    reset_peak_rss()
    resident_before = current_rss_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched (fresh mmap pages)
    assert peak_rss_bytes() >= resident_before + 60 * 2**20
    assert peak_rss_bytes() >= current_rss_bytes()
    del block


def test_time_fn_and_compare():
    t = time_fn(lambda: sum(range(1000)), warmup=1, repeats=3, items_per_call=1000)
    assert len(t.times) == 3 and t.throughput > 0
    res = compare({"fast": lambda: sum(range(100)), "slow": lambda: sum(range(200_000))}, repeats=3)
    assert ratio(res, "fast", "slow") > 1
    assert format_bytes(3 * 2**30) == "3.0 GiB"


def test_run_info_records_commit_versions_hardware_and_wall_clock(tmp_path):
    info = write_run_info(tmp_path, extra={"note": "x"})
    info.finish(final_step=3)
    data = json.loads((tmp_path / "run_info.json").read_text())
    assert {"commit", "versions", "hardware", "sessions", "wall_seconds_total"} <= set(data)
    assert data["versions"]["torch"] and data["final_step"] == 3 and data["note"] == "x"
    write_run_info(tmp_path).finish()  # a resumed run appends a session
    assert len(json.loads((tmp_path / "run_info.json").read_text())["sessions"]) == 2
    assert "cores" in hardware_summary()


def test_git_dirty_ignores_reports_but_not_code(tmp_path):
    """A reproduce run that updates committed reports package after package must not mark the later
    reports as made from uncommitted code; a change to code still does."""
    import subprocess

    from common.runinfo import git_commit

    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.json").write_text("1")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "reports" / "r.json").write_text("2")
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path)["dirty"] is True
