"""Longer checks, left out of the fast suite: benchmark smoke and a real MuJoCo learning run."""

from __future__ import annotations

import json

import pytest

from scpo_rl import bench
from scpo_rl.algorithm import AgentConfig
from scpo_rl.loop import RLTrainer, RunConfig


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    result = bench.main(["--env", "InvertedPendulum-v5", "--steps", "20", "--repeats", "1", "--warmup-steps", "40",
                         "--batch", "32", "--hidden", "16", "16", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert set(saved["steps_per_second"]) == {"ours_sac", "ours_scpo", "sb3_sac"}
    assert result["ours_sac_over_sb3_sac"] > 0 and (tmp_path / "benchmark.md").is_file()


@pytest.mark.slow
def test_eval_benchmark_smoke(tmp_path):
    """--what eval: the three ways to run the start states, and the collection share of a training step."""
    result = bench.main(["--what", "eval", "--env", "HalfCheetah-v5", "--episodes", "3", "--eval-steps", "20",
                         "--steps", "10", "--repeats", "1", "--warmup-steps", "40", "--batch", "32", "--hidden", "16",
                         "--out", str(tmp_path)])
    assert set(result["steps_per_second"]) == {"one_env", "side_by_side", "gym_sync_vector", "collect_only",
                                               "train_step"}
    assert result["eval_steps_per_call"] == 60 and 0 < result["collection_share_of_a_training_step"] < 1
    assert (tmp_path / "benchmark_eval.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "scpo"])
def test_learns_inverted_pendulum(tmp_path, algo):
    """InvertedPendulum-v5 from 1k warm-up + 5k updates: the deterministic policy balances far longer than the
    untrained one (which falls in ~6 steps)."""
    cfg = RunConfig(env="InvertedPendulum-v5", seed=0, total_steps=6000, learning_starts=1000, eval_every=6000,
                    eval_episodes=3, checkpoint_every=6000, progress_bar=False, agent=AgentConfig(algo=algo))
    result = RLTrainer(cfg, tmp_path / algo).run()
    assert result["final_eval_return"] >= 200


def hold_noise_fixed(actor, noise):
    """Make every actor.sample use the same reparameterization noise (moved to the batch's device)."""
    original = actor.sample
    actor.sample = lambda obs, _noise=None: original(obs, noise.to(obs.device))


@pytest.mark.gpu
@pytest.mark.parametrize("algo", ["sac", "scpo", "pr_sac"])
def test_cpu_and_cuda_updates_agree(algo):
    """The same fixed batch and weights give the same losses on CPU and CUDA (within float tolerance)."""
    import torch

    from scpo_rl.algorithm import Agent, Batch

    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(64, 5, generator=g), torch.rand(64, 2, generator=g) * 2 - 1,
                  torch.randn(64, 1, generator=g), torch.randn(64, 5, generator=g), torch.zeros(64, 1))
    torch.manual_seed(0)
    cfg = AgentConfig(algo=algo, hidden=(32, 32), adversary_noise=0.0)  # no device-specific random draws
    cpu = Agent(5, 2, cfg, "cpu")
    cuda = Agent(5, 2, cfg, "cuda")
    cuda.load_state_dict({k: (v.cuda() if torch.is_tensor(v) else v) for k, v in cpu.state_dict().items()})
    noise_cpu = torch.randn(64, 2, generator=g)
    for agent in (cpu, cuda):
        hold_noise_fixed(agent.actor, noise_cpu)
    m_cpu = cpu.update(batch, with_metrics=True)
    m_cuda = cuda.update(Batch(*(t.cuda() for t in batch)), with_metrics=True)
    for k, v in m_cpu.items():
        assert m_cuda[k] == pytest.approx(v, rel=1e-3, abs=1e-4), k
