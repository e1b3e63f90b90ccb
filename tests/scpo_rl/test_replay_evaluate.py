"""Replay buffer, deterministic evaluation, aggregation with confidence intervals, CSV and plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scpo_rl.algorithm import Agent, AgentConfig
from scpo_rl.evaluate import (
    agent_policy,
    evaluate_policy,
    mean_ci95,
    plot_heatmap,
    plot_learning_curves,
    read_rows_csv,
    robustness_grid,
    run_episodes,
    summarize_grid,
    write_rows_csv,
)
from scpo_rl.replay import ReplayBuffer


def test_replay_ring_and_sampling():
    buf = ReplayBuffer(2, 1, capacity=4, seed=0)
    for i in range(6):
        buf.add([i, i], [i / 10], float(i), [i + 1, i + 1], terminated=(i == 5))
    assert len(buf) == 4 and buf.pos == 2
    assert sorted(buf.reward[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0]
    batch = buf.sample(16)
    assert batch.obs.shape == (16, 2) and batch.done.shape == (16, 1)
    assert torch.equal(batch.next_obs, batch.obs + 1)
    assert set(batch.done[:, 0].tolist()) <= {0.0, 1.0}


def test_replay_state_round_trip_continues_the_same_samples():
    a = ReplayBuffer(3, 2, capacity=50, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(30):
        a.add(rng.normal(size=3), rng.normal(size=2), 1.0, rng.normal(size=3), False)
    a.sample(8)
    b = ReplayBuffer(3, 2, capacity=50, seed=7)
    b.load_state_dict(a.state_dict())
    for x, y in zip(a.sample(8), b.sample(8)):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="capacity mismatch"):
        ReplayBuffer(3, 2, capacity=10).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="positive"):
        ReplayBuffer(3, 2, capacity=0)
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(3, 2, capacity=5).sample(2)


def test_mean_ci95_golden():
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci95([5.0])[1])
    with pytest.raises(ValueError):
        mean_ci95([])


def test_summarize_grid_worst_and_average():
    def rows(vals):
        return [{"mass": m, "friction": 1.0, "episode": e, "return": v + e} for (m, v) in vals for e in range(2)]

    summary = summarize_grid({0: rows([(0.5, 10.0), (1.0, 20.0)]), 1: rows([(0.5, 30.0), (1.0, 0.0)])})
    # per-seed cell means: seed0 {0.5: 10.5, 1.0: 20.5}; seed1 {0.5: 30.5, 1.0: 0.5}
    assert summary["worst_cell_per_seed"] == [10.5, 0.5]
    assert summary["grid_average_per_seed"] == [15.5, 15.5]
    assert summary["grid_average"][0] == 15.5 and summary["grid_average"][1] == 0.0
    assert summary["cells"][(0.5, 1.0)][0] == 20.5


def small_agent(obs_dim=4, act_dim=1):
    torch.manual_seed(0)
    return Agent(obs_dim, act_dim, AgentConfig(algo="sac", hidden=(8,)))


def test_evaluation_is_deterministic_for_a_fixed_seed():
    policy = agent_policy(small_agent())
    torch.manual_seed(1)
    a = evaluate_policy(policy, "InvertedPendulum-v5", episodes=3, seed=5)
    torch.manual_seed(2)  # the global RNG must not matter
    b = evaluate_policy(policy, "InvertedPendulum-v5", episodes=3, seed=5)
    assert a == b and len(a) == 3
    c = evaluate_policy(policy, "InvertedPendulum-v5", episodes=3, seed=6)
    assert c[:2] == a[1:]  # episode k uses reset seed seed+k, whatever its row in the batch


def test_start_states_run_side_by_side_in_a_fixed_batch():
    """One env per start state, the policy called on all of them at once with a constant batch shape (so a
    start state's actions do not depend on when the others end); a single env runs them one by one."""
    agent = small_agent(11, 3)
    shapes = []

    def policy(obs):
        shapes.append(obs.shape)
        return agent_policy(agent)(obs)

    lengths: list[int] = []
    rets = evaluate_policy(policy, "Hopper-v5", episodes=4, seed=3, lengths=lengths, max_steps=300)
    assert len(rets) == 4 and len(set(lengths)) > 1  # the episodes end at different steps ...
    assert set(shapes) == {(4, 11)} and len(shapes) == max(lengths)  # ... and every call saw all 4 rows
    from scpo_rl.envs import make_env

    env = make_env("Hopper-v5")
    one_by_one = run_episodes(env, agent_policy(agent), 4, 3, max_steps=300)
    assert np.allclose(one_by_one, rets, rtol=0.05)  # batch of 1 vs 4: same start states, float rounding aside


def test_robustness_grid_rows_csv_and_plots(tmp_path):
    policy = agent_policy(small_agent())
    rows = robustness_grid(policy, "InvertedPendulum-v5", masses=[0.5, 2.0], frictions=[1.0], episodes=2, seed=0)
    assert len(rows) == 4 and {r["mass"] for r in rows} == {0.5, 2.0}
    assert [r["start_seed"] for r in rows] == [0, 1, 0, 1] and all(r["length"] >= 1 for r in rows)
    per_seed = [dict(r, seed=0) for r in rows]
    path = write_rows_csv(tmp_path / "grid.csv", per_seed)
    back = read_rows_csv(path)
    assert back == per_seed
    summary = summarize_grid({0: rows, 1: rows})
    p1 = plot_heatmap(summary, tmp_path / "sweep.png", "mass sweep")
    grid2 = robustness_grid(agent_policy(small_agent(11, 3)), "Hopper-v5", masses=[0.5, 1.5], frictions=[0.8, 1.2], episodes=1, seed=0,
                            max_steps=20)
    p2 = plot_heatmap(summarize_grid({0: grid2}), tmp_path / "grid.png", "grid")
    p3 = plot_learning_curves({"sac": {0: [(1, 1.0), (2, 3.0)], 1: [(1, 2.0), (2, 2.0)]}}, tmp_path / "lc.png", "lc")
    for p in (p1, p2, p3):
        assert p.stat().st_size > 1000
