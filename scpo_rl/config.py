"""Turn the composed Hydra config (``conf/``) into the library's plain dataclasses."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from scpo_rl.algorithm import AgentConfig
from scpo_rl.loop import RunConfig


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def run_config_from(cfg: DictConfig) -> RunConfig:
    """Map ``trainer`` (common.config.TrainerConfig), ``rl``, ``env`` and ``algo`` onto a :class:`RunConfig`."""
    t, rl, algo = cfg.trainer, cfg.rl, _plain(cfg.algo)
    agent_keys = ("state_eps", "adversary_prob", "adversary_period", "adversary_noise", "adversary_noise_clip")
    agent = AgentConfig(
        algo=algo["name"], hidden=tuple(rl.hidden), gamma=rl.gamma, tau=rl.tau, policy_lr=rl.policy_lr,
        q_lr=rl.q_lr, alpha_lr=rl.alpha_lr, init_log_alpha=rl.init_log_alpha, target_entropy=rl.target_entropy,
        **{k: algo[k] for k in agent_keys if k in algo},
    )
    if t.max_steps is None:
        raise ValueError("trainer.max_steps (the number of environment steps) must be set")
    return RunConfig(
        env=cfg.env.id, seed=t.seed, total_steps=t.max_steps, learning_starts=rl.learning_starts,
        batch_size=t.batch_size, buffer_size=rl.buffer_size, normalization=rl.normalization,
        eval_every=t.eval_every_steps or t.max_steps, eval_episodes=rl.eval_episodes, eval_seed=rl.eval_seed,
        log_every=t.log_every_steps, checkpoint_every=t.checkpoint_every_steps or t.max_steps,
        keep_last=t.keep_last_checkpoints, device=t.device, num_threads=t.num_threads,
        progress_bar=t.progress_bar, domain_randomization=algo.get("domain_randomization"), agent=agent,
    )
