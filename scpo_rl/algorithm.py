"""SAC, SC-SAC (SCPO) and PR-SAC updates, written so that each loss reads like the paper note.

One call of :meth:`Agent.update` is one gradient step, in the reference's order:

1. temperature: L(alpha) = log alpha * (-mean log pi(a|s) - H_target), on a fresh sample a ~ pi(.|s);
2. critic: 1/2 (MSE_1 + MSE_2) against y = r + gamma (1 - terminated) V_target(s');
3. Polyak update of the target critics (every step);
4. actor: mean[alpha log pi(a|s) - min_i Q_i(s, a)] (+ the SCPO penalty), reusing the sample of step 1.

SCPO replaces every soft value V(s) = min_i Q_i(s, a(s)) - alpha log pi(a(s)|s) by its first-order
worst case over an l_inf ball of radius eps around the *normalized* state,
``V(s) - eps * || d/ds min_i Q_i(s, a(s)) ||_1``: the total derivative through the reparameterized
action (noise held fixed), in the target (target critics at s', no graph kept) and in the actor loss
(online critics at s, ``create_graph=True`` so the penalty's gradient reaches the policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from scpo_rl.model import DeterministicAdversary, TanhGaussianActor, TwinQ

ALGOS = ("sac", "scpo", "pr_sac", "dr_sac")


class Batch(NamedTuple):
    """A replay batch of raw (unnormalized) transitions; ``done`` is 1 only on true termination."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor


@dataclass
class AgentConfig:
    """Hyperparameters of the update; the defaults are the reference's (``configs/sc-sac/default.json``)."""

    algo: str = "scpo"
    """sac | scpo (SC-SAC) | pr_sac (probabilistic action-robust SAC) | dr_sac (SAC; the env randomizes)."""
    hidden: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005
    policy_lr: float = 3e-4
    q_lr: float = 3e-4
    alpha_lr: float = 3e-4
    init_log_alpha: float = 0.0
    target_entropy: float | None = None
    """null: -|A| (the usual heuristic)."""
    state_eps: float = 0.005
    """SCPO l_inf radius in the units of the agent's fixed normalizer (only used by algo=scpo); in raw
    observation units it is the box |delta_i| <= state_eps * std_i (:meth:`Agent.raw_radius`)."""
    adversary_prob: float = 0.05
    """PR-SAC: probability that the adversary's action replaces the protagonist's."""
    adversary_period: int = 11
    """PR-SAC: the adversary takes a step every this many updates (reference pr-sac.json: 11)."""
    adversary_noise: float = 0.2
    adversary_noise_clip: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)


def l1_state_gradient(value: torch.Tensor, state: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """|| d value_i / d state_i ||_1 per row, shape (B, 1).

    ``value`` is (B, 1) and row i depends only on ``state[i]`` (no cross-sample layers), so the gradient
    of the sum is the per-sample gradient.
    """
    (grad,) = torch.autograd.grad(value.sum(), state, create_graph=create_graph)
    return grad.abs().sum(-1, keepdim=True)


def soft_value(actor: TanhGaussianActor, critic: TwinQ, state: torch.Tensor, alpha: torch.Tensor,
               eps: float | None, *, create_graph: bool, sample: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor]:
    """min_i Q_i(s, a) - alpha log pi(a|s) [- eps ||grad_s min_i Q_i(s, a(s))||_1 when eps is not None].

    With ``eps`` set, ``state`` must require grad and ``sample`` (if given) must have been drawn from it, so
    that the gradient includes the dQ/da * da/ds path. Returns min_q, log_prob, value, grad_norm.
    """
    action, log_prob = actor.sample(state) if sample is None else sample
    min_q = critic.min_q(state, action)
    value = min_q - alpha * log_prob
    out = {"min_q": min_q, "log_prob": log_prob}
    if eps is not None:
        grad_norm = l1_state_gradient(min_q, state, create_graph=create_graph)
        value = value - eps * grad_norm
        out["grad_norm"] = grad_norm
    out["value"] = value
    return out


class Agent:
    """Actor, twin critics with Polyak targets, learned temperature, optional PR adversary, and the
    fixed observation normalizer (mean, std) that is part of the policy and saved with it."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: AgentConfig, device: str | torch.device = "cpu"):
        if cfg.algo not in ALGOS:
            raise ValueError(f"unknown algo {cfg.algo!r}; choose one of {ALGOS}")
        self.cfg, self.device = cfg, torch.device(device)
        self.obs_dim, self.act_dim = obs_dim, act_dim
        hidden = tuple(cfg.hidden)
        self.actor = TanhGaussianActor(obs_dim, act_dim, hidden).to(self.device)
        self.critic = TwinQ(obs_dim, act_dim, hidden).to(self.device)
        self.critic_target = TwinQ(obs_dim, act_dim, hidden).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.full((1,), float(cfg.init_log_alpha), device=self.device, requires_grad=True)
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.policy_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.q_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.adversary = self.adversary_opt = None
        if cfg.algo == "pr_sac":
            self.adversary = DeterministicAdversary(obs_dim, act_dim, hidden).to(self.device)
            self.adversary_opt = torch.optim.Adam(self.adversary.parameters(), lr=cfg.policy_lr)
        self.obs_mean = torch.zeros(obs_dim, device=self.device)
        self.obs_std = torch.ones(obs_dim, device=self.device)
        self.num_updates = 0
        self._actor_params = list(self.actor.parameters())
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())

    # ----- normalization and acting -------------------------------------------------------------------
    @property
    def state_eps(self) -> float | None:
        """The SCPO radius, or None for the algorithms without the penalty."""
        return float(self.cfg.state_eps) if self.cfg.algo == "scpo" else None

    def set_normalizer(self, mean, std, min_std: float = 1e-3) -> None:
        """Fix the state statistics; sigma < ``min_std`` is set to 1 (as the reference does)."""
        mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).reshape(self.obs_dim)
        std = torch.as_tensor(std, dtype=torch.float32, device=self.device).reshape(self.obs_dim)
        self.obs_mean = mean.clone()
        self.obs_std = torch.where(std < min_std, torch.ones_like(std), std)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def raw_radius(self) -> torch.Tensor | None:
        """SCPO's ball in raw observation units: per-dimension half-widths eps * std_i (the penalty is
        eps ||grad Q||_1 with the gradient taken at the normalized state); None without the penalty."""
        return None if self.state_eps is None else self.state_eps * self.obs_std

    @torch.no_grad()
    def act(self, obs, deterministic: bool = False) -> torch.Tensor:
        """Action in [-1, 1]^|A| for one raw observation (or a batch)."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        s = self.normalize(obs_t)
        return self.actor.deterministic(s) if deterministic else self.actor.sample(s)[0]

    @torch.no_grad()
    def adversary_act(self, obs) -> torch.Tensor:
        s = self.normalize(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
        return self.adversary(s)

    # ----- the update -------------------------------------------------------------------------------
    def critic_target_value(self, batch: Batch, alpha: torch.Tensor) -> torch.Tensor:
        """y = r + gamma (1 - done) V_target(s'), detached (target critics, SCPO penalty at s')."""
        cfg, eps = self.cfg, self.state_eps
        next_s = self.normalize(batch.next_obs)
        if eps is None:
            with torch.no_grad():
                v_next = soft_value(self.actor, self.critic_target, next_s, alpha, None, create_graph=False)["value"]
        else:
            next_s = next_s.detach().requires_grad_(True)
            v_next = soft_value(self.actor, self.critic_target, next_s, alpha, eps, create_graph=False)["value"]
            v_next = v_next.detach()
        if cfg.algo == "pr_sac":  # (1-p) soft V(s', pi) + p Q(s', adv(s') + clipped noise)
            with torch.no_grad():
                adv_a = self.adversary(next_s.detach(), cfg.adversary_noise, cfg.adversary_noise_clip)
                q_adv = self.critic_target.min_q(next_s.detach(), adv_a)
            p = cfg.adversary_prob
            v_next = (1.0 - p) * v_next + p * q_adv
        return (batch.reward + cfg.gamma * (1.0 - batch.done) * v_next).detach()

    def update(self, batch: Batch, with_metrics: bool = False) -> dict[str, float]:
        cfg, eps = self.cfg, self.state_eps
        s = self.normalize(batch.obs)
        if eps is not None:
            s = s.detach().requires_grad_(True)
        action_pi, log_prob_pi = self.actor.sample(s)  # reused by the temperature and the actor steps

        # 1. temperature
        alpha_loss = (self.log_alpha * (-log_prob_pi.detach() - self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        alpha = self.log_alpha.detach().exp()

        # 2. critic
        y = self.critic_target_value(batch, alpha)
        q1, q2 = self.critic(s.detach(), batch.action)
        critic_loss = 0.5 * (F.mse_loss(q1, y) + F.mse_loss(q2, y))
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # 3. Polyak: target <- (1 - tau) target + tau online
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, cfg.tau)

        # 4. actor, against the freshly updated online critics
        v = soft_value(self.actor, self.critic, s, alpha, eps, create_graph=True, sample=(action_pi, log_prob_pi))
        actor_loss = (-v["value"]).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=self._actor_params)  # critic grads are not needed (the reference zeroes them)
        self.actor_opt.step()

        adversary_loss = None
        if cfg.algo == "pr_sac" and self.num_updates % cfg.adversary_period == 0:
            adversary_loss = cfg.adversary_prob * self.critic.min_q(s.detach(), self.adversary(s.detach())).mean()
            self.adversary_opt.zero_grad(set_to_none=True)
            adversary_loss.backward(inputs=list(self.adversary.parameters()))
            self.adversary_opt.step()
        self.num_updates += 1

        if not with_metrics:
            return {}
        m = {
            "train/critic_loss": critic_loss.item(),
            "train/actor_loss": actor_loss.item(),
            "train/alpha": alpha.item(),
            "train/alpha_loss": alpha_loss.item(),
            "train/entropy": -log_prob_pi.detach().mean().item(),
            "train/q_mean": v["min_q"].detach().mean().item(),
        }
        if eps is not None:
            penalty = eps * v["grad_norm"].detach().mean()
            m["train/grad_norm"] = v["grad_norm"].detach().mean().item()
            m["train/penalty"] = penalty.item()
            # the share of the penalty in the actor objective, as the reference logs it
            m["train/penalty_share"] = (penalty / v["min_q"].detach().mean().abs().clamp_min(1e-8)).item()
        if adversary_loss is not None:
            m["train/adversary_loss"] = adversary_loss.item()
        return m

    # ----- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(), "obs_mean": self.obs_mean.clone(),
            "obs_std": self.obs_std.clone(), "num_updates": self.num_updates,
        }
        if self.adversary is not None:
            state["adversary"] = self.adversary.state_dict()
            state["adversary_opt"] = self.adversary_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.obs_mean = state["obs_mean"].to(self.device)
        self.obs_std = state["obs_std"].to(self.device)
        self.num_updates = int(state["num_updates"])
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"])
            self.adversary_opt.load_state_dict(state["adversary_opt"])
