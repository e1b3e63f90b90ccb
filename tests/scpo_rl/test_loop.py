"""The training loop: resume equivalence (bit-exact), metrics, bad configuration."""

from __future__ import annotations

import pytest
import torch

from common.checkpoint import ResumeError
from common.logging import read_jsonl
from scpo_rl.algorithm import AgentConfig
from scpo_rl.loop import RLTrainer, RunConfig, load_agent


def tiny(algo: str = "scpo", **kw) -> RunConfig:
    base = dict(env="Hopper-v5", seed=3, total_steps=160, learning_starts=60, batch_size=16, buffer_size=1000,
                eval_every=80, eval_episodes=1, log_every=20, checkpoint_every=40, progress_bar=False,
                domain_randomization={"mass": [0.5, 1.5], "friction": [0.5, 1.5]},
                agent=AgentConfig(algo=algo, hidden=(16, 16)))
    base.update(kw)
    return RunConfig(**base)


def final_params(trainer: RLTrainer) -> list[torch.Tensor]:
    a = trainer.agent
    mods = [a.actor, a.critic, a.critic_target] + ([a.adversary] if a.adversary is not None else [])
    return [p.detach().clone() for m in mods for p in m.parameters()] + [a.log_alpha.detach().clone()]


@pytest.mark.parametrize("algo", ["scpo", pytest.param("pr_sac", marks=pytest.mark.slow),
                                  pytest.param("dr_sac", marks=pytest.mark.slow)])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, algo):
    whole = RLTrainer(tiny(algo), tmp_path / "whole")
    res_whole = whole.run()
    # "killed" at step 97: the last checkpoint is step 80, mid-episode; the resumed run redoes 80 -> 160
    part = RLTrainer(tiny(algo), tmp_path / "part")
    part.run(stop_at=97)
    with pytest.raises(ResumeError):
        RLTrainer(tiny(algo), tmp_path / "part", resume="never")
    resumed = RLTrainer(tiny(algo), tmp_path / "part", resume="auto")
    assert resumed.step == 80
    res_part = resumed.run()
    for x, y in zip(final_params(whole), final_params(resumed)):
        assert torch.equal(x, y)
    assert res_whole["eval_history"] == res_part["eval_history"]
    rows_whole = [{k: v for k, v in r.items() if k not in ("time", "perf/steps_per_second")}
                  for r in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]
    rows_part = [{k: v for k, v in r.items() if k not in ("time", "perf/steps_per_second")}
                 for r in read_jsonl(tmp_path / "part" / "metrics.jsonl")]
    assert rows_whole == rows_part


def test_metrics_and_load_agent(tmp_path):
    res = RLTrainer(tiny("scpo", total_steps=120), tmp_path / "r").run()
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    keys = set().union(*rows)
    assert {"train/critic_loss", "train/penalty_share", "eval/return_mean", "perf/steps_per_second"} <= keys
    agent, env_id = load_agent(tmp_path / "r" / "checkpoints" / "step_120.pt")
    assert env_id == "Hopper-v5" and agent.cfg.algo == "scpo"
    assert not torch.equal(agent.obs_std, torch.ones_like(agent.obs_std))  # warm-up statistics were fixed
    assert res["step"] == 120 and res["final_eval_return"] == res["eval_history"][-1][1]


def test_resume_with_other_settings_is_refused(tmp_path):
    RLTrainer(tiny("sac", total_steps=70), tmp_path / "r").run()
    with pytest.raises(ResumeError, match="other settings: agent.algo 'sac' -> 'scpo'"):
        RLTrainer(tiny("scpo", total_steps=70), tmp_path / "r", resume="auto")
    assert RLTrainer(tiny("sac", total_steps=90), tmp_path / "r", resume="auto").step == 70  # longer budget: fine


def test_bad_configuration(tmp_path):
    with pytest.raises(ValueError, match="domain_randomization"):
        RLTrainer(tiny("dr_sac", domain_randomization=None), tmp_path / "a")
    with pytest.raises(ValueError, match="normalization"):
        RLTrainer(tiny("sac", normalization="zscore"), tmp_path / "b")
    # no reference statistics for InvertedPendulum: the reference's identity normalizer (raw states)
    trainer = RLTrainer(tiny("sac", env="InvertedPendulum-v5", normalization="paper"), tmp_path / "c")
    assert torch.equal(trainer.agent.obs_std, torch.ones(4)) and torch.equal(trainer.agent.obs_mean, torch.zeros(4))
