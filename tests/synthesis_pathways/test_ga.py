import numpy as np
import pytest

from synthesis_pathways.decode import Decoder, RandomPolicy
from synthesis_pathways.featurize import FeatureConfig, Featurizer
from synthesis_pathways.ga import (
    GAConfig,
    GeneticOptimizer,
    crossover,
    mutate,
    parent_weights,
    seed_genomes,
    unique_rows,
)
from synthesis_pathways.oracles import get_oracle


def test_crossover_takes_bounded_share_from_parent1():
    rng = np.random.default_rng(0)
    L = 100
    p1, p2 = np.ones(L, dtype=np.uint8), np.zeros(L, dtype=np.uint8)
    counts = [int(crossover(p1, p2, rng).sum()) for _ in range(300)]
    assert min(counts) >= L // 5 and max(counts) <= 4 * L // 5
    assert abs(np.mean(counts) - L / 2) < 3  # ceil(N(L/2, L/10)) on average


def test_mutation_flips_exactly_num_mut_bits():
    rng = np.random.default_rng(0)
    child = np.zeros(256, dtype=np.uint8)
    flips = [int(mutate(child, rng, 24, 0.5).sum()) for _ in range(200)]
    assert set(flips) == {0, 24}
    assert 0.35 < np.mean([f == 24 for f in flips]) < 0.65
    assert child.sum() == 0  # the parent is not modified


def test_parent_weights():
    w = parent_weights(4, softmax=False)
    np.testing.assert_allclose(w, np.array([13, 12, 11, 10]) / 46)
    s = parent_weights(4, softmax=True)
    np.testing.assert_allclose(s, np.exp([13, 12, 11, 10]) / np.exp([13, 12, 11, 10]).sum())


def test_unique_rows_keeps_order():
    x = np.array([[0, 1], [1, 0], [0, 1], [1, 1]], dtype=np.uint8)
    assert unique_rows(x).tolist() == [[0, 1], [1, 0], [1, 1]]


def test_oracles():
    assert get_oracle("qed")(None) == 0.0 and get_oracle("plogp")(None) == -100.0
    assert get_oracle("qed")("CC(=O)Oc1ccccc1C(=O)O") == pytest.approx(0.5501, abs=1e-4)
    assert get_oracle("celecoxib_similarity")("Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1") == 1.0
    assert 0 < get_oracle("druglike_mpo")("CC(=O)Oc1ccccc1C(=O)O") <= 1
    with pytest.raises(ValueError, match="unknown objective"):
        get_oracle("jnk3")


def test_ga_runs_and_counts_oracle_calls(space, tmp_path):
    feat = FeatureConfig(nbits=256, emb_bits=64)
    decoder = Decoder(space, Featurizer(feat, space.bimolecular_mask()),
                      RandomPolicy(len(space.blocks), space.n_templates, seed=0))
    seeds = seed_genomes(space.blocks[:8], 256)
    opt = GeneticOptimizer(decoder, get_oracle("qed"), GAConfig(population=6, offspring=8, generations=2, seed=0))
    res = opt.run(seeds, run_dir=tmp_path, progress_bar=False)
    s = res.summary()
    assert res.generations == 2 and len(res.seed_scores) == 8
    assert s["top1"] >= max(res.seed_scores) - 1e-12  # elitist selection never loses the best
    assert s["oracle_calls"] == len({k for k in opt.score_cache if k is not None}) <= s["decode_calls"]
    assert res.top_scores == sorted(res.top_scores, reverse=True)
    assert (tmp_path / "ga_state.pt").exists() and (tmp_path / "metrics.jsonl").exists()


def test_optimize_cli_composes_and_runs(tmp_path, space):
    """optimize.yaml composes; the GA runs end to end with the random policy and random seed genomes."""
    import json
    import shutil
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    import common.config  # noqa: F401
    from synthesis_pathways.optimize import run_optimize

    model_dir = tmp_path / "model"
    (model_dir / "cache").mkdir(parents=True)
    if space._cache_file is not None:
        shutil.copy(space._cache_file, model_dir / "cache" / Path(space._cache_file).name)
    conf = Path(__file__).resolve().parents[2] / "synthesis_pathways" / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("optimize", overrides=[
            "objective=druglike_mpo", "policy=random", f"model_dir={model_dir}", "seeds=random", "n_seeds=6",
            "ga.population=4", "ga.offspring=6", "ga.generations=2", "progress_bar=false",
            f"paths.output_dir={tmp_path}"])
    assert cfg.name == "synthesis_pathways_ga_druglike_mpo"
    out = run_optimize(cfg, tmp_path / "ga")
    assert out["generations"] == 2 and 0 <= out["top1"] <= 1
    assert json.loads((tmp_path / "ga" / "ga_result.json").read_text())["objective"] == "druglike_mpo"
