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

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.checkpoint import CheckpointManager, load_checkpoint
from common.launch import multirun
from common.logging import get_logger
from common.progress import progress
from common.reproduce import ProfileContext, ReproReport, Row, format_value, run_profiles
from scpo_rl.evaluate import (
    agent_policy,
    cell_means,
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
    overrides: list[str] = field(default_factory=list)
    eval_max_steps: int | None = None


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [float(x) for x in np.round(np.linspace(lo, hi, n), 6)]


# ----- profiles ------------------------------------------------------------------------------------
SMOKE_OVERRIDES = ["experiment=smoke"]

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"jobs": 1, "studies": [
        Study("inverted_pendulum", ["sac", "scpo"], [0], 300, _grid(0.6, 2.6, 3), [1.0], 1,
              overrides=SMOKE_OVERRIDES, eval_max_steps=100)]},
    "quick": {"jobs": 2, "studies": [
        Study("inverted_pendulum", ["sac", "scpo"], [0, 1], 15_000, _grid(0.6, 2.6, 11), [1.0], 5,
              overrides=["trainer.eval_every_steps=2500", "trainer.checkpoint_every_steps=2500"])]},
    "full": {"jobs": 2, "studies": [
        Study("inverted_double_pendulum", ["sac", "scpo", "pr_sac", "dr_sac"], [0, 1, 2], 50_000,
              _grid(0.6, 2.6, 11), [1.0], 10),
        Study("hopper", ["sac", "scpo"], [0, 1, 2], 150_000, _grid(0.2, 1.6, 11), _grid(0.7, 1.3, 11), 5,
              overrides=["trainer.eval_every_steps=5000"]),
    ]},
    "paper": {"jobs": 2, "studies": [
        Study(env, ["sac", "scpo", "pr_sac"], [0, 1, 2], steps, _grid(*m, 11), _grid(*f, 11), 8,
              overrides=["rl.normalization=paper", "trainer.eval_every_steps=10000",
                         "trainer.checkpoint_every_steps=10000"])
        for env, steps, m, f in [("hopper", 1_000_000, (0.2, 1.6), (0.7, 1.3)),
                                 ("walker2d", 1_000_000, (0.5, 1.3), (0.4, 1.8)),
                                 ("halfcheetah", 1_000_000, (0.6, 1.3), (0.1, 2.7)),
                                 ("inverted_double_pendulum", 50_000, (0.6, 2.6), (1.0, 1.0))]
    ]},
}


# ----- training -----------------------------------------------------------------------------------
def run_name(env: str, method: str, seed: int) -> str:
    return f"{env}_{method}_s{seed}"


def train_overrides(study: Study, method: str, seed: int, runs_dir: Path) -> list[str]:
    """The ``python -m scpo_rl.train`` overrides of one run."""
    return [f"env={study.env}", f"algo={method}", f"trainer.seed={seed}", f"trainer.max_steps={study.steps}",
            f"name={run_name(study.env, method, seed)}", f"paths.output_dir={runs_dir}", "resume=auto",
            "trainer.progress_bar=false", *study.overrides]


def _is_done(run_dir: Path, steps: int) -> bool:
    return (run_dir / "checkpoints" / f"step_{steps}.pt").is_file()


def train_all(studies: list[Study], runs_dir: Path, jobs: int, launcher: str = "local") -> None:
    """Launch every unfinished run (``resume=auto``) as one Hydra multirun, ``jobs`` at a time.

    Each run keeps its usual directory ``<runs_dir>/<env>_<method>_s<seed>`` (the sweep's subdir is the run's
    ``name``), so a rerun finds the finished runs and continues the others; the multirun's output is
    appended to ``<runs_dir>/multirun.log``.
    """
    todo = [(s, m, seed) for s in studies for m in s.methods for seed in s.seeds
            if not _is_done(runs_dir / run_name(s.env, m, seed), s.steps)]
    if not todo:
        return
    log = get_logger("scpo_rl.reproduce")
    log.info("training %d runs, %d at a time (runs in %s, log in multirun.log)", len(todo), jobs, runs_dir)
    multirun("scpo_rl.train", [train_overrides(s, m, seed, runs_dir) for s, m, seed in todo],
             sweep_dir=runs_dir, subdir="${name}", launcher=launcher, n_jobs=jobs,
             log_path=runs_dir / "multirun.log", env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))


# ----- evaluation ---------------------------------------------------------------------------------
def grid_rows(study: Study, method: str, seed: int, runs_dir: Path, eval_seed: int) -> list[dict[str, Any]]:
    """The final policy's robustness grid, cached as ``grid.csv`` in the run directory."""
    run_dir = runs_dir / run_name(study.env, method, seed)
    cache = run_dir / "grid.csv"
    if cache.is_file():
        return read_rows_csv(cache)
    ckpt = CheckpointManager(run_dir).latest()
    agent, env_id = load_agent(ckpt)
    bar = progress(total=len(study.masses) * len(study.frictions), desc=f"grid {run_dir.name}", unit="cell")
    rows = robustness_grid(agent_policy(agent), env_id, study.masses, study.frictions, episodes=study.grid_episodes,
                           seed=eval_seed, max_steps=study.eval_max_steps, progress=bar.update)
    bar.close()
    rows = [{"method": method, "seed": seed, **r} for r in rows]
    write_rows_csv(cache, rows)
    return rows


def eval_history(run_dir: Path) -> list[tuple[int, float]]:
    state = load_checkpoint(CheckpointManager(run_dir).latest())
    return [tuple(x) for x in state["eval_history"]]


def run_studies(ctx: ProfileContext, profile: str) -> ReproReport:
    spec = PROFILES[profile]
    studies: list[Study] = spec["studies"]
    runs_dir = (ctx.work_dir / "runs").resolve()
    t0 = time.time()
    train_all(studies, runs_dir, ctx.jobs or spec["jobs"])
    train_seconds = time.time() - t0
    eval_seed = 10_000 + ctx.seed  # shared by every method and training seed
    rows: list[Row] = []
    plots: list[Path] = []
    extra: dict[str, Any] = {"train_seconds": train_seconds, "eval_seed": eval_seed, "studies": {}}
    headline = None
    for study in studies:
        all_rows: list[dict[str, Any]] = []
        curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
        summaries = {}
        for method in study.methods:
            per_seed = {}
            for seed in study.seeds:
                per_seed[seed] = grid_rows(study, method, seed, runs_dir, eval_seed)
                all_rows += per_seed[seed]
                curves.setdefault(method, {})[seed] = eval_history(runs_dir / run_name(study.env, method, seed))
            summary = summarize_grid(per_seed)
            summaries[method] = summary
            nominal = [curves[method][s][-1][1] for s in study.seeds]
            kind = "mass sweep" if len(study.frictions) == 1 else "mass x friction grid"
            note = f"{len(study.seeds)} seeds, {study.steps} steps; paper: 1M steps (IDP 50k)"
            cells_note = f"{len(study.masses)}x{len(study.frictions)} cells x {study.grid_episodes} episodes"
            by_cell = [cell_means(per_seed[s]) for s in study.seeds]
            seed_cells = np.array([[c[k] for k in sorted(c)] for c in by_cell])  # seeds x cells
            ret = dict(unit="return", split="eval", paper_note="not retrieved", higher_is_better=True)
            rows += [
                Row.from_seeds(f"{study.env} {method}: nominal return (final, deterministic)", nominal, note=note, **ret),
                Row.from_seeds(f"{study.env} {method}: {kind} average", summary["grid_average_per_seed"],
                               note=cells_note, **ret),
                Row.from_seeds(f"{study.env} {method}: worst cell", summary["worst_cell_per_seed"],
                               note="per-seed worst cell, then mean over seeds", **ret),
                Row.from_iqm(f"{study.env} {method}: {kind} IQM (seeds x cells)", seed_cells,
                             note=cells_note + "; rliable's IQM, bootstrap stratified by cell", **ret),
            ]
            plots.append(plot_heatmap(summary, ctx.out_dir / f"{profile}_{study.env}_{method}_robustness.png",
                                      f"{study.env} {method} ({kind})"))
            extra["studies"].setdefault(study.env, {})[method] = {
                "nominal_per_seed": nominal, "grid_average_per_seed": summary["grid_average_per_seed"],
                "worst_cell_per_seed": summary["worst_cell_per_seed"],
                "cells": {f"{m},{f}": v for (m, f), v in summary["cells"].items()}}
        write_rows_csv(ctx.out_dir / f"{profile}_{study.env}_grid_per_seed.csv", all_rows)
        write_rows_csv(ctx.out_dir / f"{profile}_{study.env}_learning_curves_per_seed.csv",
                       [{"method": m, "seed": seed, "step": step, "return": ret}
                        for m, per_seed in curves.items() for seed, curve in per_seed.items() for step, ret in curve])
        plots.append(plot_learning_curves(curves, ctx.out_dir / f"{profile}_{study.env}_learning_curves.png",
                                          f"{study.env}: nominal deterministic return"))
        if headline is None and {"sac", "scpo"} <= set(summaries):
            sac = Row.from_seeds("sac", summaries["sac"]["grid_average_per_seed"])
            headline = Row.from_seeds(f"{study.env} robustness average, SCPO", summaries["scpo"]["grid_average_per_seed"],
                                      unit="return", split="eval", paper_note="not retrieved", higher_is_better=True,
                                      note=f"SAC {format_value(sac)}; profile {profile}")
    notes = (f"Budgets are below the paper's (1M steps; IDP 50k) except where the profile says otherwise. "
             f"Training took {train_seconds:.0f} s in this invocation (0 when every run was already done). "
             "Evaluation: the final policy, deterministic, complete episodes from reset seeds "
             f"{eval_seed}+k shared by every cell, method and seed (the reference pooled partial episodes of 4 "
             "random snapshots of the last 10 epochs with random env seeds). Friction is a no-op on the "
             "inverted pendulums (no contacts), so only mass is swept there. Per-seed rows are in "
             f"`{profile}_<env>_grid_per_seed.csv` and `{profile}_<env>_learning_curves_per_seed.csv`.")
    return ReproReport(rows=rows, headline=headline, plots=plots, notes=notes, extra=extra)


def smoke(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "smoke")


def quick(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "quick")


def full(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "full")


def paper(ctx: ProfileContext) -> ReproReport:
    return run_studies(ctx, "paper")


if __name__ == "__main__":
    run_profiles("scpo_rl", {"smoke": smoke, "quick": quick, "full": full, "paper": paper})
