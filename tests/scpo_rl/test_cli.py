"""The Hydra shell in a subprocess, and the reproduce smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.logging import read_jsonl
from common.reproduce import run_profiles
from scpo_rl import reproduce

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))


def train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scpo_rl.train", *overrides], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_train_smoke_then_resume_guard(tmp_path):
    args = ["experiment=smoke", "algo=sac", "trainer.max_steps=80", "rl.learning_starts=40",
            "trainer.eval_every_steps=80", f"paths.output_dir={tmp_path}", "name=smoke"]
    done = train(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "smoke"
    assert (run / "checkpoints" / "step_80.pt").is_file() and (run / "run_info.json").is_file()
    assert any("eval/return_mean" in r for r in read_jsonl(run / "metrics.jsonl"))
    again = train(*args)  # resume=never over existing checkpoints: one clear line, exit 1
    assert again.returncode == 1
    assert "already holds checkpoints" in again.stderr and "Traceback" not in again.stderr


def test_train_help_lists_the_groups():
    out = train("--help")
    assert out.returncode == 0
    for group in ("algo: dr_sac, pr_sac, sac, scpo", "env: halfcheetah, hopper", "experiment:"):
        assert group in out.stdout


def test_reproduce_smoke(tmp_path):
    report = run_profiles("scpo_rl", {"smoke": reproduce.smoke},
                          argv=["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"),
                                "--work-dir", str(tmp_path / "work")])
    assert report.is_file()
    results = json.loads((tmp_path / "reports" / "scpo_rl" / "results.smoke.json").read_text())
    metrics = [r["metric"] for r in results["rows"]]
    assert "inverted_pendulum scpo: worst cell" in metrics and results["headline"] is not None
    assert "inverted_pendulum scpo: mass sweep IQM (seeds x cells)" in metrics
    assert "inverted_pendulum scpo: worst start state" in metrics
    assert "inverted_pendulum: SCPO - SAC worst cell (paired by seed)" in metrics
    out = tmp_path / "reports" / "scpo_rl"
    assert (out / "smoke_inverted_pendulum_learning_curves.png").is_file()
    csv_rows = (out / "smoke_inverted_pendulum_grid_per_seed.csv").read_text().splitlines()
    assert csv_rows[0] == "method,seed,mass,friction,episode,start_seed,return,length"
    assert len(csv_rows) == 1 + 2 * 3 * 2  # 2 methods x 3 cells x 2 start states
    starts = (out / "smoke_inverted_pendulum_per_start_state.csv").read_text().splitlines()
    assert starts[0].startswith("method,seed,episode,start_seed,nominal_return,grid_mean_return") and len(starts) == 5
    curve_rows = (out / "smoke_inverted_pendulum_learning_curves_per_seed.csv").read_text().splitlines()
    assert curve_rows[0] == "method,seed,step,return" and len(curve_rows) == 1 + 2 * 2  # evals at 150 and 300
    # A rerun never reuses runs or evaluations of other settings: runs finished and grids evaluated under an
    # earlier protocol were reused silently (a rerun of the smoke profile after the normalisation default
    # changed died on a KeyError from an old grid.csv).
    study = reproduce.PROFILES["smoke"]["studies"][0]
    runs_dir = next((tmp_path / "work").rglob("multirun.log")).parent
    method, seed = study.methods[0], study.seeds[0]
    run_dir = runs_dir / reproduce.run_name(study.env, method, seed)
    overrides = reproduce.train_overrides(study, method, seed, runs_dir)
    assert reproduce._is_done(run_dir, study.steps, overrides)
    saved = json.loads((run_dir / "resolved_config.json").read_text())
    saved["rl"]["normalization"] = "warmup"  # as a run of the earlier default
    (run_dir / "resolved_config.json").write_text(json.dumps(saved))
    assert not reproduce._is_done(run_dir, study.steps, overrides)
    # an evaluation cached for other settings is recomputed, not read back
    (run_dir / "grid.csv").write_text("method,seed,mass,friction,episode,return,length\n")
    calls = []
    rows = reproduce._cached_rows(run_dir, "grid.csv", lambda: calls.append(1) or [{"a": 1}], {"episodes": 99})
    assert calls == [1] and rows == [{"a": 1}]
    assert reproduce._cached_rows(run_dir, "grid.csv", lambda: calls.append(1) or [], {"episodes": 99}) == [
        {"a": 1.0}] and calls == [1]


def test_full_profile_is_the_issue_plan_on_the_reference_perturbations():
    """full: IDP 50k with SAC, SCPO, PR-SAC, DR-SAC on 5 seeds; Hopper on 5 and Walker2d, HalfCheetah on 3 seeds
    at 150k (1M in paper), >= 20 start states; the reference's 11 x 11 grids, mass on every body (IDP: the
    cart too, as the reference's ``body_mass[:] *= m``)."""
    import numpy as np

    from scpo_rl.envs import make_env, perturbed

    plan = {s.env: s for s in reproduce.PROFILES["full"]["studies"]}
    assert set(plan) == {"inverted_double_pendulum", "hopper", "walker2d", "halfcheetah"}
    assert plan["inverted_double_pendulum"].methods == ["sac", "scpo", "pr_sac", "dr_sac"]
    assert [len(plan[e].seeds) for e in ("inverted_double_pendulum", "hopper", "walker2d", "halfcheetah")] == [5, 5, 3, 3]
    assert plan["inverted_double_pendulum"].steps == 50_000
    assert all(plan[e].steps == 150_000 and plan[e].methods == ["sac", "scpo"] for e in ("hopper", "walker2d", "halfcheetah"))
    assert all(s.grid_episodes >= 20 and s.bodies is None for s in plan.values())
    assert {s.env: s.steps for s in reproduce.PROFILES["paper"]["studies"]} == {
        "inverted_double_pendulum": 50_000, "hopper": 1_000_000, "walker2d": 1_000_000, "halfcheetah": 1_000_000}
    hopper = plan["hopper"]
    assert (hopper.masses[0], hopper.masses[-1], len(hopper.masses)) == (0.2, 1.6, 11)
    assert (hopper.frictions[0], hopper.frictions[-1], len(hopper.frictions)) == (0.7, 1.3, 11)
    env = make_env("InvertedDoublePendulum-v5")
    model = env.unwrapped.model
    nominal = model.body_mass.copy()
    with perturbed(env, mass=2.0, bodies=plan["inverted_double_pendulum"].bodies):
        assert np.allclose(model.body_mass, 2.0 * nominal)  # cart and both poles
        assert model.body("cart").mass[0] == 2.0 * nominal[model.body("cart").id]
    assert np.array_equal(model.body_mass, nominal)


def test_cpu_hour_estimate():
    """The estimate is the documented arithmetic (rates in reproduce.py), and the full profile fits the issue's
    ~30 CPU-hours; ``--estimate`` prints it without running anything."""
    st = reproduce.PROFILES["smoke"]["studies"][0]
    warm = min(5000, st.steps)
    train = sum(warm / reproduce.WARMUP_RATE + (st.steps - warm) / reproduce.UPDATE_RATES[m] for m in st.methods)
    evals = 2 * ((st.steps // 5000) * 5 + 4 * st.grid_episodes) * st.eval_max_steps / reproduce.EVAL_RATE
    assert reproduce.estimate_cpu_hours("smoke")["total"] * 3600 == pytest.approx(train + evals)
    assert reproduce.estimate_cpu_hours("full")["total"] <= 30
    out = subprocess.run([sys.executable, "-m", "scpo_rl.reproduce", "--estimate", "--profile", "full"], cwd=REPO,
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("profile full: ~")
