"""MuJoCo environments: construction, reference normalization statistics, runtime mass/friction
perturbation (restored afterwards), per-episode domain randomization, and exact env-state capture.

Facts that the tests assert (gymnasium 1.4, MuJoCo 4.0, ``*-v5``):
- ``env.unwrapped.model`` arrays are writable and ``reset`` does not restore them, so every perturbation
  here scales from a saved nominal copy and puts it back.
- Friction is a no-op on InvertedPendulum and InvertedDoublePendulum: every geom has ``contype=0`` (no
  contacts), so trajectories are bit-identical under any friction scale. Sweep mass only there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

ENV_IDS = {
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "halfcheetah": "HalfCheetah-v5",
    "inverted_pendulum": "InvertedPendulum-v5",
    "inverted_double_pendulum": "InvertedDoublePendulum-v5",
}

# The reference's fixed statistics (data/<Env>-v2.npy, rounded to 3 decimals in the paper note). v5 keeps
# the v2 observation layout for these tasks, except InvertedDoublePendulum, whose two constant-zero
# dimensions were dropped (we keep the first 9 entries).
PAPER_STATS: dict[str, tuple[list[float], list[float]]] = {
    "Hopper-v5": (
        [1.345, -0.038, -0.391, -0.211, 0.148, 2.507, -0.066, 0.005, -0.197, -0.010, 0.038],
        [0.190, 0.069, 0.212, 0.207, 0.609, 0.777, 1.482, 1.070, 1.677, 2.492, 5.776],
    ),
    "InvertedDoublePendulum-v5": (
        [0.031, -0.002, 0.003, 0.991, 0.988, -0.032, 0.031, -0.003, 0.006],
        [0.177, 0.128, 0.148, 0.034, 0.054, 0.903, 1.727, 2.019, 0.672],
    ),
    "Walker2d-v5": (
        [1.113, 0.122, -0.370, -0.775, 0.309, -0.330, -0.619, 0.238, 2.687, -0.153, -0.136, -0.486,
         -0.698, -0.239, -0.470, -0.501, -0.354],
        [0.127, 0.425, 0.564, 0.888, 0.708, 0.560, 0.699, 0.717, 1.839, 1.106, 4.791, 5.164, 6.191,
         6.394, 5.268, 6.060, 6.032],
    ),
    "HalfCheetah-v5": (
        [-0.084, 0.151, 0.136, 0.009, 0.081, -0.104, -0.053, -0.159, 8.503, -0.073, -0.059, 0.300,
         -0.297, -0.097, -0.091, 0.044, -0.101],
        [0.096, 0.987, 0.540, 0.495, 0.426, 0.448, 0.459, 0.348, 4.711, 0.892, 2.024, 13.158, 11.747,
         10.663, 10.927, 10.526, 7.460],
    ),
}



def reference_stats(env_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The reference's fixed (mean, std) of ``env_id``, or None where it had none (it then fed raw states).

    These define the units of SCPO's radius: with them the network sees s~ = (s - mu) / sigma, so an l_inf
    ball of radius eps around s~ is, in raw observation units, the box |delta_i| <= eps * sigma_i
    (``tests/scpo_rl/test_algorithm.py::test_eps_is_in_the_reference_units``).
    """
    stats = PAPER_STATS.get(resolve_env_id(env_id))
    return None if stats is None else (np.asarray(stats[0], dtype=np.float64), np.asarray(stats[1], dtype=np.float64))


# Environments whose friction axis does nothing (no contacts); see the module docstring.
FRICTIONLESS_ENVS = ("InvertedPendulum-v5", "InvertedDoublePendulum-v5")


def resolve_env_id(name: str) -> str:
    """Accept a gymnasium id (``Hopper-v5``) or a short name (``hopper``)."""
    if name in ENV_IDS.values():
        return name
    if name in ENV_IDS:
        return ENV_IDS[name]
    raise ValueError(f"unknown environment {name!r}; use one of {sorted(ENV_IDS)} or {sorted(ENV_IDS.values())}")


def make_env(env_id: str, *, domain_randomization: dict[str, Any] | None = None, seed: int | None = None) -> gym.Env:
    """The v5 task (TimeLimit 1,000) with actions rescaled from [-1, 1] to the env's bounds.

    ``domain_randomization``: {"mass": [lo, hi], "friction": [lo, hi], "scale_inertia": bool} samples
    both scales uniformly at every reset (DR-SAC).
    """
    env = gym.make(resolve_env_id(env_id))
    shape = env.action_space.shape
    env = gym.wrappers.RescaleAction(env, np.full(shape, -1.0, np.float32), np.full(shape, 1.0, np.float32))
    if domain_randomization:
        env = DomainRandomization(env, seed=seed, **domain_randomization)
    return env


# ----- perturbation --------------------------------------------------------------------------------
class ModelPerturber:
    """Scale body masses and geom friction of a MuJoCo model relative to its nominal values.

    Scales are always relative to the nominal copy taken at construction (never cumulative).
    ``scale_inertia=False`` is the reference's mass-only scaling (inertia and derived quantities such as
    ``body_subtreemass`` are left stale); ``True`` scales ``body_inertia`` with the mass and recomputes
    the derived constants with ``mj_setConst`` (a physically consistent body).
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self.model, self.data = model, data
        self.nominal_mass = model.body_mass.copy()
        self.nominal_inertia = model.body_inertia.copy()
        self.nominal_friction = model.geom_friction.copy()
        self._set_const_used = False

    def body_ids(self, bodies: Sequence[str] | None) -> np.ndarray:
        if bodies is None:
            return np.arange(self.model.nbody)
        ids = []
        for name in bodies:
            i = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
            if i < 0:
                names = [self.model.body(j).name for j in range(self.model.nbody)]
                raise ValueError(f"no body named {name!r} in this model; bodies are {names}")
            ids.append(i)
        return np.asarray(ids, dtype=int)

    def apply(self, mass: float = 1.0, friction: float = 1.0, *, bodies: Sequence[str] | None = None,
              scale_inertia: bool = False) -> None:
        """Set mass x``mass`` (all or named bodies) and friction x``friction`` (all geoms, all 3 columns).

        Both factors are applied unconditionally (the reference swapped the two conditions, so a cell
        where one factor was exactly 1.0 lost the other one).
        """
        if mass <= 0 or friction < 0:
            raise ValueError(f"mass scale must be > 0 and friction scale >= 0, got mass={mass}, friction={friction}")
        self.restore()
        ids = self.body_ids(bodies)
        m = self.model
        m.body_mass[ids] = self.nominal_mass[ids] * mass
        m.geom_friction[:] = self.nominal_friction * friction
        if scale_inertia:
            m.body_inertia[ids] = self.nominal_inertia[ids] * mass
            mujoco.mj_setConst(m, self.data)
            self._set_const_used = True

    def restore(self) -> None:
        m = self.model
        m.body_mass[:] = self.nominal_mass
        m.body_inertia[:] = self.nominal_inertia
        m.geom_friction[:] = self.nominal_friction
        if self._set_const_used:  # recompute derived constants from the nominal values (exact, tested)
            mujoco.mj_setConst(m, self.data)
            self._set_const_used = False


def perturber_of(env: gym.Env) -> ModelPerturber:
    """The env's perturber, created once per env so that its nominal copy is the true nominal model."""
    base = env.unwrapped
    if not hasattr(base, "_scpo_perturber"):
        base._scpo_perturber = ModelPerturber(base.model, base.data)
    return base._scpo_perturber


@contextlib.contextmanager
def perturbed(env: gym.Env, mass: float = 1.0, friction: float = 1.0, *, bodies: Sequence[str] | None = None,
              scale_inertia: bool = False) -> Iterator[gym.Env]:
    """``with perturbed(env, mass=1.5, friction=0.8): ...`` runs the body on the scaled model and restores
    the nominal one afterwards, also on exceptions."""
    p = perturber_of(env)
    p.apply(mass, friction, bodies=bodies, scale_inertia=scale_inertia)
    try:
        yield env
    finally:
        p.restore()


class PerturbedDynamics(gym.Wrapper):
    """An env whose mass and friction stay scaled (relative to nominal) for the wrapper's lifetime;
    ``set(...)`` changes the scales, ``restore()`` or ``close()`` puts the nominal model back."""

    def __init__(self, env: gym.Env, mass: float = 1.0, friction: float = 1.0, *,
                 bodies: Sequence[str] | None = None, scale_inertia: bool = False):
        super().__init__(env)
        self.set(mass, friction, bodies=bodies, scale_inertia=scale_inertia)

    def set(self, mass: float = 1.0, friction: float = 1.0, *, bodies: Sequence[str] | None = None,
            scale_inertia: bool = False) -> None:
        perturber_of(self.env).apply(mass, friction, bodies=bodies, scale_inertia=scale_inertia)
        self.scales = (float(mass), float(friction))

    def restore(self) -> None:
        perturber_of(self.env).restore()
        self.scales = (1.0, 1.0)

    def close(self):
        self.restore()
        return super().close()


class DomainRandomization(gym.Wrapper):
    """DR-SAC's training env: mass and friction scales drawn uniformly per episode (at every reset)."""

    def __init__(self, env: gym.Env, mass=(1.0, 1.0), friction=(1.0, 1.0), scale_inertia: bool = False,
                 bodies: Sequence[str] | None = None, seed: int | None = None):
        super().__init__(env)
        self.mass_range, self.friction_range = tuple(map(float, mass)), tuple(map(float, friction))
        self.scale_inertia, self.bodies = scale_inertia, bodies
        self.rng = np.random.default_rng(seed)
        self.current = (1.0, 1.0)

    def reset(self, **kwargs):
        self.current = (float(self.rng.uniform(*self.mass_range)), float(self.rng.uniform(*self.friction_range)))
        perturber_of(self.env).apply(*self.current, bodies=self.bodies, scale_inertia=self.scale_inertia)
        obs, info = self.env.reset(**kwargs)
        info = dict(info, mass_scale=self.current[0], friction_scale=self.current[1])
        return obs, info

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.current = tuple(state["current"])
        perturber_of(self.env).apply(*self.current, bodies=self.bodies, scale_inertia=self.scale_inertia)


# ----- exact env state (resume mid-episode) -------------------------------------------------------------
def _wrappers(env: gym.Env) -> list[gym.Env]:
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


def capture_env_state(env: gym.Env) -> dict[str, Any]:
    """Everything needed to continue an episode bit-exactly: MuJoCo's full integration state (qpos,
    qvel, act, warm start, time, ...), the env's reset RNG, TimeLimit's step count, DR wrapper state."""
    base = env.unwrapped
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    mj_state = np.empty(mujoco.mj_stateSize(base.model, spec), dtype=np.float64)
    mujoco.mj_getState(base.model, base.data, mj_state, spec)
    state: dict[str, Any] = {"mujoco": mj_state, "np_random": base.np_random.bit_generator.state, "wrappers": {}}
    for i, w in enumerate(_wrappers(env)):
        if hasattr(w, "_elapsed_steps"):
            state["wrappers"][f"{i}:elapsed"] = w._elapsed_steps
        if isinstance(w, DomainRandomization):
            state["wrappers"][f"{i}:dr"] = w.state_dict()
    return state


def restore_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_env_state`; the env must have been reset once (gymnasium's order check)."""
    chain = _wrappers(env)
    for key, value in state["wrappers"].items():
        i, kind = key.split(":")
        w = chain[int(i)]
        if kind == "elapsed":
            w._elapsed_steps = value
        elif kind == "dr":
            w.load_state_dict(value)
    base = env.unwrapped
    mujoco.mj_setState(base.model, base.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(base.model, base.data)
    base.np_random.bit_generator.state = state["np_random"]
