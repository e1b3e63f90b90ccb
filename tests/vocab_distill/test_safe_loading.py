"""vocab_distill never runs code from a checkpoint or stage output (issue 29).

``resume=<path>`` is refused by the multi-stage pipeline before anything is loaded (every stage resumes
from its own checkpoints with ``resume=auto``); a run directory with a planted pickle (its unpickling
creates a marker file) as a stage's newest checkpoint is refused in one line under ``resume=auto``, and so
is a planted stage-I ``student_embeddings.pt``. Stage I now writes E_s as safetensors + JSON; the exports
are transformers folders (``model.safetensors``). Its own checkpoints load without trust: test_learning's
exact stage-I resume test goes through the same safe loader.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.checkpoint import UntrustedCheckpointError, save_checkpoint, save_safetensors
from tests.evil_pickle import assert_refused, plant, run_task

SMOKE = ["experiment=smoke", "pipeline.schedule=joint", "pipeline.methods=[dual_proj]",
         "pipeline.tasks=[snips_intent]", "pipeline.finetune_teacher=false", "logger.tensorboard=false"]


def test_train_resume_path_is_refused_before_loading(tmp_path, capsys):
    from vocab_distill import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    err = run_task(train.main, Path(train.__file__).parent / "conf",
                   [*SMOKE, f"paths.output_dir={tmp_path}", f"resume={evil}"], capsys)
    assert not marker.exists() and "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error:" in ln and "resume=auto" in ln and str(evil) in ln]


def test_planted_stage_checkpoint_is_refused_under_resume_auto(tmp_path, capsys):
    from vocab_distill import train

    evil = tmp_path / "vocab_distill_smoke" / "teacher" / "adapt" / "checkpoints" / "step_9.pt"
    marker = plant(evil)
    err = run_task(train.main, Path(train.__file__).parent / "conf",
                   [*SMOKE, f"paths.output_dir={tmp_path}", "resume=auto"], capsys)
    assert_refused(err, evil, marker)


def test_student_embeddings_safe_round_trip_and_planted_pickle(tmp_path):
    from vocab_distill.pipeline import STUDENT_EMBEDDINGS, load_student_embeddings

    w = torch.randn(7, 4)
    new, old = tmp_path / "new", tmp_path / "old"
    save_safetensors(new / STUDENT_EMBEDDINGS, {"weight": w})
    save_checkpoint(old / "student_embeddings.pt", w)  # a run from before the change: a bare tensor pickle
    assert torch.equal(load_student_embeddings(new), w) and torch.equal(load_student_embeddings(old), w)
    evil = tmp_path / "evil" / "student_embeddings.pt"
    marker = plant(evil)
    with pytest.raises(UntrustedCheckpointError) as exc:
        load_student_embeddings(evil.parent)
    line = assert_refused(str(exc.value), evil, marker, how="trust=True")
    assert "python -m common.checkpoint convert" in line
