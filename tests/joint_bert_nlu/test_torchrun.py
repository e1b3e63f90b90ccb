"""``torchrun --nproc_per_node 2 -m joint_bert_nlu.train experiment=smoke`` on CPU (gloo): both ranks finish
(rank 1 used to die on ``results["dataset"]``), only rank 0 writes, and dev/test are scored by both ranks
with exactly the single-process numbers."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import load_checkpoint
from joint_bert_nlu.evaluate import evaluate_examples
from joint_bert_nlu.inference import load_joint_model
from joint_bert_nlu.training import DataOptions, prepare_data
from tests.common.torchrun import files_under, run_torchrun


@pytest.mark.slow
def test_torchrun_smoke_only_rank0_writes_and_sharded_scores_are_exact(tmp_path):
    out = tmp_path / "out"
    # eval batches of 8: dev and test (32 sentences each) are 4 batches, 2 per rank
    r = run_torchrun("joint_bert_nlu.train", ["experiment=smoke", "trainer.eval_batch_size=8",
                                              f"paths.output_dir={out}"], tmp_path, watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes
    run = out / "joint_bert_nlu_atis"
    files = files_under(run)
    assert {"metrics.jsonl", "results.json", "model/config.json", "checkpoints/best.pt", ".hydra/config.yaml",
            "train.log"} <= set(files), files
    assert len([f for f in files if f.startswith("tb/")]) == 1
    printed = [json.loads(line) for line in r.output.splitlines() if line.startswith('{"dataset"')]
    assert len(printed) == 1  # rank 0 prints, rank 1 returns the same results silently

    # dev and test were scored half by each rank (whole batches dealt out): one process scoring the saved
    # model on the whole splits gets the same numbers exactly
    results = json.loads((run / "results.json").read_text())
    model, tokenizer = load_joint_model(run / "model")
    _, encoded = prepare_data(DataOptions(**results["data"]), tokenizer, None)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    model.load_state_dict(best["model"])
    for split in ("dev", "test"):
        single = evaluate_examples(model, encoded[split], 8, torch.device("cpu"), tokenizer.pad_token_id or 0)
        assert single == results[split] == printed[0][split]
