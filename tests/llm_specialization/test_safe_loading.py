"""llm_specialization never runs code from a checkpoint (issue 29): the train shell's ``resume=<path>``
refuses a planted pickle (its unpickling creates a marker file) in one line before a trained rung
starts. Its own checkpoints load without trust: the LoRA resume tests (rec-tuning's wall-clock carried
over two sessions, the slow CLI resume) go through the same safe loader, as do the kNN-LM store's parts."""

from __future__ import annotations

import pytest

from tests.evil_pickle import assert_refused, plant, run_main


def test_train_resume_path_refuses_a_planted_pickle(tmp_path, monkeypatch, capsys):
    from llm_specialization import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = ["experiment=smoke", "method=[lora]", f"paths.output_dir={tmp_path}", f"resume={evil}",
            "logger.tensorboard=false"]
    assert_refused(run_main(train.main, argv, monkeypatch, capsys), evil, marker)


def test_knn_store_parts_refuse_a_planted_pickle(tmp_path):
    """The datastore's saved parts live in a run directory that may come from elsewhere."""
    import json

    import torch

    from common.checkpoint import UntrustedCheckpointError
    from llm_specialization.knn_lm import _Parts

    ids = torch.arange(50)
    parts = _Parts(tmp_path / "store", ids, window=16, stride=8)
    parts.load()  # writes meta.json for this stream
    assert json.loads((tmp_path / "store" / "meta.json").read_text()) == parts.meta
    evil = tmp_path / "store" / "part_0000000.pt"
    marker = plant(evil)
    with pytest.raises(UntrustedCheckpointError) as exc:
        _Parts(tmp_path / "store", ids, window=16, stride=8).load()
    assert_refused(str(exc.value), evil, marker, how="trust=True")
