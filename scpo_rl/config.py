"""Typed configs of the Hydra shell (``conf/``) and their mapping onto the library's dataclasses.

The groups ``env`` and ``algo`` and the root keys ``rl`` are typed here (``schema/scpo_rl/...``), the whole
composed config by :class:`ScpoRlConfig`; :func:`run_config_from` turns a composed config into the
library's :class:`scpo_rl.loop.RunConfig`. No torch import at module level (``--help`` answers at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import auto
from typing import TYPE_CHECKING, Any

from omegaconf import MISSING, DictConfig, OmegaConf

from common.schema import Choice, RootConfig, register

if TYPE_CHECKING:
    from scpo_rl.loop import RunConfig


class Algo(Choice):
    sac = auto()
    """SAC (SC-SAC with eps = 0)."""
    scpo = auto()
    """SC-SAC: the state-conservative penalty in the critic target and the actor loss."""
    pr_sac = auto()
    """Probabilistic action-robust SAC."""
    dr_sac = auto()
    """Domain-randomized SAC."""


class Normalization(Choice):
    """The fixed state normalization; SCPO's radius eps is measured in its units."""

    paper = auto()
    """The reference's: its fixed statistics (Hopper, Walker2d, HalfCheetah, IDP), raw states elsewhere."""
    none = auto()
    """Raw observations (eps in raw units)."""
    warmup = auto()
    """Mean/std of our own warm-up rollout, fixed afterwards (not the reference's units: on Hopper the
    untrained policy falls at once, so the height's std is ~0.02 against the reference's 0.19)."""


@dataclass
class RobustnessConfig:
    """The evaluation grid of relative mass and friction scales."""

    mass: list[float] = field(default_factory=lambda: [0.5, 1.5])
    """[lo, hi] relative body mass range of the robustness grid."""
    friction: list[float] = field(default_factory=lambda: [0.5, 1.5])
    """[lo, hi] relative geom friction range (a no-op on the contact-free pendulums)."""


@dataclass
class EnvConfig:
    """The ``env`` group: one gymnasium MuJoCo task."""

    name: str = MISSING
    """Short name, used in run names (hopper, walker2d, ...)."""
    id: str = MISSING
    """gymnasium id (Hopper-v5, ...)."""
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    """The mass x friction grid of the robustness evaluation."""


@dataclass
class AlgoConfig:
    """The ``algo`` group: one option per algorithm (each a subclass with its own keys)."""

    name: Algo = MISSING
    """sac | scpo | pr_sac | dr_sac."""


@dataclass
class SacAlgo(AlgoConfig):
    name: Algo = Algo.sac
    """sac."""


@dataclass
class ScpoAlgo(AlgoConfig):
    name: Algo = Algo.scpo
    """scpo."""
    state_eps: float = 0.005
    """l_inf radius in the units of rl.normalization (paper: 0.005 in the reference's normalized units, i.e.
    0.005 sigma_i per raw dimension, on every env)."""


@dataclass
class PrSacAlgo(AlgoConfig):
    name: Algo = Algo.pr_sac
    """pr_sac."""
    adversary_prob: float = 0.05
    """The adversary's action replaces the protagonist's with this probability."""
    adversary_period: int = 11
    """The adversary takes a step every this many updates (reference pr-sac.json)."""
    adversary_noise: float = 0.2
    """TD3 target noise on the adversary's action in the critic target."""
    adversary_noise_clip: float = 0.5
    """Clip of that noise."""


@dataclass
class DomainRandomizationConfig:
    """Scales drawn uniformly at every episode start."""

    mass: list[float] = field(default_factory=lambda: [0.5, 1.5])
    """[lo, hi] relative body mass range (all bodies)."""
    friction: list[float] = field(default_factory=lambda: [0.5, 1.5])
    """[lo, hi] relative geom friction range (all geoms)."""
    scale_inertia: bool = False
    """Scale inertia with mass and recompute derived constants (mj_setConst)."""


@dataclass
class DrSacAlgo(AlgoConfig):
    name: Algo = Algo.dr_sac
    """dr_sac."""
    domain_randomization: DomainRandomizationConfig = field(default_factory=DomainRandomizationConfig)
    """The ranges of the randomized physics."""


@dataclass
class RLConfig:
    """Root key ``rl``: the SAC family's hyperparameters (the paper's defaults, reference
    configs/sc-sac/default.json)."""

    learning_starts: int = 5000
    """Warm-up steps with the untrained Gaussian policy, no updates (paper: 5,000)."""
    buffer_size: int = 1_000_000
    """Replay capacity (paper: 1e6)."""
    normalization: Normalization = Normalization.paper
    """paper (the reference's fixed statistics; raw where it has none) | none (raw) | warmup (our warm-up's);
    SCPO's eps is in these units."""
    eval_episodes: int = 5
    """Episodes per nominal evaluation."""
    eval_seed: int = 10000
    """Evaluation reset seeds eval_seed+k, shared by every run and method."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Actor and critic MLP widths (paper: 256-256, ReLU)."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Polyak rate of the target critics (updated every step)."""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor (and of the PR adversary)."""
    q_lr: float = 3e-4
    """Adam learning rate of both critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log alpha."""
    init_log_alpha: float = 0.0
    """Initial log temperature (alpha_0 = 1)."""
    target_entropy: float | None = None
    """null: -|A|."""


@dataclass
class ScpoRlConfig(RootConfig):
    """``python -m scpo_rl.train``: the shared keys (trainer counts env steps), ``env``, ``algo`` and ``rl``."""

    env: EnvConfig = MISSING
    """Group ``env``: hopper | walker2d | halfcheetah | inverted_pendulum | inverted_double_pendulum."""
    algo: AlgoConfig = MISSING
    """Group ``algo``: sac | scpo | pr_sac | dr_sac."""
    rl: RLConfig = field(default_factory=RLConfig)
    """The SAC family's hyperparameters."""


register("scpo_rl", ScpoRlConfig, {
    "env": EnvConfig,
    "algo": {"sac": SacAlgo, "scpo": ScpoAlgo, "pr_sac": PrSacAlgo, "dr_sac": DrSacAlgo},
})


def _plain(node: Any) -> Any:
    """Plain containers (closed choices as their names: the run config goes into checkpoints)."""
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True) if isinstance(node, DictConfig) else node


def run_config_from(cfg: DictConfig) -> RunConfig:
    """Map ``trainer`` (common.config.TrainerConfig), ``rl``, ``env`` and ``algo`` onto a :class:`RunConfig`."""
    from scpo_rl.algorithm import AgentConfig
    from scpo_rl.loop import RunConfig

    t, rl, algo = cfg.trainer, _plain(cfg.rl), _plain(cfg.algo)
    agent_keys = ("state_eps", "adversary_prob", "adversary_period", "adversary_noise", "adversary_noise_clip")
    agent = AgentConfig(
        algo=algo["name"], hidden=tuple(rl["hidden"]), gamma=rl["gamma"], tau=rl["tau"], policy_lr=rl["policy_lr"],
        q_lr=rl["q_lr"], alpha_lr=rl["alpha_lr"], init_log_alpha=rl["init_log_alpha"],
        target_entropy=rl["target_entropy"], **{k: algo[k] for k in agent_keys if k in algo},
    )
    if t.max_steps is None:
        raise ValueError("trainer.max_steps (the number of environment steps) must be set")
    return RunConfig(
        env=cfg.env.id, seed=t.seed, total_steps=t.max_steps, learning_starts=rl["learning_starts"],
        batch_size=t.batch_size, buffer_size=rl["buffer_size"], normalization=rl["normalization"],
        eval_every=t.eval_every_steps or t.max_steps, eval_episodes=rl["eval_episodes"], eval_seed=rl["eval_seed"],
        log_every=t.log_every_steps, checkpoint_every=t.checkpoint_every_steps or t.max_steps,
        keep_last=t.keep_last_checkpoints, device=str(t.device), num_threads=t.num_threads,
        progress_bar=t.progress_bar, domain_randomization=algo.get("domain_randomization"), agent=agent,
    )
