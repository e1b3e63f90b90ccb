"""The training loop: CLI smoke run, resume, SIGKILL at any point of a step, full disk, learning."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import common.config  # noqa: F401  (registers the shared config groups)
from common.checkpoint import ResumeError
from common.logging import read_jsonl
from fuyou_offload.storage import OffloadDiskFullError
from fuyou_offload.training import committed_params, parse_bytes, run

REPO = Path(__file__).resolve().parents[2]


def smoke_cfg(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "fuyou_offload" / "conf")):
        cfg = compose("config", overrides=["experiment=smoke", f"paths.output_dir={tmp_path}", *overrides])
    return cfg


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes(4096) == 4096
    with pytest.raises(ValueError, match="cannot read"):
        parse_bytes("two gigs")


def test_clip_overlap_default_is_the_one_the_full_run_measured_faster(tmp_path):
    """The protocol flipped ``offload.clip_overlap`` to ``after_backward`` on the first full run's trade row:
    the Hydra config, the typed schema and the library's EngineConfig must agree on it."""
    from fuyou_offload.config import FuyouConfig
    from fuyou_offload.engine import EngineConfig

    cfg = smoke_cfg(tmp_path)
    assert str(cfg.offload.clip_overlap) == "after_backward" == EngineConfig().clip_overlap
    assert str(FuyouConfig().offload.clip_overlap) == "after_backward"


def test_train_cli_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "fuyou_offload.train", "experiment=smoke", f"paths.output_dir={tmp_path}",
           "trainer.max_steps=2"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "fuyou_smoke"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["ssd_read_bytes"] == rows[-1]["expected_ssd_read_bytes"] > 0
    assert rows[-1]["peak_rss_bytes"] > 0 and rows[-1]["tokens_per_s"] > 0
    assert "predicted" in out.stderr + out.stdout
    # a second plain run refuses to overwrite the committed run (checked in-process: no second start-up)
    with pytest.raises(ResumeError, match="resume=auto"):
        run(smoke_cfg(tmp_path, "trainer.max_steps=2"), run_dir)


def _run_child(cfg, run_dir, crash_at):
    os.environ["FUYOU_CRASH_AT"] = crash_at
    run(cfg, run_dir)


@pytest.mark.parametrize("points", [
    ("opt_block1_chunk0", "after_commit"),
    pytest.param(("fwd_block1", "bwd_block0", "opt_ends_chunk0", "before_commit"), marks=pytest.mark.slow),
])
def test_resume_after_sigkill_anywhere_equals_an_uninterrupted_run(tmp_path, points):
    ref_cfg = smoke_cfg(tmp_path / "ref")
    run(ref_cfg, tmp_path / "ref" / "run")
    want = committed_params(ref_cfg, tmp_path / "ref" / "run")
    ctx = multiprocessing.get_context("fork")
    for point in points:
        d = tmp_path / point
        cfg = smoke_cfg(d)
        p = ctx.Process(target=_run_child, args=(cfg, d / "run", f"2:{point}"))
        p.start()
        p.join(60)
        assert p.exitcode == -9, point  # SIGKILLed inside step 2
        resumed = smoke_cfg(d, "resume=auto")
        summary = run(resumed, d / "run")
        assert summary["step"] == 3
        got = committed_params(resumed, d / "run")
        assert all(torch.equal(got[k], want[k]) for k in want), point


def test_full_disk_mid_step_keeps_the_committed_state(tmp_path, monkeypatch):
    cfg = smoke_cfg(tmp_path, "trainer.max_steps=1")
    run(cfg, tmp_path / "run")
    before = committed_params(cfg, tmp_path / "run")
    real = os.pwritev
    calls = {"n": 0}

    def flaky(fd, bufs, off):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", flaky)
    with pytest.raises(OffloadDiskFullError, match="last committed step is intact"):
        run(smoke_cfg(tmp_path, "trainer.max_steps=2", "resume=auto"), tmp_path / "run")
    monkeypatch.setattr(os, "pwritev", real)
    after = committed_params(cfg, tmp_path / "run")
    assert all(torch.equal(before[k], after[k]) for k in before)
    summary = run(smoke_cfg(tmp_path, "trainer.max_steps=2", "resume=auto"), tmp_path / "run")
    assert summary["step"] == 2


def test_learns_the_synthetic_cycle(tmp_path):
    cfg = smoke_cfg(tmp_path, "trainer.max_steps=30", "optim.lr=2e-2", "seq_len=16", "plot_loss=true")
    summary = run(cfg, tmp_path / "run")
    assert summary["final_loss"] < 0.3 * summary["first_loss"], summary["losses"]
    assert (tmp_path / "run" / "loss.png").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 30


def test_in_memory_schedule_checkpoints_and_resumes(tmp_path):
    run(smoke_cfg(tmp_path, "schedule=in_memory", "trainer.max_steps=2"), tmp_path / "run")
    s2 = run(smoke_cfg(tmp_path, "schedule=in_memory", "trainer.max_steps=3", "resume=auto"), tmp_path / "run")
    assert s2["step"] == 3 and len(s2["losses"]) == 1


def test_auto_plan_profiles_then_replans(tmp_path):
    cfg = smoke_cfg(tmp_path, "offload.plan=auto", "trainer.max_steps=3", "offload.profile_io_bytes=1MiB")
    summary = run(cfg, tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r.get("profiling_step", 0) for r in rows] == [1, 1, 0]
    assert summary["predicted_step_s"] > 0
    last = rows[-1]
    assert last["ssd_read_bytes"] == last["expected_ssd_read_bytes"]
    assert last["activation_host_bytes"] == last["expected_activation_host_bytes"]
