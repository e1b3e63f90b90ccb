"""label_efficient_seg never runs code from a checkpoint (issue 29): ``resume=<path>`` of the train shell
refuses a planted pickle (its unpickling creates a marker file) in one line, for a one-phase method and
for CAM's classifier-then-segmenter. Its own checkpoints load without trust: the exact epoch-boundary and
mid-epoch resume tests in test_cli.py go through the same safe loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evil_pickle import assert_refused, plant, run_task

TINY = ["experiment=smoke", "data.shapes_n=8", "data.shapes_size=16", "data.crop=16", "trainer.batch_size=4",
        "logger.tensorboard=false"]


@pytest.mark.parametrize("method", ["scribbles", "cam"])
def test_train_resume_path_refuses_a_planted_pickle(tmp_path, capsys, method):
    from label_efficient_seg import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = [*TINY, f"method={method}", f"paths.output_dir={tmp_path}", "name=run", f"resume={evil}"]
    assert_refused(run_task(train.main, Path(train.__file__).parent / "conf", argv, capsys), evil, marker)
