"""Uniform replay buffer on preallocated numpy arrays; its contents and sampling RNG are checkpointable."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from scpo_rl.algorithm import Batch


class ReplayBuffer:
    """FIFO ring buffer of (obs, action, reward, next_obs, terminated) transitions.

    ``done`` stores *termination* only: time-limit truncations are bootstrapped, as in the reference
    (its env had no time limit at all, so episode ends at 1,000 steps were never terminals).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int = 0):
        if capacity <= 0:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity, self.obs_dim, self.act_dim = int(capacity), obs_dim, act_dim
        self.obs = np.zeros((self.capacity, obs_dim), dtype=np.float32)
        self.next_obs = np.zeros((self.capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((self.capacity, act_dim), dtype=np.float32)
        self.reward = np.zeros((self.capacity, 1), dtype=np.float32)
        self.done = np.zeros((self.capacity, 1), dtype=np.float32)
        self.pos = 0
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward: float, next_obs, terminated: bool) -> None:
        i = self.pos
        self.obs[i] = obs
        self.action[i] = action
        self.reward[i] = reward
        self.next_obs[i] = next_obs
        self.done[i] = float(terminated)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device: torch.device | str = "cpu") -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        arrays = (self.obs[idx], self.action[idx], self.reward[idx], self.next_obs[idx], self.done[idx])
        return Batch(*(torch.from_numpy(a).to(device) for a in arrays))

    def observations(self) -> np.ndarray:
        """All stored observations (the warm-up rollout, when called right after it)."""
        return self.obs[: self.size]

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "capacity": self.capacity, "pos": self.pos, "size": n, "rng": self.rng.bit_generator.state,
            "obs": self.obs[:n].copy(), "action": self.action[:n].copy(), "reward": self.reward[:n].copy(),
            "next_obs": self.next_obs[:n].copy(), "done": self.done[:n].copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay capacity mismatch: checkpoint {state['capacity']}, config {self.capacity}")
        n = state["size"]
        for key in ("obs", "action", "reward", "next_obs", "done"):
            getattr(self, key)[:n] = state[key]
        self.pos, self.size = state["pos"], n
        self.rng.bit_generator.state = state["rng"]
