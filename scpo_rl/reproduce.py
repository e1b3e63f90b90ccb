"""``python -m scpo_rl.reproduce --profile smoke|quick|full|paper``: train SAC / SCPO / PR-SAC / DR-SAC,
then evaluate every final policy on the robustness grid and report nominal learning curves, grid average
and worst cell (mean +- 95% CI over training seeds, common.stats) and the grid's IQM (rliable), per-seed
CSVs, heatmaps.

Every training run is ``python -m scpo_rl.train ... resume=auto`` in its own directory under the
profile's work dir; the unfinished ones go as ONE Hydra multirun through the joblib launcher
(``common.launch.multirun``), ``--jobs`` single-threaded runs at a time; grid evaluations are cached as CSV
beside each run. Re-running a profile therefore continues where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import CheckpointManager, load_checkpoint
from common.launch import finished_with, multirun
from common.logging import get_logger
from common.progress import progress
from common.reproduce import ProfileContext, ReproReport, Row, format_value, run_profiles
from scpo_rl.evaluate import (
    agent_policy,
    cell_means,
    evaluate_policy,
    plot_heatmap,
    plot_learning_curves,
    read_rows_csv,
    robustness_grid,
    summarize_grid,
    write_rows_csv,
)
from scpo_rl.loop import load_agent


@dataclass
class Study:
    """One environment: which methods, seeds and budget, and the robustness grid to evaluate on."""

    env: str  # env config name (conf/env/<env>.yaml)
    methods: list[str]
    seeds: list[int]
    steps: int
    masses: list[float]
    frictions: list[float]
    grid_episodes: int
    """Start states per cell (reset seeds eval_seed + k), the same in every cell, method and seed."""
    overrides: list[str] = field(default_factory=list)
    eval_max_steps: int | None = None
    bodies: list[str] | None = None
    """Bodies whose mass is scaled; None: every body (the cart, torso, ... included), as the reference
    (``body_mass[:] *= m``, mujoco_env_enhancing_codes/mujoco_env.py and visualization_utils/load_utils.py)."""


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [float(x) for x in np.round(np.linspace(lo, hi, n), 6)]


# ----- profiles ------------------------------------------------------------------------------------
SMOKE_OVERRIDES = ["experiment=smoke"]
START_STATES = 20
"""Start states per cell in full and paper (issue 28: >= 20, so no verdict rests on one start state)."""
# The reference's grids (visualization_utils/consts.py), 11 x 11; friction is a no-op on IDP (no contacts).
GRIDS = {"inverted_double_pendulum": ((0.6, 2.6), None), "hopper": ((0.2, 1.6), (0.7, 1.3)),
         "walker2d": ((0.5, 1.3), (0.4, 1.8)), "halfcheetah": ((0.6, 1.3), (0.1, 2.7))}


def _study(env: str, methods: list[str], n_seeds: int, steps: int, overrides: list[str]) -> Study:
    m, f = GRIDS[env]
    return Study(env, methods, list(range(n_seeds)), steps, _grid(*m, 11), [1.0] if f is None else _grid(*f, 11),
                 START_STATES, overrides=overrides)


def _scaled_studies(locomotion_steps: int, overrides: list[str]) -> list[Study]:
    """IDP at the paper's 50k steps with SAC, SCPO, PR-SAC, DR-SAC (5 seeds); SAC and SCPO on Hopper (5 seeds),
    Walker2d and HalfCheetah (3 seeds) at ``locomotion_steps``."""
    return [
        _study("inverted_double_pendulum", ["sac", "scpo", "pr_sac", "dr_sac"], 5, 50_000, []),
        _study("hopper", ["sac", "scpo"], 5, locomotion_steps, overrides),
        _study("walker2d", ["sac", "scpo"], 3, locomotion_steps, overrides),
        _study("halfcheetah", ["sac", "scpo"], 3, locomotion_steps, overrides),
    ]


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"jobs": 1, "studies": [
        Study("inverted_pendulum", ["sac", "scpo"], [0], 300, _grid(0.6, 2.6, 3), [1.0], 2,
              overrides=SMOKE_OVERRIDES, eval_max_steps=100)]},
    "quick": {"jobs": 2, "studies": [
        Study("inverted_pendulum", ["sac", "scpo"], [0, 1], 15_000, _grid(0.6, 2.6, 11), [1.0], 5,
              overrides=["trainer.eval_every_steps=2500", "trainer.checkpoint_every_steps=2500"])]},
    "full": {"jobs": 2, "studies": _scaled_studies(150_000, ["trainer.eval_every_steps=5000"])},
    "paper": {"jobs": 2, "studies": _scaled_studies(1_000_000, ["trainer.eval_every_steps=10000",
                                                                "trainer.checkpoint_every_steps=10000"])},
}


# ----- CPU-hour estimate ---------------------------------------------------------------------------
UPDATE_RATES = {"sac": 75.0, "scpo": 45.0, "pr_sac": 70.0, "dr_sac": 75.0}
"""Env steps per second with one update each, one idle thread (benchmark.md: SAC 74.5, SCPO 43.5 on Hopper;
PR-SAC's adversary adds a forward per update and a step every 11: assumed 70)."""
WARMUP_RATE = 1500.0
"""Warm-up steps per second (no update: the untrained policy and the env only)."""
EVAL_RATE = 3000.0
"""Evaluation env steps per second, start states batched (2,400 measured on loaded cores; bench --what eval)."""


def _eval_every(study: Study) -> int:
    for o in study.overrides:
        if o.startswith("trainer.eval_every_steps="):
            return int(o.split("=")[1])
    return 5000


def estimate_cpu_hours(profile: str) -> dict[str, float]:
    """CPU-hours of a profile from the rates above, per study: training (warm-up + updates), the nominal
    evaluations during training (5 episodes) and the final evaluation (nominal + grid, every start state),
    counting every evaluation episode at its full 1,000 steps (an upper bound: falls end episodes early)."""
    out: dict[str, float] = {}
    for st in PROFILES[profile]["studies"]:
        warm = min(5000, st.steps)
        train = sum(len(st.seeds) * (warm / WARMUP_RATE + (st.steps - warm) / UPDATE_RATES[m]) for m in st.methods)
        runs = len(st.methods) * len(st.seeds)
        episode = st.eval_max_steps or 1000
        during = runs * (st.steps // _eval_every(st)) * 5 * episode
        final = runs * (len(st.masses) * len(st.frictions) + 1) * st.grid_episodes * episode
        out[st.env] = (train + (during + final) / EVAL_RATE) / 3600
    out["total"] = sum(out.values())
    return out


def format_estimate(profile: str) -> str:
    est = estimate_cpu_hours(profile)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in est.items() if k != "total")
    return f"profile {profile}: ~{est['total']:.1f} CPU-hours ({parts}; rates in scpo_rl/reproduce.py)"


# ----- training -----------------------------------------------------------------------------------
def run_name(env: str, method: str, seed: int) -> str:
    return f"{env}_{method}_s{seed}"


def train_overrides(study: Study, method: str, seed: int, runs_dir: Path) -> list[str]:
    """The ``python -m scpo_rl.train`` overrides of one run."""
    return [f"env={study.env}", f"algo={method}", f"trainer.seed={seed}", f"trainer.max_steps={study.steps}",
            f"name={run_name(study.env, method, seed)}", f"paths.output_dir={runs_dir}", "resume=auto",
            "trainer.progress_bar=false", *study.overrides]


def _is_done(run_dir: Path, steps: int, overrides: list[str]) -> bool:
    """Finished (the last checkpoint exists) under exactly the settings ``overrides`` compose to now
    (``common.launch.finished_with``): a run of an earlier protocol is never reused silently."""
    return finished_with(run_dir, "scpo_rl.train", overrides, f"checkpoints/step_{steps}.pt")


def train_all(studies: list[Study], runs_dir: Path, jobs: int, launcher: str = "local") -> None:
    """Launch every unfinished run (``resume=auto``) as one Hydra multirun, ``jobs`` at a time.

    Each run keeps its usual directory ``<runs_dir>/<env>_<method>_s<seed>`` (the sweep's subdir is the run's
    ``name``), so a rerun finds the finished runs and continues the others; the multirun's output is
    appended to ``<runs_dir>/multirun.log``.
    """
    todo = [ov for s in studies for m in s.methods for seed in s.seeds
            if not _is_done(runs_dir / run_name(s.env, m, seed), s.steps, ov := train_overrides(s, m, seed, runs_dir))]
    if not todo:
        return
    log = get_logger("scpo_rl.reproduce")
    log.info("training %d runs, %d at a time (runs in %s, log in multirun.log)", len(todo), jobs, runs_dir)
    multirun("scpo_rl.train", todo,
             sweep_dir=runs_dir, subdir="${name}", launcher=launcher, n_jobs=jobs,
             log_path=runs_dir / "multirun.log", env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))


# ----- evaluation ---------------------------------------------------------------------------------
def _cached_rows(run_dir: Path, name: str, make, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``make()``'s rows, cached as ``run_dir/name`` for exactly these evaluation ``params`` and this final
    checkpoint (``<name>.params.json`` beside it); a cache of other settings is recomputed, never reused."""
    cache, stamp = run_dir / name, run_dir / f"{name}.params.json"
    latest = CheckpointManager(run_dir).latest()
    key = json.loads(json.dumps({**params, "checkpoint": latest.name if latest else None}, default=str))
    if cache.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return read_rows_csv(cache)
    rows = make()
    write_rows_csv(cache, rows)
    stamp.write_text(json.dumps(key))
    return rows


def _eval_params(study: Study, eval_seed: int) -> dict[str, Any]:
    return {"masses": study.masses, "frictions": study.frictions, "episodes": study.grid_episodes,
            "eval_seed": eval_seed, "max_steps": study.eval_max_steps, "bodies": study.bodies,
            "columns": "start_seed"}  # the row layout of this version (per start state)


def grid_rows(study: Study, method: str, seed: int, runs_dir: Path, eval_seed: int) -> list[dict[str, Any]]:
    """The final policy's robustness grid (one row per cell and start state), cached as ``grid.csv``."""
    run_dir = runs_dir / run_name(study.env, method, seed)

    def make():
        agent, env_id = load_agent(CheckpointManager(run_dir).latest())
        bar = progress(total=len(study.masses) * len(study.frictions), desc=f"grid {run_dir.name}", unit="cell")
        rows = robustness_grid(agent_policy(agent), env_id, study.masses, study.frictions,
                               episodes=study.grid_episodes, seed=eval_seed, max_steps=study.eval_max_steps,
                               bodies=study.bodies, progress=bar.update)
        bar.close()
        return [{"method": method, "seed": seed, **r} for r in rows]

    return _cached_rows(run_dir, "grid.csv", make, _eval_params(study, eval_seed))


def nominal_rows(study: Study, method: str, seed: int, runs_dir: Path, eval_seed: int) -> list[dict[str, Any]]:
    """The final policy on the nominal task from the same start states, cached as ``nominal.csv``."""
    run_dir = runs_dir / run_name(study.env, method, seed)

    def make():
        agent, env_id = load_agent(CheckpointManager(run_dir).latest())
        lengths: list[int] = []
        rets = evaluate_policy(agent_policy(agent), env_id, study.grid_episodes, eval_seed,
                               max_steps=study.eval_max_steps, lengths=lengths)
        return [{"method": method, "seed": seed, "episode": k, "start_seed": eval_seed + k, "return": r, "length": n}
                for k, (r, n) in enumerate(zip(rets, lengths))]

    return _cached_rows(run_dir, "nominal.csv", make, _eval_params(study, eval_seed))


def eval_history(run_dir: Path) -> list[tuple[int, float]]:
    state = load_checkpoint(CheckpointManager(run_dir).latest())
    return [tuple(x) for x in state["eval_history"]]


def per_start_state(grid: list[dict[str, Any]], nominal: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per start state of one run: its nominal return, its mean over the grid's cells, its worst cell."""
    out = []
    for k in sorted({r["episode"] for r in grid}):
        cells = [r for r in grid if r["episode"] == k]
        worst = min(cells, key=lambda r: r["return"])
        nom = next(r["return"] for r in nominal if r["episode"] == k)
        out.append({"method": grid[0]["method"], "seed": grid[0]["seed"], "episode": k,
                    "start_seed": cells[0]["start_seed"], "nominal_return": nom,
                    "grid_mean_return": float(np.mean([r["return"] for r in cells])),
                    "worst_cell_return": worst["return"], "worst_cell_mass": worst["mass"],
                    "worst_cell_friction": worst["friction"]})
    return out


def study_rows(study: Study, runs_dir: Path, eval_seed: int, profile: str, out_dir: Path
               ) -> tuple[list[Row], list[Path], dict[str, Any], dict[str, dict[str, Any]]]:
    """Rows, plots, extra and per-method summaries of one environment."""
    rows: list[Row] = []
    plots: list[Path] = []
    extra: dict[str, Any] = {}
    summaries: dict[str, dict[str, Any]] = {}
    all_rows: list[dict[str, Any]] = []
    starts: list[dict[str, Any]] = []
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    kind = "mass sweep" if len(study.frictions) == 1 else "mass x friction grid"
    n_cells = len(study.masses) * len(study.frictions)
    cells_note = (f"{len(study.masses)}x{len(study.frictions)} cells x {study.grid_episodes} start states; mass "
                  f"scales {'every body' if study.bodies is None else ', '.join(study.bodies)}")
    ret = dict(unit="return", split="eval", paper_note="not retrieved", higher_is_better=True)
    for method in study.methods:
        per_seed, nominal, seed_starts = {}, {}, {}
        for seed in study.seeds:
            per_seed[seed] = grid_rows(study, method, seed, runs_dir, eval_seed)
            nominal[seed] = nominal_rows(study, method, seed, runs_dir, eval_seed)
            seed_starts[seed] = per_start_state(per_seed[seed], nominal[seed])
            all_rows += per_seed[seed]
            starts += seed_starts[seed]
            curves.setdefault(method, {})[seed] = eval_history(runs_dir / run_name(study.env, method, seed))
        summary = summarize_grid(per_seed)
        summary["nominal_per_seed"] = [float(np.mean([r["return"] for r in nominal[s]])) for s in study.seeds]
        summary["worst_start_state_per_seed"] = [min(r["grid_mean_return"] for r in seed_starts[s]) for s in study.seeds]
        summaries[method] = summary
        by_cell = [cell_means(per_seed[s]) for s in study.seeds]
        seed_cells = np.array([[c[k] for k in sorted(c)] for c in by_cell])  # seeds x cells
        name = f"{study.env} {method}"
        rows += [
            Row.from_seeds(f"{name}: nominal return ({study.grid_episodes} start states)", summary["nominal_per_seed"],
                           note=f"{len(study.seeds)} seeds, {study.steps} steps, final deterministic policy", **ret),
            Row.from_iqm(f"{name}: {kind} IQM (seeds x cells)", seed_cells,
                         note=cells_note + "; rliable's IQM, bootstrap stratified by cell", **ret),
            Row.from_seeds(f"{name}: {kind} average", summary["grid_average_per_seed"], note=cells_note, **ret),
            Row.from_seeds(f"{name}: worst cell", summary["worst_cell_per_seed"],
                           note=f"per-seed worst of {n_cells} cells (each the mean over start states)", **ret),
            Row.from_seeds(f"{name}: worst start state", summary["worst_start_state_per_seed"],
                           note="per-seed worst start state (its mean over the cells)", **ret),
        ]
        plots.append(plot_heatmap(summary, out_dir / f"{profile}_{study.env}_{method}_robustness.png",
                                  f"{study.env} {method} ({kind})"))
        extra[method] = {k: summary[k] for k in ("nominal_per_seed", "grid_average_per_seed", "worst_cell_per_seed",
                                                 "worst_start_state_per_seed")}
        extra[method]["cells"] = {f"{m},{f}": v for (m, f), v in summary["cells"].items()}
    if "scpo" in summaries:  # paired by seed: the same seed gives the same initial networks and warm-up data
        for other in (m for m in study.methods if m != "scpo"):
            for key, what in (("grid_average_per_seed", f"{kind} average"), ("worst_cell_per_seed", "worst cell")):
                rows.append(Row.from_paired(
                    f"{study.env}: SCPO - {other.upper().replace('_', '-')} {what} (paired by seed)",
                    summaries["scpo"][key], summaries[other][key], note="same seed: same initial networks and warm-up "
                    "data; p: exact sign-flip permutation test over seeds", **ret))
    write_rows_csv(out_dir / f"{profile}_{study.env}_grid_per_seed.csv", all_rows)
    write_rows_csv(out_dir / f"{profile}_{study.env}_per_start_state.csv", starts)
    write_rows_csv(out_dir / f"{profile}_{study.env}_learning_curves_per_seed.csv",
                   [{"method": m, "seed": seed, "step": step, "return": r}
                    for m, per in curves.items() for seed, curve in per.items() for step, r in curve])
    plots.append(plot_learning_curves(curves, out_dir / f"{profile}_{study.env}_learning_curves.png",
                                      f"{study.env}: nominal deterministic return (5 start states)"))
    return rows, plots, extra, summaries


def run_studies(ctx: ProfileContext, profile: str) -> ReproReport:
    spec = PROFILES[profile]
    studies: list[Study] = spec["studies"]
    runs_dir = (ctx.work_dir / "runs").resolve()
    get_logger("scpo_rl.reproduce").info("estimate: %s", format_estimate(profile))
    t0 = time.time()
    train_all(studies, runs_dir, ctx.jobs or spec["jobs"])
    train_seconds = time.time() - t0
    eval_seed = 10_000 + ctx.seed  # shared by every method and training seed
    rows: list[Row] = []
    plots: list[Path] = []
    extra: dict[str, Any] = {"train_seconds": train_seconds, "eval_seed": eval_seed, "studies": {},
                             "estimate_cpu_hours": estimate_cpu_hours(profile)}
    headline = None
    for study in studies:
        s_rows, s_plots, s_extra, summaries = study_rows(study, runs_dir, eval_seed, profile, ctx.out_dir)
        rows += s_rows
        plots += s_plots
        extra["studies"][study.env] = s_extra
        if headline is None and {"sac", "scpo"} <= set(summaries):
            iqm = {m: next(r for r in s_rows if r.metric == f"{study.env} {m}: "
                           f"{'mass sweep' if len(study.frictions) == 1 else 'mass x friction grid'} IQM (seeds x cells)")
                   for m in ("sac", "scpo")}
            headline = replace(iqm["scpo"], metric=f"{study.env} robustness IQM, SCPO",
                               note=f"SAC {format_value(iqm['sac'])}; profile {profile}")
    notes = (f"Budgets: IDP at the paper's 50k steps; Hopper, Walker2d, HalfCheetah at "
             f"{max(s.steps for s in studies)} steps (the paper: 1M). "
             f"Training took {train_seconds:.0f} s in this invocation (0 when every run was already done). "
             "State normalization and SCPO's eps: the reference's fixed statistics (rl.normalization=paper; raw "
             "states on InvertedPendulum, which it has none for). Evaluation: the final policy, deterministic, one "
             f"complete episode from each start state (reset seeds {eval_seed}+k) in every cell, the same start states "
             "for every cell, method and seed (the reference pooled partial episodes of 4 random snapshots of the "
             "last 10 epochs with random env seeds). Mass scales every body (as the reference); friction every geom; "
             "friction is a no-op on the inverted pendulums (no contacts), so only mass is swept there. Per-seed, "
             f"per-start-state rows: `{profile}_<env>_grid_per_seed.csv`, `{profile}_<env>_per_start_state.csv`, "
             f"`{profile}_<env>_learning_curves_per_seed.csv`.")
    return ReproReport(rows=rows, headline=headline, plots=plots, notes=notes, extra=extra)


def smoke(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "smoke")


def quick(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "quick")


def full(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "full")


def paper(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "paper")


def main(argv: list[str] | None = None):
    """``--estimate --profile P`` prints the CPU-hour estimate and exits; otherwise run_profiles' CLI."""
    argv = sys.argv[1:] if argv is None else argv
    if "--estimate" in argv:
        rest = [a for a in argv if a != "--estimate"]
        profile = rest[rest.index("--profile") + 1] if "--profile" in rest else "full"
        if profile not in PROFILES:
            raise SystemExit(f"error: --profile must be one of {sorted(PROFILES)}, got {profile!r}")
        print(format_estimate(profile))
        return None
    return run_profiles("scpo_rl", {"smoke": smoke, "quick": quick, "full": full, "paper": paper}, argv=argv)


if __name__ == "__main__":
    main()
