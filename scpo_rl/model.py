"""Networks of SAC / SC-SAC (sizes and squashing as in the reference code) and the PR-SAC adversary."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the reference clamps log sigma to [-20, 2] (CleanRL uses [-5, 2])
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """ReLU MLP with PyTorch's default init (the reference does not re-initialize)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))) on [-1, 1]^|A|; the env wrapper maps [-1, 1] to the bounds."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim)
        self.act_dim = act_dim

    def mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized a = tanh(mu + sigma*xi) and log pi(a|s) of shape (B, 1).

        ``noise`` (xi) can be passed to hold the reparameterization noise fixed (tests, finite differences).
        log pi = sum[-1/2 log 2pi - log sigma - xi^2/2 - log(1 - a^2 + 1e-6)], as in the reference.
        """
        mean, log_std = self.mean_log_std(obs)
        if noise is None:
            noise = torch.randn_like(mean)
        action = torch.tanh(mean + log_std.exp() * noise)
        log_prob = (-_HALF_LOG_2PI - log_std - 0.5 * noise.pow(2) - torch.log(1.0 - action.pow(2) + 1e-6))
        return action, log_prob.sum(-1, keepdim=True)

    def deterministic(self, obs: torch.Tensor) -> torch.Tensor:
        """The evaluation policy tanh(mu(s))."""
        return torch.tanh(self.mean_log_std(obs)[0])


class QNetwork(nn.Module):
    """Q(s, a): MLP on the concatenation of state and action."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1))


class TwinQ(nn.Module):
    """The two critics of SAC; ``min_q`` is what both the target and the SCPO penalty use."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.q1 = QNetwork(obs_dim, act_dim, hidden)
        self.q2 = QNetwork(obs_dim, act_dim, hidden)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q1(obs, action), self.q2(obs, action)

    def min_q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        q1, q2 = self(obs, action)
        return torch.min(q1, q2)


class DeterministicAdversary(nn.Module):
    """PR-SAC adversary mu_adv(s) = tanh(MLP(s)), with optional TD3-style clipped Gaussian noise."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim)

    def forward(self, obs: torch.Tensor, noise_std: float = 0.0, noise_clip: float = 0.0) -> torch.Tensor:
        action = torch.tanh(self.net(obs))
        if noise_std > 0:
            noise = (torch.randn_like(action) * noise_std).clamp(-noise_clip, noise_clip)
            action = (action + noise).clamp(-1.0, 1.0)
        return action
