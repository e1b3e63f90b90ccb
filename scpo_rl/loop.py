"""The off-policy training loop: one environment step, then one gradient step (after the warm-up).

Checkpoints (``common.checkpoint`` format) hold the agent, the replay buffer, every RNG (python, numpy,
torch, the buffer's and the DR wrapper's generators, the env's reset RNG), the exact MuJoCo state of the
running episode and the loop counters, so a run killed at any point and resumed with ``resume=auto``
ends bit-identical to an uninterrupted one (tested).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    refuse_config_changes,
    restore_rng_state,
    seed_everything,
)
from common.logging import MetricLogger, get_logger
from common.progress import progress
from scpo_rl.algorithm import Agent, AgentConfig
from scpo_rl.envs import capture_env_state, make_env, reference_stats, resolve_env_id, restore_env_state
from scpo_rl.evaluate import agent_policy, evaluate_policy, make_envs
from scpo_rl.replay import ReplayBuffer


@dataclass
class RunConfig:
    """Everything one training run needs (the Hydra shell fills it from ``conf/``)."""

    env: str = "InvertedPendulum-v5"
    seed: int = 0
    total_steps: int = 30_000
    learning_starts: int = 5_000
    """Warm-up steps acted by the untrained Gaussian policy (not uniform actions), no updates."""
    batch_size: int = 256
    buffer_size: int = 1_000_000
    normalization: str = "paper"
    """paper (default, the reference's): its fixed statistics, raw states on envs it has none for | none: raw
    states | warmup: mean/std of the warm-up rollout, fixed afterwards. SCPO's eps is in these units."""
    eval_every: int = 5_000
    eval_episodes: int = 5
    eval_seed: int = 10_000
    """Evaluation reset seeds eval_seed, eval_seed+1, ...: the same for every run and method."""
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    keep_last: int = 2
    device: str = "cpu"
    num_threads: int | None = 1
    progress_bar: bool = True
    domain_randomization: dict[str, Any] | None = None
    """DR-SAC: {"mass": [lo, hi], "friction": [lo, hi], "scale_inertia": false}; null for the others."""
    agent: AgentConfig = field(default_factory=AgentConfig)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _normalizer_stats(cfg: RunConfig, env_id: str, buffer: ReplayBuffer) -> tuple[np.ndarray, np.ndarray] | None:
    if cfg.normalization == "none":
        return None
    if cfg.normalization == "paper":
        # the reference's state processing: its fixed statistics, or the identity where it had none
        return reference_stats(env_id)
    if cfg.normalization == "warmup":
        obs = buffer.observations()
        return obs.mean(0), obs.std(0)
    raise ValueError(f"normalization must be warmup, paper or none, got {cfg.normalization!r}")


class RLTrainer:
    """One run: build env/agent/buffer, ``run()`` until ``total_steps``, checkpoint and resume."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, resume: str = "never", logger_cfg=None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        if cfg.agent.algo == "dr_sac" and not cfg.domain_randomization:
            raise ValueError("algo=dr_sac needs domain_randomization ranges (mass, friction)")
        if cfg.normalization not in ("warmup", "paper", "none"):
            raise ValueError(f"normalization must be warmup, paper or none, got {cfg.normalization!r}")
        if cfg.learning_starts < 1 or cfg.total_steps < 1:
            raise ValueError("learning_starts and total_steps must be >= 1")
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.env_id = resolve_env_id(cfg.env)
        self.device = _resolve_device(cfg.device)
        self.ckpt = CheckpointManager(self.run_dir, keep_last=cfg.keep_last)
        resume_path = self.ckpt.resolve_resume(resume)

        seed_everything(cfg.seed)
        dr = cfg.domain_randomization if cfg.agent.algo == "dr_sac" else None
        self.env = make_env(self.env_id, domain_randomization=dr, seed=cfg.seed + 1)
        self.env.action_space.seed(cfg.seed)
        obs_dim = self.env.observation_space.shape[0]
        act_dim = self.env.action_space.shape[0]
        self.agent = Agent(obs_dim, act_dim, cfg.agent, self.device)
        self.buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size, seed=cfg.seed + 2)
        self.adv_rng = np.random.default_rng(cfg.seed + 3)  # PR-SAC: who acts at each step
        self.step = 0
        self.episode = 0
        self.episode_return, self.episode_length = 0.0, 0
        self.obs, _ = self.env.reset(seed=cfg.seed)
        if self.cfg.normalization == "paper":
            stats = _normalizer_stats(cfg, self.env_id, self.buffer)
            if stats is None:
                get_logger("scpo_rl").info("normalization=paper: the reference has no statistics for %s, so "
                                           "states stay raw (eps in raw units)", self.env_id)
            else:
                self.agent.set_normalizer(*stats)
        self.eval_history: list[tuple[int, float]] = []
        self._eval_envs: list | None = None
        self.wall_seconds = 0.0
        if resume_path is not None:
            self._load(resume_path)
        # metric rows logged after the checkpoint we resume from are dropped: they will be written again
        self.logger = (MetricLogger.from_config(self.run_dir, logger_cfg, start_step=self.step)
                       if logger_cfg is not None else MetricLogger(self.run_dir, tensorboard=False, start_step=self.step))

    # ----- checkpoint -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.agent.state_dict(), "replay": self.buffer.state_dict(), "rng": capture_rng_state(),
            "adv_rng": self.adv_rng.bit_generator.state, "env": capture_env_state(self.env),
            "step": self.step, "episode": self.episode, "episode_return": self.episode_return,
            "episode_length": self.episode_length, "obs": np.array(self.obs), "eval_history": self.eval_history,
            "wall_seconds": self.wall_seconds, "config": asdict(self.cfg), "env_id": self.env_id,
        }

    # settings that may change between sessions of one run; everything else must match the checkpoint
    RESUMABLE_CHANGES = ("total_steps", "eval_every", "log_every", "checkpoint_every", "keep_last", "device",
                         "num_threads", "progress_bar")

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        refuse_config_changes(state["config"], asdict(self.cfg), self.RESUMABLE_CHANGES, run=str(path))
        self.agent.load_state_dict(state["model"])
        self.buffer.load_state_dict(state["replay"])
        self.adv_rng.bit_generator.state = state["adv_rng"]
        restore_env_state(self.env, state["env"])
        self.step, self.episode = state["step"], state["episode"]
        self.episode_return, self.episode_length = state["episode_return"], state["episode_length"]
        self.obs = state["obs"]
        self.eval_history = [tuple(x) for x in state["eval_history"]]
        self.wall_seconds = state["wall_seconds"]
        restore_rng_state(state["rng"])
        get_logger("scpo_rl").info("resumed %s at step %d", path, self.step)

    def save(self) -> Path | None:
        return self.ckpt.save(self.step, self.state_dict())

    # ----- loop -------------------------------------------------------------------------------------
    def _select_action(self) -> np.ndarray:
        action = self.agent.act(self.obs).cpu().numpy()
        if self.agent.adversary is not None and self.adv_rng.random() < self.cfg.agent.adversary_prob:
            action = self.agent.adversary_act(self.obs).cpu().numpy()
        return action

    def evaluate(self) -> float:
        if self._eval_envs is None:  # one nominal env per start state, built once
            self._eval_envs = make_envs(self.env_id, self.cfg.eval_episodes)
        rets = evaluate_policy(agent_policy(self.agent), self.env_id, self.cfg.eval_episodes, self.cfg.eval_seed,
                               envs=self._eval_envs)
        mean = float(np.mean(rets))
        self.eval_history.append((self.step, mean))
        self.logger.log(self.step, {"eval/return_mean": mean, "eval/return_std": float(np.std(rets))})
        return mean

    def train_step(self) -> dict[str, float]:
        """One env step (and one update after the warm-up)."""
        cfg = self.cfg
        action = self._select_action()
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.buffer.add(self.obs, action, reward, next_obs, terminated)
        self.episode_return += float(reward)
        self.episode_length += 1
        self.step += 1
        metrics: dict[str, float] = {}
        if terminated or truncated:
            metrics = {"train/episode_return": self.episode_return, "train/episode_length": self.episode_length}
            self.episode += 1
            self.episode_return, self.episode_length = 0.0, 0
            next_obs, _ = self.env.reset()
        self.obs = next_obs
        if self.step == cfg.learning_starts and cfg.normalization == "warmup":
            self.agent.set_normalizer(*_normalizer_stats(cfg, self.env_id, self.buffer))
        if self.step >= cfg.learning_starts:
            want = self.step % cfg.log_every == 0
            batch = self.buffer.sample(cfg.batch_size, self.device)
            metrics.update(self.agent.update(batch, with_metrics=want))
        return metrics

    def run(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train until ``total_steps`` (or until ``stop_at``, to split a long run over several sessions;
        the next ``resume=auto`` continues from the last checkpoint)."""
        cfg = self.cfg
        end = cfg.total_steps if stop_at is None else min(stop_at, cfg.total_steps)
        start = time.perf_counter()
        bar = progress(total=cfg.total_steps, desc=f"{cfg.agent.algo} {self.env_id}", enabled=cfg.progress_bar,
                       unit="step", initial=self.step)
        t_last, step_last = time.perf_counter(), self.step
        try:
            while self.step < end:
                metrics = self.train_step()
                bar.update(1)
                if self.step % cfg.log_every == 0:
                    now = time.perf_counter()
                    metrics["perf/steps_per_second"] = (self.step - step_last) / max(now - t_last, 1e-9)
                    t_last, step_last = now, self.step
                if metrics:
                    self.logger.log(self.step, metrics)
                if self.step % cfg.eval_every == 0 or self.step == cfg.total_steps:
                    self.evaluate()
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.total_steps:
                    self.wall_seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save()
        finally:
            bar.close()
            self.logger.close()
        final = self.eval_history[-1][1] if self.eval_history else math.nan
        return {"step": self.step, "final_eval_return": final, "eval_history": self.eval_history,
                "wall_seconds": self.wall_seconds, "run_dir": str(self.run_dir)}


def load_agent(checkpoint: str | Path, device: str = "cpu") -> tuple[Agent, str]:
    """The trained agent (with its normalizer) and env id from a checkpoint of :class:`RLTrainer`."""
    state = load_checkpoint(checkpoint)
    agent_cfg = AgentConfig(**state["config"]["agent"])
    model = state["model"]
    obs_dim = model["obs_mean"].shape[0]
    act_dim = model["critic"]["q1.net.0.weight"].shape[1] - obs_dim
    agent = Agent(obs_dim, act_dim, agent_cfg, device)
    agent.load_state_dict(model)
    return agent, state["env_id"]
