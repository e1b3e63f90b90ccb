"""``torchrun --nproc_per_node 2 -m label_efficient_seg.train experiment=smoke`` on CPU (gloo): both ranks
finish, only rank 0 writes, and the sharded evaluation gives exactly the single-process scores.

The cheapest package under torchrun, so this is the torchrun smoke of the fast suite.
"""

from __future__ import annotations

import json

import torch

from label_efficient_seg.evaluate import evaluate_model
from label_efficient_seg.experiment import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    build_model,
    from_mapping,
    load_splits,
)
from tests.common.torchrun import files_under, run_torchrun


def test_torchrun_smoke_only_rank0_writes_and_sharded_scores_are_exact(tmp_path):
    out = tmp_path / "out"
    r = run_torchrun("label_efficient_seg.train", ["experiment=smoke", f"paths.output_dir={out}"], tmp_path,
                     watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes  # rank 1 wrote nothing: no .hydra copy, log, metrics, json
    run = out / "label_efficient_seg"
    files = files_under(run)
    assert {"metrics.jsonl", "final_metrics.json", "run_info.json", "train.log", ".hydra/config.yaml",
            "checkpoints/best.pt", "checkpoints/step_4.pt"} <= set(files), files
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val_steps = [row["step"] for row in rows if "val/score" in row]
    assert val_steps == [2, 4]  # one row per evaluation: written once, by rank 0
    assert r.output.count(" on shapes: test ") == 1  # one report line, from rank 0

    # The scores rank 0 wrote come from a test split evaluated half by each rank: a single process scoring
    # the same (best) weights on the whole split gets the same numbers, to the last bit.
    cfg = json.loads((run / "resolved_config.json").read_text())  # interpolations resolved
    splits = load_splits(from_mapping(DataConfig, cfg["data"]), None, seed=cfg["trainer"]["seed"])
    model = build_model(from_mapping(MethodConfig, cfg["method"]), from_mapping(ModelConfig, cfg["model"]),
                        splits.train.num_classes)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    model.load_state_dict(best["model"])
    final = json.loads((run / "final_metrics.json").read_text())
    single = evaluate_model(model, splits.test)
    single.pop("predictions")
    assert final["test"] == single
    # ... and so do the validation scores the trainer monitored (every rank evaluates rank 0's weights)
    assert best["trainer_state"]["best_value"] == evaluate_model(model, splits.val)["miou"]
