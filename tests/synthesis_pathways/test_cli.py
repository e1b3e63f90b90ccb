"""Smoke runs of the command lines: train (subprocess, with resume), reproduce smoke, plan."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _seed_match_cache(space, dest: Path) -> None:
    """Copy the session's pool-A match matrix (content-keyed) so the runs skip recomputing it."""
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(space._cache_file) if getattr(space, "_cache_file", None) else None
    if src is not None and src.exists():
        shutil.copy(src, dest / src.name)


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "synthesis_pathways.train", "experiment=smoke", f"paths.output_dir={out}",
           "name=t", "sampling.attempts=40", "sampling.shard_size=20", *extra]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_train_help_shows_groups():
    r = subprocess.run([sys.executable, "-m", "synthesis_pathways.train", "--help"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for group in ("data:", "model:", "sampling:", "experiment:", "trainer:"):
        assert group in r.stdout


def test_train_smoke_and_resume(tmp_path, space):
    _seed_match_cache(space, tmp_path / "t" / "cache")
    r = _train(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "t"
    assert (run / "model.safetensors").exists() and not (run / "model.pt").exists()
    info = json.loads((run / "pipeline.json").read_text())
    assert set(info["fit"]) == {"act", "rt1", "rxn", "rt2"} and info["sample"]["attempts"] == 40
    for net in ("act", "rt1", "rxn", "rt2"):
        assert (run / "nets" / net / "metrics.jsonl").exists()

    # the same run in-process (no second interpreter start): resume=never refuses, resume=auto
    # continues from what is on disk and ends with the same model
    from common.checkpoint import ResumeError
    from common.config import TrainerConfig
    from synthesis_pathways.model import SynNetModel
    from synthesis_pathways.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(**{k: v for k, v in info["config"].items()})
    tcfg = TrainerConfig(max_epochs=1, batch_size=32, progress_bar=False, early_stopping_patience=3,
                         eval_batch_size=512, log_every_steps=50, num_threads=1)
    with pytest.raises(ResumeError, match="resume=auto"):
        run_pipeline(cfg, run, trainer_cfg=tcfg, resume="never", progress=False)
    before = SynNetModel.load(run / "model.safetensors")
    again = run_pipeline(cfg, run, trainer_cfg=tcfg, resume="auto", progress=False)
    assert again["sample"]["kept"] == info["sample"]["kept"]
    after = SynNetModel.load(run / "model.safetensors")
    for net in before.nets:
        a, b = before.nets[net].state_dict(), after.nets[net].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~6-9 s; CI runs this profile end to end anyway (`make check` compares every number)
def test_reproduce_smoke(tmp_path, space):
    from synthesis_pathways.reproduce import main

    _seed_match_cache(space, tmp_path / "work" / "pool_A" / "train" / "cache")
    path = main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work")])
    assert path.exists()
    results = json.loads((tmp_path / "reports" / "synthesis_pathways" / "results.json").read_text())
    assert results["headline"]["paper"] == pytest.approx(0.51)
    metrics = [r["metric"] for r in results["rows"]]
    assert len(metrics) == len(set(metrics))  # one row per metric name
    for m in ("A heldout: mean similarity (all, failures = 0)", "A chemprojector: random policy recovery",
              "A zinc: recovery (fingerprint)", "A zinc: nearest single block, similarity",
              "A heldout: share of targets seen in training trees", "A heldout: recovery, reference protocol",
              "A valid (validation), target nn: mean similarity", "A rt1: stopped on patience", "A rt1: test mrr",
              "A valid (validation, first 2), beam search minus ours: similarity"):
        assert m in metrics, m
    assert results["headline"]["n_kind"] == "items" and results["headline"]["ci_method"] == "bootstrap"
    assert (tmp_path / "reports" / "synthesis_pathways" / "similarity_smoke.png").exists()


def test_reproduce_profiles_train_what_the_experiment_files_say():
    """`experiment=quick` trained 10 epochs while `reproduce --profile quick` trained 15: the profiles now
    compose the same Hydra experiment as the training CLI, per pool."""
    from hydra import compose, initialize_config_dir

    from common.config import TrainerConfig, register_configs
    from common.hydra_utils import to_dataclass
    from synthesis_pathways.reproduce import CONF_DIR, POOLS, _profiles, compose_training
    from synthesis_pathways.train import pipeline_config

    register_configs()
    for name, prof in _profiles().items():
        for pool in prof.pools:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"experiment={prof.experiment}", *POOLS[pool]])
            pipe, trainer = compose_training(prof.experiment, POOLS[pool])
            assert pipe == pipeline_config(cfg) and trainer == to_dataclass(cfg.trainer, TrainerConfig), (name, pool)
    quick, _ = compose_training("quick")
    assert compose_training("quick", ["data=wuxi"])[0].blocks == "wuxi" and quick.blocks == "enamine_1913"
    for name in ("quick", "full", "paper"):  # patience decides, never max_epochs
        _, trainer = compose_training(name)
        assert trainer.early_stopping_patience >= 10 and trainer.max_epochs >= 200, name


def test_plan_cli_random_policy(tmp_path, space, capsys):
    from synthesis_pathways.plan import main

    _seed_match_cache(space, tmp_path / "run" / "cache")
    assert main(["O=C(NCCO)c1ccccc1", "--policy", "random", "--run-dir", str(tmp_path / "run"), "--image",
                 "--out-dir", str(tmp_path / "img")]) == 0
    out = capsys.readouterr().out
    assert "target: O=C(NCCO)c1ccccc1" in out and (tmp_path / "img" / "route_1.png").exists()
    assert main(["C1CC", "--policy", "random", "--run-dir", str(tmp_path / "run")]) == 1  # one target, not planned
    assert "invalid SMILES" in capsys.readouterr().out
    assert main(["CCO", "--run-dir", str(tmp_path / "missing")]) == 1  # no trained model: clear error


def test_two_runs_of_one_config_train_the_same_nets(tmp_path, space):
    """The nets' initial weights were drawn from torch's per-process random seed, so the smoke profile's
    net metrics changed from run to run (found by `python -m common.reproduce --check`)."""
    from common.config import TrainerConfig
    from synthesis_pathways.model import SynNetModel, model_file
    from synthesis_pathways.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(attempts=40, shard_size=20, nbits=256, emb_bits=64,
                         hidden={"act": 16, "rt1": 16, "rxn": 16, "rt2": 16})
    tcfg = TrainerConfig(max_epochs=1, batch_size=32, progress_bar=False)
    models = []
    for name in ("a", "b"):
        _seed_match_cache(space, tmp_path / name / "cache")
        torch.rand(7)  # the global RNG is in a different state before each run, as in two processes
        run_pipeline(cfg, tmp_path / name, trainer_cfg=tcfg, resume="never", progress=False)
        models.append(SynNetModel.load(model_file(tmp_path / name)))
    for net in models[0].nets:
        a, b = models[0].nets[net].state_dict(), models[1].nets[net].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), net
