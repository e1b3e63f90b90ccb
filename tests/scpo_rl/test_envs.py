"""Mass/friction perturbation, restore, the pendulums' friction no-op, DR, exact env-state capture."""

from __future__ import annotations

import numpy as np
import pytest

from scpo_rl.envs import (
    FRICTIONLESS_ENVS,
    PerturbedDynamics,
    capture_env_state,
    make_env,
    perturbed,
    perturber_of,
    resolve_env_id,
    restore_env_state,
)


def rollout(env, steps: int = 40, seed: int = 0) -> np.ndarray:
    """Observations under a fixed open-loop action sequence (no termination check: physics only)."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    out = [obs]
    for _ in range(steps):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        out.append(obs)
    return np.array(out)


@pytest.fixture(scope="module")
def hopper():
    env = make_env("hopper")
    yield env
    env.close()


def test_mass_changes_a_rollout_and_the_model_is_restored(hopper):
    nominal = rollout(hopper)
    model = hopper.unwrapped.model
    mass0, fric0, inertia0 = model.body_mass.copy(), model.geom_friction.copy(), model.body_inertia.copy()
    with perturbed(hopper, mass=1.5):
        assert np.allclose(model.body_mass, mass0 * 1.5)
        assert np.array_equal(model.body_inertia, inertia0)  # reference: mass only
        heavy = rollout(hopper)
    assert not np.allclose(heavy, nominal)
    assert np.array_equal(model.body_mass, mass0) and np.array_equal(model.geom_friction, fric0)
    assert np.array_equal(rollout(hopper), nominal)  # bit-identical after restore


def test_friction_changes_hopper_and_all_three_columns_scale(hopper):
    nominal = rollout(hopper, steps=80)
    fric0 = hopper.unwrapped.model.geom_friction.copy()
    with perturbed(hopper, friction=0.5):
        assert np.allclose(hopper.unwrapped.model.geom_friction, fric0 * 0.5)
        slippery = rollout(hopper, steps=80)
    assert not np.allclose(slippery, nominal)


def test_consistent_inertia_variant_is_restored_exactly(hopper):
    nominal = rollout(hopper)
    model = hopper.unwrapped.model
    derived0 = {k: getattr(model, k).copy() for k in ("body_subtreemass", "dof_invweight0", "actuator_acc0", "dof_M0")}
    with perturbed(hopper, mass=2.0, scale_inertia=True):
        assert np.allclose(model.body_subtreemass, derived0["body_subtreemass"] * 2.0)
        assert not np.allclose(rollout(hopper), nominal)
    for k, v in derived0.items():
        assert np.array_equal(getattr(model, k), v), k
    assert np.array_equal(rollout(hopper), nominal)


def test_named_bodies_only(hopper):
    model = hopper.unwrapped.model
    mass0 = model.body_mass.copy()
    with perturbed(hopper, mass=3.0, bodies=["foot"]):
        foot = model.body("foot").id
        changed = np.flatnonzero(model.body_mass != mass0)
        assert changed.tolist() == [foot]
    with pytest.raises(ValueError, match="no body named 'tail'"):
        with perturbed(hopper, mass=2.0, bodies=["tail"]):
            pass
    assert np.array_equal(model.body_mass, mass0)


def test_restored_after_an_exception(hopper):
    mass0 = hopper.unwrapped.model.body_mass.copy()
    with pytest.raises(KeyError):
        with perturbed(hopper, mass=0.3, friction=2.0):
            raise KeyError("boom")
    assert np.array_equal(hopper.unwrapped.model.body_mass, mass0)


def test_every_hopper_grid_cell_changes_the_trajectory(hopper):
    """The reference's 11x11 Hopper grid, bug fixed: both factors always applied. Cells other than the
    nominal one (there is none: 1.0 is not on the mass axis) all differ from nominal."""
    nominal = rollout(hopper, steps=25)
    for m in np.linspace(0.2, 1.6, 11):
        for f in np.linspace(0.7, 1.3, 11):
            with perturbed(hopper, mass=m, friction=f):
                model = hopper.unwrapped.model
                assert np.allclose(model.body_mass, perturber_of(hopper).nominal_mass * m)
                assert np.allclose(model.geom_friction, perturber_of(hopper).nominal_friction * f)
                assert not np.array_equal(rollout(hopper, steps=25), nominal), (m, f)


@pytest.mark.parametrize("env_id", FRICTIONLESS_ENVS)
def test_friction_is_a_noop_on_the_inverted_pendulums(env_id):
    """Documented fact: no geom has contacts (contype=0), so friction cannot act; mass does."""
    env = make_env(env_id)
    assert (env.unwrapped.model.geom_contype == 0).all()
    nominal = rollout(env, steps=30)
    for f in (0.5, 2.0):
        with perturbed(env, friction=f):
            assert np.array_equal(rollout(env, steps=30), nominal)
    with perturbed(env, mass=2.0):
        assert not np.array_equal(rollout(env, steps=30), nominal)
    env.close()


def test_domain_randomization_samples_per_episode_within_range():
    env = make_env("hopper", domain_randomization={"mass": [0.5, 1.5], "friction": [0.8, 1.2]}, seed=0)
    nominal = perturber_of(env).nominal_mass.copy()
    seen = []
    for k in range(5):
        _, info = env.reset(seed=k)
        m, f = info["mass_scale"], info["friction_scale"]
        assert 0.5 <= m <= 1.5 and 0.8 <= f <= 1.2
        assert np.allclose(env.unwrapped.model.body_mass, nominal * m)
        seen.append(m)
    assert len(set(seen)) == 5
    env.close()


def test_env_state_capture_is_bit_exact():
    env = make_env("hopper", domain_randomization={"mass": [0.5, 1.5], "friction": [0.8, 1.2]}, seed=0)
    env.reset(seed=0)
    for _ in range(17):
        env.step(env.action_space.sample())
    state = capture_env_state(env)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (1200, 3)).astype(np.float32)

    def continue_from_here(e):
        out = []
        for a in actions:
            obs, r, term, trunc, _ = e.step(a)
            out.append((obs.copy(), r, term, trunc))
            if term or trunc:
                obs, _ = e.reset()  # unseeded: uses the env's restored RNG (and DR's)
                out.append((obs.copy(), 0.0, False, False))
        return out

    first = continue_from_here(env)
    other = make_env("hopper", domain_randomization={"mass": [0.5, 1.5], "friction": [0.8, 1.2]}, seed=99)
    other.reset(seed=5)
    restore_env_state(other, state)
    second = continue_from_here(other)
    assert len(first) == len(second)
    for (o1, r1, t1, u1), (o2, r2, t2, u2) in zip(first, second):
        assert np.array_equal(o1, o2) and r1 == r2 and t1 == t2 and u1 == u2


def test_env_names():
    assert resolve_env_id("hopper") == "Hopper-v5" and resolve_env_id("Walker2d-v5") == "Walker2d-v5"
    with pytest.raises(ValueError, match="unknown environment"):
        resolve_env_id("Hopper-v2")
    with pytest.raises(ValueError, match="mass scale must be > 0"):
        with perturbed(make_env("inverted_pendulum"), mass=0.0):
            pass


def test_perturbed_dynamics_wrapper(hopper):
    nominal = rollout(hopper)
    mass0 = hopper.unwrapped.model.body_mass.copy()
    wrapped = PerturbedDynamics(hopper, mass=0.7, friction=1.2)
    assert np.allclose(wrapped.unwrapped.model.body_mass, mass0 * 0.7) and wrapped.scales == (0.7, 1.2)
    assert not np.array_equal(rollout(wrapped), nominal)
    wrapped.set(mass=1.3)
    assert np.allclose(wrapped.unwrapped.model.body_mass, mass0 * 1.3)
    wrapped.restore()
    assert np.array_equal(hopper.unwrapped.model.body_mass, mass0)
    assert np.array_equal(rollout(hopper), nominal)
