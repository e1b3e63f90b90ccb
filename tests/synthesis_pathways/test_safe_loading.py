"""synthesis_pathways never runs code from a model, checkpoint or GA state file (issue 29).

A planted pickle (its unpickling creates a marker file) is refused in one line by the SynNet importer
(released checkpoints are third-party files by design), ``plan --run-dir``, ``optimize model_dir=`` and
its GA state, and the train shell's ``resume=<path>``. The trained bundle is safetensors + JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from common.checkpoint import UntrustedCheckpointError, save_checkpoint
from tests.evil_pickle import assert_refused, plant, run_main


def _seed_cache(space, run_dir: Path) -> None:
    (run_dir / "cache").mkdir(parents=True, exist_ok=True)
    if getattr(space, "_cache_file", None) and Path(space._cache_file).exists():
        shutil.copy(space._cache_file, run_dir / "cache" / Path(space._cache_file).name)


def test_synnet_importer_refuses_a_planted_pickle(tmp_path):
    from synthesis_pathways.model import import_reference_checkpoint

    evil = tmp_path / "act.ckpt"
    marker = plant(evil, layout={"state_dict": {"layers.0.weight": torch.zeros(2)}, "epoch": 3})
    with pytest.raises(UntrustedCheckpointError) as exc:
        import_reference_checkpoint(evil, "act")
    assert_refused(str(exc.value), evil, marker, how="trust=True")


def test_plan_and_optimize_refuse_a_planted_model(tmp_path, monkeypatch, capsys):
    from synthesis_pathways import optimize, plan

    run = tmp_path / "run"
    marker = plant(run / "model.pt", layout={"nets": {}, "feat": {}, "n_templates": 1, "net_cfg": {}})
    err = run_main(plan.main, ["CCO", "--run-dir", str(run)], monkeypatch, capsys)
    line = assert_refused(err, run / "model.pt", marker, how="--trust-checkpoint")
    assert "python -m common.checkpoint convert" in line  # an older pickle model.pt: the conversion is named
    argv = [f"model_dir={run}", f"paths.output_dir={tmp_path}", "name=ga"]
    err = run_main(optimize.main, argv, monkeypatch, capsys)
    assert_refused(err, run / "model.pt", marker)


def test_optimize_refuses_a_planted_ga_state(tmp_path, space, monkeypatch, capsys):
    from synthesis_pathways import optimize

    model_dir, ga_dir = tmp_path / "model", tmp_path / "ga"
    _seed_cache(space, model_dir)
    marker = plant(ga_dir / "ga_state.pt")
    argv = ["objective=qed", "policy=random", f"model_dir={model_dir}", "seeds=random", "n_seeds=4",
            "ga.population=4", "ga.offspring=4", "ga.generations=1", "progress_bar=false",
            f"paths.output_dir={tmp_path}", "name=ga", "resume=auto"]
    assert_refused(run_main(optimize.main, argv, monkeypatch, capsys), ga_dir / "ga_state.pt", marker)


def test_train_resume_path_refuses_a_planted_pickle(tmp_path, space, monkeypatch, capsys):
    from synthesis_pathways import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    _seed_cache(space, tmp_path / "t")
    argv = ["experiment=smoke", f"paths.output_dir={tmp_path}", "name=t", "sampling.attempts=40",
            "sampling.shard_size=20", f"resume={evil}", "logger.tensorboard=false"]
    assert_refused(run_main(train.main, argv, monkeypatch, capsys), evil, marker)


def test_bundle_is_safetensors_and_old_bundles_still_load(tmp_path):
    from synthesis_pathways.featurize import FeatureConfig
    from synthesis_pathways.model import NetConfig, SynNetModel, build_networks, model_file

    feat = FeatureConfig(nbits=64, emb_bits=16)
    cfg = NetConfig(hidden={"act": 4, "rt1": 4, "rxn": 4, "rt2": 4})
    m = SynNetModel(build_networks(feat, 5, cfg), feat, 5, cfg).eval()
    # a run from before the change: a pickle model.pt of plain weights, loaded without trust
    import dataclasses

    save_checkpoint(tmp_path / "model.pt", {"nets": {k: n.state_dict() for k, n in m.nets.items()},
                                           "feat": dataclasses.asdict(feat), "n_templates": 5,
                                           "net_cfg": dataclasses.asdict(cfg)})
    assert model_file(tmp_path).name == "model.pt"
    old = SynNetModel.load(tmp_path)
    m.save(tmp_path / "model.safetensors")
    assert model_file(tmp_path).name == "model.safetensors"
    assert json.loads((tmp_path / "model.json").read_text())["n_templates"] == 5
    new = SynNetModel.load(tmp_path)
    x = torch.rand(2, feat.input_dim("rxn", 5))
    assert torch.equal(old.nets["rxn"](x), m.nets["rxn"](x))
    assert torch.equal(new.nets["rxn"](x), m.nets["rxn"](x))



def test_ga_state_resumes_under_the_safe_loader(space, tmp_path):
    """ga_state.pt (population, decode/score caches keyed by bytes and SMILES, PCG64 state) loads without
    trust, and the GA continues from it (generation 2 after the saved generation 1)."""
    from common.checkpoint import load_checkpoint
    from synthesis_pathways.decode import Decoder, RandomPolicy
    from synthesis_pathways.featurize import FeatureConfig, Featurizer
    from synthesis_pathways.ga import GAConfig, GeneticOptimizer, seed_genomes
    from synthesis_pathways.oracles import get_oracle

    def ga(generations):
        decoder = Decoder(space, Featurizer(FeatureConfig(nbits=256, emb_bits=64), space.bimolecular_mask()),
                          RandomPolicy(len(space.blocks), space.n_templates, seed=0))
        return GeneticOptimizer(decoder, get_oracle("qed"),
                                GAConfig(population=4, offspring=6, generations=generations, seed=0))

    seeds = seed_genomes(space.blocks[:6], 256)
    first = ga(1).run(seeds, run_dir=tmp_path, progress_bar=False)
    saved = load_checkpoint(tmp_path / "ga_state.pt")
    assert saved["generation"] == 1 and saved["decode_cache"] and saved["population"].dtype.name == "uint8"
    resumed = ga(2).run(seeds, run_dir=tmp_path, resume=True, progress_bar=False)
    assert resumed.generations == 2 and resumed.seed_scores == first.seed_scores
