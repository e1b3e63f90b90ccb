"""scpo_rl never runs code from a checkpoint (issue 29): the train shell's ``resume=<path>`` and
``load_agent`` (how the reproduce evaluation reads a run directory) refuse a planted pickle (its unpickling
creates a marker file) in one line. Its own checkpoints (replay buffer, PCG64 states, MuJoCo state) load
without trust: test_loop.py's kill-and-resume test goes through the same safe loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.checkpoint import UntrustedCheckpointError
from tests.evil_pickle import assert_refused, plant, run_task


def test_train_resume_path_refuses_a_planted_pickle(tmp_path, capsys):
    from scpo_rl import train

    conf = Path(train.__file__).parent / "conf"
    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = ["experiment=smoke", "algo=sac", "trainer.max_steps=80", "rl.learning_starts=40",
            f"paths.output_dir={tmp_path}", "name=smoke", f"resume={evil}", "logger.tensorboard=false"]
    assert_refused(run_task(train.main, conf, argv, capsys), evil, marker)


def test_load_agent_refuses_a_planted_pickle(tmp_path):
    from scpo_rl.loop import load_agent

    evil = tmp_path / "step_80.pt"
    marker = plant(evil)
    with pytest.raises(UntrustedCheckpointError) as exc:
        load_agent(evil)
    assert_refused(str(exc.value), evil, marker, how="trust=True")
