"""meta_multilabel never runs code from a checkpoint (issue 29): both resume loads (the meta loop's and
the baselines') refuse a planted pickle (its unpickling creates a marker file) given as ``resume=<path>``,
in one line. Its own checkpoints (numpy thresholds, histories, RNG states) load without trust: the exact
resume tests in test_meta.py go through the same safe loader."""

from __future__ import annotations

import pytest

from tests.evil_pickle import assert_refused, plant, run_main

SYNTHETIC = ["data=synthetic", "features=raw", "meta.episodes=2", "meta.inner_epochs=1",
             "meta.warmup_epochs=1", "meta.hidden=8", "meta.label_dim=4", "classifier.batch_size=128",
             "classifier.epochs=1", "trainer.progress_bar=false", "logger.tensorboard=false"]


@pytest.mark.parametrize("method", ["meta", "uniform"])
def test_train_resume_path_refuses_a_planted_pickle(tmp_path, monkeypatch, capsys, method):
    from meta_multilabel import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = [f"paths.output_dir={tmp_path}", "name=syn", f"method={method}", f"resume={evil}", *SYNTHETIC]
    assert_refused(run_main(train.main, argv, monkeypatch, capsys), evil, marker)
