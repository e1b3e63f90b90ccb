"""joint_bert_nlu never runs code from a checkpoint or a model folder (issue 29).

A planted pickle (its unpickling creates a marker file) is refused in one line by the train shell's
``resume=<path>`` and by ``predict --model`` on a folder whose weights are a pickle ``pytorch_model.bin``.
The export is ``model.safetensors`` + ``config.json`` (test_training.py checks it is readable safetensors);
an older folder holding plain-weight ``pytorch_model.bin`` still loads without trust.
"""

from __future__ import annotations

from pathlib import Path

import torch

from joint_bert_nlu.inference import load_joint_model, save_joint_model
from tests.evil_pickle import assert_refused, plant, run_task

from .helpers import tiny_model, tokenizer


def test_train_resume_path_refuses_a_planted_pickle(tmp_path, capsys):
    from joint_bert_nlu import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = ["experiment=smoke", f"paths.output_dir={tmp_path}", "data.train_limit=16", "data.eval_limit=8",
            f"resume={evil}", "logger.tensorboard=false"]
    assert_refused(run_task(train.main, Path(train.__file__).parent / "conf", argv, capsys), evil, marker)


def test_predict_refuses_a_planted_pickle_model_folder(tmp_path, capsys):
    from joint_bert_nlu import predict

    folder = tmp_path / "m"
    save_joint_model(tiny_model(), tokenizer(), folder)
    (folder / "model.safetensors").unlink()  # an older or foreign folder: pickle weights only
    marker = plant(folder / "pytorch_model.bin")
    assert predict.main(["--model", str(folder), "book a flight"]) == 1
    err = capsys.readouterr().err
    line = assert_refused(err, folder / "pytorch_model.bin", marker, how="--trust-checkpoint")
    assert "python -m common.checkpoint convert" in line


def test_plain_weight_pickle_folder_still_loads_without_trust(tmp_path):
    model = tiny_model(use_crf=True)
    folder = tmp_path / "m"
    save_joint_model(model, tokenizer(), folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded, _ = load_joint_model(folder)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
