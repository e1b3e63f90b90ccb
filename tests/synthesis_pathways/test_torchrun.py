"""``torchrun --nproc_per_node 2 -m synthesis_pathways.train experiment=smoke`` on CPU (gloo): rank 0 alone
samples, featurizes and writes, both ranks fit the four nets with DDP, and the sharded validation scores are
exactly those of one process."""

from __future__ import annotations

import json

import pytest
import torch

from synthesis_pathways.featurize import StepData, network_data
from synthesis_pathways.model import build_networks, validate
from synthesis_pathways.pipeline import block_ranker, space_for_run
from synthesis_pathways.train import pipeline_config
from tests.common.torchrun import files_under, run_torchrun


@pytest.mark.slow
def test_torchrun_smoke_only_rank0_writes_and_sharded_validation_is_exact(tmp_path):
    out = tmp_path / "out"
    # validation batches of 8: every net's validation rows are several batches, dealt to 2 ranks
    r = run_torchrun("synthesis_pathways.train", ["experiment=smoke", "trainer.eval_batch_size=8",
                                                  f"paths.output_dir={out}"], tmp_path, watch=out)
    assert r.returncode == 0, r.output[-3000:]
    assert r.rank_writes == [], r.rank_writes  # trees, features, match cache, pipeline.json: rank 0 only
    run = out / "synthesis_pathways_smoke"
    files = files_under(run)
    assert {"model.safetensors", "model.json", "resolved_config.json", "pipeline.json", "features/train.npz", "trees/shard_00000.jsonl"} <= set(files)
    assert r.output.count("trees: ") == 1 and r.output.count("act: ") == 1

    from omegaconf import OmegaConf

    cfg = OmegaConf.create(json.loads((run / "resolved_config.json").read_text()))  # interpolations resolved
    pc = pipeline_config(cfg)
    info = json.loads((run / "pipeline.json").read_text())
    n_templates = info["space"]["templates"]
    valid = StepData.load(run / "features" / "valid.npz")
    nets = build_networks(pc.feat, n_templates, pc.net_cfg)
    ranker = block_ranker(space_for_run(info["config"], cache_dir=run / "cache"), pc.feat)  # rt1/rt2: k-NN MRR
    for net, model in nets.items():
        best = torch.load(run / "nets" / net / "checkpoints" / "best.pt", weights_only=False)
        model.load_state_dict(best["model"])
        single = validate(model, network_data(valid, net, n_templates), net, batch_size=8, ranker=ranker)
        assert info["fit"][net]["best"] == single, net
