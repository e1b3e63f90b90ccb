"""``torchrun --nproc_per_node 2 -m lpips_metric.train experiment=smoke`` on CPU (gloo): both ranks finish,
rank 0 alone writes the synthetic set, the checkpoints and the exported heads, and the 2AFC / JND scores of
the sharded evaluation are exactly those of one process."""

from __future__ import annotations

import json

import pytest
import torch

from lpips_metric.training import (
    DataConfig,
    MetricTrainConfig,
    RankedLPIPS,
    build_metric,
    evaluate_metric,
    load_sets,
)
from tests.common.torchrun import files_under, run_torchrun


@pytest.mark.slow
def test_torchrun_smoke_only_rank0_writes_and_sharded_scores_are_exact(tmp_path):
    out = tmp_path / "out"
    # eval batches of 4: the 12-triplet val splits are 3 batches, dealt to 2 ranks
    r = run_torchrun("lpips_metric.train", ["experiment=smoke", "trainer.eval_batch_size=4",
                                            f"paths.output_dir={out}"], tmp_path, watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes  # the synthetic set too: generated once, by rank 0
    run = out / "lpips_metric"
    files = files_under(run)
    assert {"lpips_heads.safetensors", "metrics.jsonl", "checkpoints/best.pt", ".hydra/config.yaml"} <= set(files)
    assert r.output.count("2AFC mean") == 1

    cfg = json.loads((run / "resolved_config.json").read_text())  # interpolations resolved
    _, _, val, jnd = load_sets(DataConfig(**cfg["data"]))
    model = RankedLPIPS(build_metric(MetricTrainConfig(**cfg["model"])), cfg["model"]["rank_hidden"])
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    model.load_state_dict(best["model"])
    single = evaluate_metric(model.metric, val, jnd, batch_size=4)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    at_best = next(row for row in logged if row["step"] == best["step"] and "val/2afc_mean" in row)
    assert {k: at_best[f"val/{k}"] for k in single} == single
