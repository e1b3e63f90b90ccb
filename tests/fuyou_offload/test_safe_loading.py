"""fuyou_offload never runs code from a checkpoint or offload manifest (issue 29): ``resume=<path>`` of the
train shell refuses a planted pickle (its unpickling creates a marker file) in one line, with the
offloaded engine (its manifest) and with the in-memory schedule. Its own manifests and checkpoints load
without trust: test_train.py's kill-anywhere resume test goes through the same safe loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evil_pickle import assert_refused, plant, run_task


@pytest.mark.parametrize("schedule", ["fuyou", "in_memory"])
def test_train_resume_path_refuses_a_planted_pickle(tmp_path, capsys, schedule):
    from fuyou_offload import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = ["experiment=smoke", f"paths.output_dir={tmp_path}", f"schedule={schedule}", "trainer.max_steps=1",
            f"resume={evil}", "logger.tensorboard=false"]
    err = run_task(train.main, Path(train.__file__).parent / "conf", argv, capsys)
    assert_refused(err, evil, marker)
