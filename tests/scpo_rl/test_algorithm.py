"""The SAC / SCPO / PR-SAC updates: golden values, exact equivalences, the penalty's math."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from scpo_rl.algorithm import Agent, AgentConfig, Batch, l1_state_gradient, soft_value
from scpo_rl.model import TanhGaussianActor, TwinQ

OBS, ACT, B = 3, 2, 8


def fixed_batch(seed: int = 0, dtype=torch.float32) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(B, OBS, generator=g, dtype=dtype), torch.rand(B, ACT, generator=g, dtype=dtype) * 2 - 1,
                 torch.randn(B, 1, generator=g, dtype=dtype), torch.randn(B, OBS, generator=g, dtype=dtype),
                 (torch.rand(B, 1, generator=g) < 0.3).to(dtype))


def make_agent(algo: str, seed: int = 0, **kw) -> Agent:
    torch.manual_seed(seed)
    agent = Agent(OBS, ACT, AgentConfig(algo=algo, hidden=(16, 16), **kw))
    agent.set_normalizer(torch.tensor([0.1, -0.2, 0.3]), torch.tensor([1.5, 0.5, 2.0]))
    return agent


def params(agent: Agent) -> list[torch.Tensor]:
    return [p.detach().clone() for m in (agent.actor, agent.critic, agent.critic_target) for p in m.parameters()] + [
        agent.log_alpha.detach().clone()]


def test_log_prob_golden_value():
    """mu = 0, log sigma = 0, xi = 0: a = 0 and log pi = |A| * (-1/2 log 2 pi - log(1 + 1e-6))."""
    actor = TanhGaussianActor(OBS, ACT, hidden=(4,))
    for p in actor.parameters():
        torch.nn.init.zeros_(p)
    a, logp = actor.sample(torch.ones(1, OBS), noise=torch.zeros(1, ACT))
    assert torch.equal(a, torch.zeros(1, ACT))
    assert logp.item() == pytest.approx(2 * (-0.5 * math.log(2 * math.pi) - math.log(1 + 1e-6)), abs=1e-6)
    assert logp.item() == pytest.approx(-1.8378790, abs=1e-6)


def test_log_prob_matches_torch_distributions():
    torch.manual_seed(1)
    actor = TanhGaussianActor(OBS, ACT, hidden=(8,)).double()
    s = torch.randn(5, OBS, dtype=torch.float64)
    xi = torch.randn(5, ACT, dtype=torch.float64)
    a, logp = actor.sample(s, noise=xi)
    mean, log_std = actor.mean_log_std(s)
    u = mean + log_std.exp() * xi
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)
    torch.testing.assert_close(a, torch.tanh(u))
    torch.testing.assert_close(logp, ref.sum(-1, keepdim=True))


def test_eps_zero_is_exactly_sac():
    """SCPO with eps = 0 runs the whole gradient path yet gives SAC's losses and parameters bit for bit."""
    sac, scpo = make_agent("sac"), make_agent("scpo", state_eps=0.0)
    for a, b in zip(params(sac), params(scpo)):
        assert torch.equal(a, b)
    for step in range(3):
        batch = fixed_batch(step)
        torch.manual_seed(100 + step)
        m_sac = sac.update(batch, with_metrics=True)
        torch.manual_seed(100 + step)
        m_scpo = scpo.update(batch, with_metrics=True)
        for k in ("train/critic_loss", "train/actor_loss", "train/alpha_loss", "train/alpha"):
            assert m_sac[k] == m_scpo[k], k
        assert m_scpo["train/penalty"] == 0.0 and m_scpo["train/grad_norm"] > 0
    for a, b in zip(params(sac), params(scpo)):
        assert torch.equal(a, b)


def test_eps_changes_the_update():
    sac, scpo = make_agent("sac"), make_agent("scpo", state_eps=0.005)
    torch.manual_seed(0)
    m1 = sac.update(fixed_batch(), with_metrics=True)
    torch.manual_seed(0)
    m2 = scpo.update(fixed_batch(), with_metrics=True)
    assert m1["train/critic_loss"] != m2["train/critic_loss"]
    assert m2["train/penalty"] > 0 and 0 < m2["train/penalty_share"] < 1


def linear_twin_q(dtype=torch.float64) -> TwinQ:
    """Both heads the same linear function of (s, a): min_i Q_i is linear too."""
    torch.manual_seed(3)
    q = TwinQ(OBS, ACT, hidden=()).to(dtype)
    q.q2.load_state_dict(q.q1.state_dict())
    return q


def test_linear_q_penalty_is_exact_min_over_the_ball_corners():
    """For a Q linear in s (and an action independent of s), Q - eps ||grad_s Q||_1 equals the exact minimum of
    Q(s + delta) over the l_inf ball, which a linear function attains at a corner."""
    q = linear_twin_q()
    actor = TanhGaussianActor(OBS, ACT, hidden=()).double()
    with torch.no_grad():
        actor.net[0].weight.zero_()  # a(s) constant: the penalty then only sees dQ/ds
    eps, alpha = 0.3, torch.tensor(0.0, dtype=torch.float64)
    s = torch.randn(4, OBS, dtype=torch.float64).requires_grad_(True)
    xi = torch.randn(4, ACT, dtype=torch.float64)
    sample = actor.sample(s, noise=xi)
    robust = soft_value(actor, q, s, alpha, eps, create_graph=False, sample=sample)["value"]
    corners = torch.tensor(list(itertools.product([-eps, eps], repeat=OBS)), dtype=torch.float64)
    with torch.no_grad():
        exact = torch.stack([q.min_q(s + c, sample[0]) for c in corners]).min(0).values
    torch.testing.assert_close(robust.detach(), exact, rtol=0, atol=1e-12)


def test_state_gradient_is_the_total_derivative_through_the_action():
    """The penalty's gradient is d/ds min Q(s, a(s)) with the noise fixed: it includes dQ/da da/ds and matches
    central finite differences of the composed function."""
    torch.manual_seed(4)
    q = TwinQ(OBS, ACT, hidden=(16,)).double()
    actor = TanhGaussianActor(OBS, ACT, hidden=(16,)).double()
    s = torch.randn(5, OBS, dtype=torch.float64).requires_grad_(True)
    xi = torch.randn(5, ACT, dtype=torch.float64)
    a, _ = actor.sample(s, noise=xi)
    total = torch.autograd.grad(q.min_q(s, a).sum(), s)[0]
    partial = torch.autograd.grad(q.min_q(s, a.detach()).sum(), s)[0]
    assert (total - partial).abs().max() > 1e-4  # the dQ/da da/ds path is there

    def f(x):
        return q.min_q(x, actor.sample(x, noise=xi)[0]).squeeze(-1)

    h = 1e-6
    fd = torch.zeros_like(total)
    with torch.no_grad():
        for j in range(OBS):
            e = torch.zeros(OBS, dtype=torch.float64)
            e[j] = h
            fd[:, j] = (f(s + e) - f(s - e)) / (2 * h)
    torch.testing.assert_close(total, fd, rtol=1e-5, atol=1e-6)
    v = soft_value(actor, q, s, torch.tensor(0.0, dtype=torch.float64), 1.0, create_graph=False,
                   sample=actor.sample(s, noise=xi))
    torch.testing.assert_close(v["grad_norm"], total.abs().sum(-1, keepdim=True))


def test_smooth_q_first_order_error_is_quadratic():
    """Q - eps||grad Q||_1 matches Q(s - eps sign grad Q) up to O(eps^2) for a smooth Q."""
    torch.manual_seed(5)
    w = torch.randn(OBS, dtype=torch.float64)

    def qf(x):
        return (x @ w + 0.5 * (x ** 2).sum(-1) + torch.sin(x).sum(-1)).unsqueeze(-1)

    s = torch.randn(6, OBS, dtype=torch.float64).requires_grad_(True)
    q = qf(s)
    g = torch.autograd.grad(q.sum(), s, retain_graph=True)[0]
    gn = l1_state_gradient(q, s, create_graph=False)
    errs = []
    for eps in (1e-2, 5e-3):
        with torch.no_grad():
            fgsm = qf(s - eps * g.sign())
        errs.append(((q - eps * gn) - fgsm).abs().max().item())
    assert errs[0] / errs[1] == pytest.approx(4.0, rel=0.1)


def test_actor_penalty_gives_nonzero_policy_gradients():
    agent = make_agent("scpo", state_eps=0.005)
    s = agent.normalize(fixed_batch().obs).requires_grad_(True)
    a, logp = agent.actor.sample(s)
    v = soft_value(agent.actor, agent.critic, s, torch.tensor(1.0), 0.005, create_graph=True, sample=(a, logp))
    penalty = (0.005 * v["grad_norm"]).mean()
    grads = torch.autograd.grad(penalty, list(agent.actor.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    # without create_graph the penalty would be a constant for the actor
    with pytest.raises(RuntimeError):
        s2 = agent.normalize(fixed_batch().obs).requires_grad_(True)
        gn = l1_state_gradient(agent.critic.min_q(s2, agent.actor.sample(s2)[0]), s2, create_graph=False)
        torch.autograd.grad(gn.mean(), list(agent.actor.parameters()))


@pytest.mark.parametrize("algo", ["sac", "scpo", "pr_sac"])
def test_actor_step_leaves_critics_untouched(algo):
    """The actor (and adversary) steps that follow the critic step change neither the online critics nor
    their gradients: what leaves update() is exactly the critics' state right after their own step.
    (Fails if the actor loss is back-propagated into the critics and any optimizer then steps them, or if
    the critic gradients are overwritten.)"""
    agent = make_agent(algo)
    before = copy.deepcopy(agent.critic.state_dict())
    snapshots = []
    critic_step = agent.critic_opt.step

    def step_and_snapshot(*args, **kwargs):  # the state right after each step of the critics' optimizer
        out = critic_step(*args, **kwargs)
        snapshots.append(([p.detach().clone() for p in agent.critic.parameters()],
                          [p.grad.detach().clone() for p in agent.critic.parameters()]))
        return out

    agent.critic_opt.step = step_and_snapshot
    for _ in range(2):  # the second update also runs the PR adversary's off-period path
        snapshots.clear()
        agent.update(fixed_batch())
        assert len(snapshots) == 1  # one critic step per update
        params_after, grads_after = snapshots[0]
        assert all(torch.equal(a, p) for a, p in zip(params_after, agent.critic.parameters()))
        assert all(torch.equal(g, p.grad) for g, p in zip(grads_after, agent.critic.parameters()))
    assert any(not torch.equal(before[k], v) for k, v in agent.critic.state_dict().items())  # the critic did learn


def test_critic_target_golden_formula_and_polyak():
    agent = make_agent("sac", gamma=0.9, tau=0.25)
    batch = fixed_batch(7)
    alpha = torch.tensor(0.5)
    torch.manual_seed(11)
    y = agent.critic_target_value(batch, alpha)
    torch.manual_seed(11)
    s2 = agent.normalize(batch.next_obs)
    a2, logp2 = agent.actor.sample(s2)
    q1, q2 = agent.critic_target(s2, a2)
    ref = batch.reward + 0.9 * (1 - batch.done) * (torch.min(q1, q2) - 0.5 * logp2)
    torch.testing.assert_close(y, ref.detach())
    online = [p.detach().clone() for p in agent.critic.parameters()]
    target = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.update(batch)
    new_online = list(agent.critic.parameters())
    for t0, o1, t1 in zip(target, new_online, agent.critic_target.parameters()):
        torch.testing.assert_close(t1, 0.75 * t0 + 0.25 * o1.detach())
    assert any(not torch.equal(a, b) for a, b in zip(online, new_online))


def test_pr_sac_target_mixes_adversary_value():
    agent = make_agent("pr_sac", adversary_prob=0.3, adversary_noise=0.0)
    batch = fixed_batch(8)
    alpha = torch.tensor(0.2)
    torch.manual_seed(3)
    y = agent.critic_target_value(batch, alpha)
    torch.manual_seed(3)
    s2 = agent.normalize(batch.next_obs)
    a2, logp2 = agent.actor.sample(s2)
    soft = agent.critic_target.min_q(s2, a2) - 0.2 * logp2
    adv = agent.critic_target.min_q(s2, agent.adversary(s2))
    ref = batch.reward + 0.99 * (1 - batch.done) * (0.7 * soft + 0.3 * adv)
    torch.testing.assert_close(y, ref.detach())


def test_pr_sac_adversary_steps_on_its_period():
    agent = make_agent("pr_sac", adversary_period=3)
    w0 = agent.adversary.net[0].weight.detach().clone()
    seen = []
    for i in range(4):
        m = agent.update(fixed_batch(i), with_metrics=True)
        seen.append("train/adversary_loss" in m)
    assert seen == [True, False, False, True]
    assert not torch.equal(w0, agent.adversary.net[0].weight)


def test_state_dict_round_trip():
    a, b = make_agent("pr_sac", seed=0), make_agent("pr_sac", seed=1)
    a.update(fixed_batch())
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # Adam.state_dict() shares tensors with the live optimizer
    for x, y in zip(params(a), params(b)):
        assert torch.equal(x, y)
    torch.manual_seed(0)
    ma = a.update(fixed_batch(1), with_metrics=True)
    torch.manual_seed(0)
    mb = b.update(fixed_batch(1), with_metrics=True)
    assert ma == mb


def test_normalizer_replaces_tiny_std():
    agent = make_agent("sac")
    agent.set_normalizer([0.0, 1.0, 2.0], [1e-4, 2.0, 0.0])
    assert agent.obs_std.tolist() == [1.0, 2.0, 1.0]


def test_bad_algo_is_rejected():
    with pytest.raises(ValueError, match="unknown algo"):
        Agent(OBS, ACT, AgentConfig(algo="td3"))


def test_agent_learns_a_contextual_bandit():
    """One-step episodes, r = -(a - 0.5 s)^2: SAC and SCPO both learn the optimal deterministic action
    (mean error 0.26 at initialization, about 0.03 after 200 updates)."""
    grid = torch.linspace(-1, 1, 21).unsqueeze(-1)
    for algo in ("sac", "scpo"):
        torch.manual_seed(0)
        agent = Agent(1, 1, AgentConfig(algo=algo, hidden=(32, 32), policy_lr=3e-3, q_lr=3e-3, alpha_lr=3e-3))
        err0 = (agent.act(grid, deterministic=True) - 0.5 * grid).abs().mean().item()
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            s = torch.rand(64, 1, generator=g) * 2 - 1
            a = torch.rand(64, 1, generator=g) * 2 - 1
            agent.update(Batch(s, a, -((a - 0.5 * s) ** 2), s, torch.ones(64, 1)))
        err = (agent.act(grid, deterministic=True) - 0.5 * grid).abs().mean().item()
        assert err0 > 0.2 and err < 0.06, (algo, err0, err)


def test_eps_is_in_the_reference_units():
    """By default the state is normalized with the reference's fixed statistics, so SCPO's eps = 0.005 is the
    reference's ball: a raw perturbation of eps * sigma_ref_i along dimension i is eps in normalized units
    (a raw perturbation of eps is eps / sigma_ref_i), and for a Q linear in the state the penalized value is
    the exact minimum over the raw box |delta_i| <= eps * sigma_ref_i; with normalization=none the box is
    eps in raw units."""
    from scpo_rl.config import Normalization, RLConfig
    from scpo_rl.loop import RunConfig

    assert RunConfig().normalization == "paper" and RLConfig().normalization is Normalization.paper
    from scpo_rl.envs import reference_stats
    mean, std = reference_stats("Hopper-v5")
    assert std[0] == pytest.approx(0.190) and mean.shape == (11,)  # torso height: sigma 0.19 in the reference
    eps = 0.005
    s = torch.randn(4, 11, dtype=torch.float64) * torch.as_tensor(std) + torch.as_tensor(mean)
    for stats in (reference_stats("Hopper-v5"), None):  # paper (default), then none (raw units)
        torch.manual_seed(5)
        agent = Agent(11, 3, AgentConfig(algo="scpo", state_eps=eps, hidden=()))
        if stats is not None:
            agent.set_normalizer(*stats)
        agent.obs_mean, agent.obs_std = agent.obs_mean.double(), agent.obs_std.double()
        sigma = torch.as_tensor(stats[1]) if stats is not None else torch.ones(11, dtype=torch.float64)
        torch.testing.assert_close(agent.raw_radius(), eps * sigma)
        for i in (0, 5, 10):  # raw eps * sigma_i -> normalized eps; raw eps -> eps / sigma_i
            e = torch.zeros(11, dtype=torch.float64)
            e[i] = 1.0
            torch.testing.assert_close(agent.normalize(s + eps * sigma[i] * e) - agent.normalize(s), eps * e.expand(4, 11))
            torch.testing.assert_close((agent.normalize(s + eps * e) - agent.normalize(s))[:, i],
                                       torch.full((4,), eps / float(sigma[i]), dtype=torch.float64))
        q = TwinQ(11, 3, hidden=()).double()
        q.q2.load_state_dict(q.q1.state_dict())
        actor = TanhGaussianActor(11, 3, hidden=()).double()
        with torch.no_grad():
            actor.net[0].weight.zero_()  # a(s) constant: the penalty only sees dQ/ds
        s_norm = agent.normalize(s).detach().requires_grad_(True)
        sample = actor.sample(s_norm, noise=torch.randn(4, 3, dtype=torch.float64))
        robust = soft_value(actor, q, s_norm, torch.tensor(0.0, dtype=torch.float64), agent.state_eps,
                            create_graph=False, sample=sample)["value"].detach()
        corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=11)), dtype=torch.float64) * agent.raw_radius()
        with torch.no_grad():
            shifted = agent.normalize(s[None] + corners[:, None])  # (corners, 4, 11)
            exact = q.min_q(shifted, sample[0].expand(len(corners), 4, 3)).min(0).values
        torch.testing.assert_close(robust, exact, rtol=0, atol=1e-10)
