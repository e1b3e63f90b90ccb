"""``torchrun --nproc_per_node 2 -m llm_specialization.train`` on CPU (gloo): the smoke ladder with a trained
rung (LoRA, DDP) and the rec-tuning task (SASRec and LoRA under DDP, sharded validation AUC) finish on both
ranks, and rank 0 alone stores results, per-document caches, checkpoints and summaries."""

from __future__ import annotations

import json

import pytest

from tests.common.torchrun import files_under, run_torchrun


@pytest.mark.slow
def test_torchrun_ladder_smoke_with_lora_only_rank0_writes(tmp_path):
    out = tmp_path / "out"
    # resume=auto: the rungs' stored results and per-document JSONL caches are written too (rank 0 only)
    r = run_torchrun("llm_specialization.train", ["experiment=smoke", "method=[zero_shot,lora]", "resume=auto",
                                                  f"paths.output_dir={out}"], tmp_path, watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes
    run = out / "llm_specialization_smoke"
    files = files_under(run)
    assert {"ladder.json", "rungs/lora-sweep-lr0.001.json", "rungs/lora-n16-seed0.json", "rungs/lora-n16-seed1.json",
            "rungs/lora-n16-seed0.docs.jsonl", "rungs/zero_shot-plain-d0.docs.jsonl",
            "lora/n16_lr0.001_seed0/metrics.jsonl"} <= set(files), files
    for unit in ("zero_shot-plain-d0", "lora-n16-seed0"):  # a header + one line per test document: once, not per rank
        lines = (run / "rungs" / f"{unit}.docs.jsonl").read_text().splitlines()
        assert len(lines) == 1 + json.loads(lines[0])["n"], unit
    assert r.output.count("R5 LoRA") == 2  # two seeds, printed by rank 0 alone
    assert len(json.loads((run / "ladder.json").read_text())["results"]) == 6 + 2  # R1 3 scorings x 2 formats


@pytest.mark.slow
def test_torchrun_rec_tuning_sharded_validation_only_rank0_writes(tmp_path):
    out = tmp_path / "out"
    r = run_torchrun("llm_specialization.train", [
        "experiment=rec_tuning", "model=tiny", "task.synthetic=true", "task.n_train=16", "task.n_valid=16",
        "task.n_test=16", "task.max_records=500", "task.eval_batch_size=4", "trainer.max_epochs=2",
        "trainer.batch_size=4", "trainer.grad_accum_steps=1", "trainer.progress_bar=false",
        f"paths.output_dir={out}"], tmp_path, watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes
    run = out / "llm_rec_tuning"
    rows = [json.loads(line) for line in (run / "lora-n16-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "val/valid_auc" in row] == [4, 8]  # 16 examples / 4 per step
    assert r.output.count("LoRA rec-tuned LLM") == 1
