"""Deterministic evaluation, the robustness grid (relative mass x relative friction), aggregation over
training seeds with 95% confidence intervals and IQM, and the plots.

Protocol (a deliberate, documented deviation from the reference, which pooled partial episodes from
random env seeds and random snapshots): each cell runs one complete episode of the deterministic policy
tanh(mu(s)) from each of the start states given by reset seeds ``seed, seed+1, ..., seed+episodes-1``, the
*same* start states in every cell and for every method; an episode ends on termination or at the
1,000-step time limit. The start states run side by side, one env each, and the policy is evaluated on all
of them in one batch per step (:func:`run_episodes`); the batch always has one row per start state (a
finished episode keeps its last observation), so a start state's trajectory does not depend on when the
others end (tested). ``python -m scpo_rl.bench --what eval`` measures what this saves against one env at a
time and against gymnasium's ``SyncVectorEnv``.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scpo_rl.envs import make_env, perturbed

Policy = Callable[[np.ndarray], np.ndarray]
"""A deterministic policy on a batch of raw observations (n, obs_dim) -> actions (n, act_dim) in [-1, 1]."""


def agent_policy(agent) -> Policy:
    """The deterministic evaluation policy of an :class:`~scpo_rl.algorithm.Agent` as a numpy function."""
    return lambda obs: agent.act(obs, deterministic=True).cpu().numpy()


def run_episodes(envs, policy: Policy, episodes: int, seed: int, max_steps: int | None = None,
                 lengths: list[int] | None = None) -> list[float]:
    """Returns of one complete episode per start state ``seed + k`` (k < ``episodes``), run side by side.

    ``envs`` is one env per start state (a single env is also accepted: its episodes then run one after
    another, the policy seeing batches of one row). No RNG is consumed besides the envs' own, which each
    reset re-seeds. Episode lengths are appended to ``lengths`` when given.
    """
    if not isinstance(envs, (list, tuple)):
        out: list[float] = []
        for k in range(episodes):
            out += run_episodes([envs], policy, 1, seed + k, max_steps, lengths)
        return out
    if len(envs) < episodes:
        raise ValueError(f"{episodes} episodes need {episodes} envs, got {len(envs)}")
    envs = list(envs[:episodes])
    obs = np.stack([env.reset(seed=seed + k)[0] for k, env in enumerate(envs)])
    totals, steps = np.zeros(episodes), np.zeros(episodes, dtype=int)
    active = np.ones(episodes, dtype=bool)
    while active.any():
        actions = np.asarray(policy(obs))  # every row, finished ones included: a fixed batch shape
        for k in np.flatnonzero(active):
            o, reward, terminated, truncated, _ = envs[k].step(actions[k])
            obs[k] = o
            totals[k] += float(reward)
            steps[k] += 1
            if terminated or truncated or (max_steps is not None and steps[k] >= max_steps):
                active[k] = False
    if lengths is not None:
        lengths += steps.tolist()
    return totals.tolist()


def make_envs(env_id: str, n: int) -> list:
    """``n`` copies of the task, one per start state."""
    return [make_env(env_id) for _ in range(n)]


@contextlib.contextmanager
def perturbed_all(envs, mass: float = 1.0, friction: float = 1.0, *, bodies: Sequence[str] | None = None,
                  scale_inertia: bool = False):
    """:func:`scpo_rl.envs.perturbed` on every env of a list (all restored afterwards)."""
    with contextlib.ExitStack() as stack:
        for env in envs:
            stack.enter_context(perturbed(env, mass, friction, bodies=bodies, scale_inertia=scale_inertia))
        yield envs


def evaluate_policy(policy: Policy, env_id: str, episodes: int = 5, seed: int = 10_000, *, mass: float = 1.0,
                    friction: float = 1.0, scale_inertia: bool = False, bodies: Sequence[str] | None = None,
                    max_steps: int | None = None, envs=None, lengths: list[int] | None = None) -> list[float]:
    """Episode returns from start states ``seed + k`` on the (optionally perturbed) task; the models are
    restored afterwards. ``envs``: reuse these (one per start state) instead of building them."""
    own = envs is None
    envs = make_envs(env_id, episodes) if own else envs
    try:
        with perturbed_all(envs, mass, friction, bodies=bodies, scale_inertia=scale_inertia):
            return run_episodes(envs, policy, episodes, seed, max_steps, lengths)
    finally:
        if own:
            for env in envs:
                env.close()


def robustness_grid(policy: Policy, env_id: str, masses: Sequence[float], frictions: Sequence[float], *,
                    episodes: int = 5, seed: int = 10_000, scale_inertia: bool = False,
                    bodies: Sequence[str] | None = None, max_steps: int | None = None,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One row per (mass, friction, start state) with its return and length; ``bodies=None`` scales every
    body's mass, as the reference does (``body_mass[:] *= m``)."""
    envs = make_envs(env_id, episodes)
    rows = []
    try:
        for m in masses:
            for f in frictions:
                lengths: list[int] = []
                rets = evaluate_policy(policy, env_id, episodes, seed, mass=m, friction=f, scale_inertia=scale_inertia,
                                       bodies=bodies, max_steps=max_steps, envs=envs, lengths=lengths)
                rows += [{"mass": float(m), "friction": float(f), "episode": k, "start_seed": seed + k, "return": r,
                          "length": n} for k, (r, n) in enumerate(zip(rets, lengths))]
                if progress is not None:
                    progress(1)
    finally:
        for env in envs:
            env.close()
    return rows


# ----- aggregation ------------------------------------------------------------------------------------
def t_critical_95(n: int) -> float:
    """Two-sided 95% Student-t quantile for n samples (n - 1 degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t confidence interval (common.stats.t_interval, the interval every
    report uses over seeds); nan half-width for a single value."""
    from common import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci95 of an empty sequence")
    ci = stats.t_interval(x)
    return float(x.mean()), float("nan") if ci is None else (ci[1] - ci[0]) / 2


def cell_means(rows: Sequence[dict[str, Any]]) -> dict[tuple[float, float], float]:
    """Mean return per (mass, friction) cell for one policy."""
    acc: dict[tuple[float, float], list[float]] = {}
    for r in rows:
        acc.setdefault((r["mass"], r["friction"]), []).append(r["return"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def summarize_grid(per_seed_rows: dict[int, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Over training seeds: per-cell mean and CI, the grid average and the worst cell (each computed per
    seed first, then mean +- 95% CI across seeds)."""
    seeds = sorted(per_seed_rows)
    per_seed_cells = {s: cell_means(per_seed_rows[s]) for s in seeds}
    cells = sorted(per_seed_cells[seeds[0]])
    grid_avg = [float(np.mean(list(per_seed_cells[s].values()))) for s in seeds]
    worst = [float(np.min(list(per_seed_cells[s].values()))) for s in seeds]
    cell_summary = {c: mean_ci95([per_seed_cells[s][c] for s in seeds]) for c in cells}
    return {
        "seeds": seeds, "cells": cell_summary, "grid_average": mean_ci95(grid_avg), "worst_cell": mean_ci95(worst),
        "grid_average_per_seed": grid_avg, "worst_cell_per_seed": worst,
    }


def write_rows_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    return path


INT_COLUMNS = ("episode", "seed", "start_seed", "length")


def read_rows_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as f:
        return [{k: (int(v) if k in INT_COLUMNS else float(v)) if k not in ("method", "env") else v
                 for k, v in row.items()} for row in csv.DictReader(f)]


# ----- plots ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(summary: dict[str, Any], path: str | os.PathLike, title: str) -> Path:
    """Mean return over seeds per (mass, friction) cell; a 1-D mass sweep becomes a line plot."""
    plt = _plt()
    cells = summary["cells"]
    masses = sorted({m for m, _ in cells})
    frictions = sorted({f for _, f in cells})
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if len(frictions) == 1:
        mean = [cells[(m, frictions[0])][0] for m in masses]
        ci = [cells[(m, frictions[0])][1] for m in masses]
        ax.errorbar(masses, mean, yerr=np.nan_to_num(ci), marker="o", capsize=3)
        ax.set_xlabel("relative mass")
        ax.set_ylabel("return")
    else:
        grid = np.array([[cells[(m, f)][0] for m in masses] for f in frictions])
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(masses)), [f"{m:.3g}" for m in masses], rotation=45)
        ax.set_yticks(range(len(frictions)), [f"{f:.3g}" for f in frictions])
        ax.set_xlabel("relative mass")
        ax.set_ylabel("relative friction")
        fig.colorbar(im, ax=ax, label="return")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_learning_curves(curves: dict[str, dict[int, list[tuple[int, float]]]], path: str | os.PathLike,
                         title: str) -> Path:
    """``curves[method][seed] = [(step, eval_return), ...]``: mean over seeds with a 95% CI band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, per_seed in curves.items():
        steps = sorted(set.intersection(*[{s for s, _ in c} for c in per_seed.values()])) if per_seed else []
        if not steps:
            continue
        lookup = [dict(c) for c in per_seed.values()]
        stats = [mean_ci95([d[s] for d in lookup]) for s in steps]
        mean = np.array([m for m, _ in stats])
        half = np.nan_to_num(np.array([h for _, h in stats]))
        ax.plot(steps, mean, label=f"{method} ({len(lookup)} seeds)")
        ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("deterministic eval return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
