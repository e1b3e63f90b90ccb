"""Longer checks, left out of the fast suite: benchmark smoke and a real MuJoCo learning run."""

from __future__ import annotations

import json

import pytest

from scpo_rl import bench
from scpo_rl.algorithm import AgentConfig
from scpo_rl.loop import RunConfig, Trainer


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    result = bench.main(["--env", "InvertedPendulum-v5", "--steps", "20", "--repeats", "1", "--warmup-steps", "40",
                         "--batch", "32", "--hidden", "16", "16", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(saved["steps_per_second"]) == {"ours_sac", "ours_scpo", "sb3_sac"}
    assert result["ours_sac_over_sb3_sac"] > 0 and (tmp_path / "benchmark.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "scpo"])
def test_learns_inverted_pendulum(tmp_path, algo):
    """InvertedPendulum-v5 from 1k warm-up + 5k updates: the deterministic policy balances far longer than the
    untrained one (which falls in ~6 steps)."""
    cfg = RunConfig(env="InvertedPendulum-v5", seed=0, total_steps=6000, learning_starts=1000, eval_every=6000,
                    eval_episodes=3, checkpoint_every=6000, progress_bar=False, agent=AgentConfig(algo=algo))
    result = Trainer(cfg, tmp_path / algo).run()
    assert result["final_eval_return"] >= 200
