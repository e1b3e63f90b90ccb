"""Atomic checkpoints survive a crash mid-write; resume resolution; RNG round trip; cached stage results."""

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.checkpoint import (
    CheckpointManager,
    ResumeError,
    cached_result,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    resumable_map,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]

CRASH_MID_WRITE = r"""
import os, signal, sys, torch
sys.path.insert(0, {repo!r})
from common.checkpoint import CheckpointManager, atomic_write
mgr = CheckpointManager({run!r})
mgr.save(1, {{"step": 1, "w": torch.ones(1000)}})
def half_then_die(f):
    f.write(b"PK" + b"x" * 100000)   # part of a file, then the process is killed
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(mgr.dir / "step_2.pt", half_then_die)
"""


def test_crash_while_writing_leaves_previous_checkpoint_loadable(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_MID_WRITE.format(repo=str(REPO), run=str(tmp_path / "run")))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120)
    assert proc.returncode == -9
    mgr = CheckpointManager(tmp_path / "run")
    assert mgr.latest().name == "step_1.pt"  # the half-written temp file is never taken for a checkpoint
    assert torch.equal(load_checkpoint(mgr.latest())["w"], torch.ones(1000))
    assert not (mgr.dir / "step_2.pt").exists()


def test_keep_last_and_resolve_resume(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.resolve_resume("never") is None and mgr.resolve_resume("auto") is None
    for step in (5, 10, 15):
        mgr.save(step, {"step": step})
    assert [s for s, _ in mgr.step_checkpoints()] == [10, 15]
    assert mgr.resolve_resume("auto").name == "step_15.pt"
    with pytest.raises(ResumeError, match="resume=auto"):
        mgr.resolve_resume("never")
    assert mgr.resolve_resume(str(mgr.dir / "step_10.pt")).name == "step_10.pt"
    with pytest.raises(ResumeError, match="no such checkpoint"):
        mgr.resolve_resume(str(tmp_path / "nope.pt"))


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="bad.pt is unreadable"):
        load_checkpoint(bad)


def test_rng_state_round_trip(tmp_path):
    state = capture_rng_state()
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_cached_result_computes_once_per_params(tmp_path):
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"value": value, "pair": (1, 2)}
        return run

    path = tmp_path / "stage" / "result.json"
    first = cached_result(path, {"n": 3, "sizes": (1, 2)}, compute(1))
    again = cached_result(path, {"n": 3, "sizes": [1, 2]}, compute(2))  # same params after a JSON round trip
    assert calls == [1] and first == again == {"value": 1, "pair": [1, 2]}
    changed = cached_result(path, {"n": 4, "sizes": [1, 2]}, compute(3))  # other params: recomputed
    assert calls == [1, 3] and changed["value"] == 3
    assert cached_result(path, {"n": 4, "sizes": [1, 2]}, compute(4), enabled=False)["value"] == 4
    path.write_text("{torn")  # a torn file is recomputed, not an error
    assert cached_result(path, {"n": 4, "sizes": [1, 2]}, compute(5))["value"] == 5


KILLED_MID_MAP = r"""
import os, signal, sys
sys.path.insert(0, {repo!r})
from common.checkpoint import resumable_map
def square(x):
    if x == 5:
        with open({path!r}, "a") as f:
            f.write('{{"half')  # a result line torn by the kill
        os.kill(os.getpid(), signal.SIGKILL)
    return {{"x": x, "sq": x * x}}
resumable_map(square, list(range(8)), {path!r}, {{"run": 1}}, show_progress=False)
"""


def test_resumable_map_killed_mid_way_continues_where_it_stopped(tmp_path):
    path = tmp_path / "items.jsonl"
    script = tmp_path / "kill.py"
    script.write_text(KILLED_MID_MAP.format(repo=str(REPO), path=str(path)))
    assert subprocess.run([sys.executable, str(script)], timeout=120).returncode == -9
    calls = []

    def square(x):
        calls.append(x)
        return {"x": x, "sq": x * x}

    out = resumable_map(square, list(range(8)), path, {"run": 1}, show_progress=False)
    assert calls == [5, 6, 7]  # 0-4 were read back; the torn line was dropped
    assert out == [{"x": x, "sq": x * x} for x in range(8)]
    assert len(path.read_text().splitlines()) == 9  # header + 8 results, no torn fragment
    assert resumable_map(square, list(range(8)), path, {"run": 1}, show_progress=False) == out
    assert calls == [5, 6, 7]  # all read back
    resumable_map(square, list(range(8)), path, {"run": 2}, show_progress=False)  # other params: redone
    resumable_map(square, list(range(8)), path, {"run": 2}, enabled=False, show_progress=False)
    assert calls == [5, 6, 7] + list(range(8)) * 2
    resumable_map(square, list(range(3)), path, {"run": 2}, show_progress=False)  # other item count
    assert calls[-3:] == [0, 1, 2]
