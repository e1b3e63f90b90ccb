"""Grids through Hydra's launcher plugins: ``launcher=local`` (joblib) and ``launcher=slurm`` (submitit), the
``list`` sweeper behind ``common.launch.multirun``, and scpo_rl's reproduce grid launched through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import common.config  # noqa: F401  (registers run_layout and the launcher group)
import common.examples.digits  # noqa: F401  (registers model/digits_mlp)
from common.launch import multirun, multirun_command

REPO = Path(__file__).resolve().parents[2]
DIGITS_CONF = REPO / "common" / "examples" / "conf"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
TINY = ["trainer.max_epochs=1", "trainer.progress_bar=false"]


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(DIGITS_CONF), version_base="1.3"):
        return compose("digits", overrides=list(overrides), return_hydra_config=True)


def test_launcher_group_selects_joblib_or_submitit_slurm():
    assert "BasicLauncher" in _compose().hydra.launcher._target_  # default: one run after another
    local = _compose("launcher=local").hydra.launcher
    assert "JoblibLauncher" in local._target_ and local.n_jobs == 2
    slurm = _compose("launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert "SlurmLauncher" in slurm._target_ and slurm.partition == "gpu"
    assert slurm.timeout_min == 240 and slurm.cpus_per_task == 4 and slurm.gpus_per_node is None
    # choosing a launcher does not rename a sweep's run folders (a rerun with resume=auto finds them)
    assert "launcher" in _compose().hydra.job.config.override_dirname.exclude_keys


def _finished_runs(sweep: Path) -> list[str]:
    done = []
    for run in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        info = json.loads((run / "run_info.json").read_text())
        assert info["stopped_reason"] == "max_epochs" and "ended_at" in info["sessions"][-1], run
        assert list((run / "checkpoints").glob("step_*.pt")), run
        done.append(run.name)
    return done


def _two_seeds(tmp_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "common.examples.digits", "-m", "trainer.seed=0,1", *launcher, *TINY,
           f"paths.output_dir={tmp_path}"]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


def test_two_seed_multirun_through_joblib(tmp_path):
    r = _two_seeds(tmp_path, "launcher=local")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "JoblibLauncher" in (tmp_path / "digits" / "multirun" / "multirun.yaml").read_text()
    assert _finished_runs(tmp_path / "digits" / "multirun") == ["trainer.seed=0", "trainer.seed=1"]


@pytest.mark.slow
def test_two_seed_multirun_through_submitit_local_executor(tmp_path):
    r = _two_seeds(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10")
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "digits" / "multirun"
    assert (sweep / ".submitit").is_dir()  # submitit's job folders: the runs went through its executor
    assert _finished_runs(sweep) == ["trainer.seed=0", "trainer.seed=1"]


def test_multirun_command_quotes_paths_and_passes_jobs(tmp_path):
    cmd = multirun_command("pkg.train", tmp_path / "a,b" / "jobs.json", sweep_dir=tmp_path / "x y",
                           subdir="${name}", n_jobs=3, common=["resume=auto"])
    assert cmd[1:5] == ["-m", "pkg.train", "-m", "hydra/sweeper=list"]
    assert f"hydra.sweeper.jobs_file='{tmp_path}/a,b/jobs.json'" in cmd  # a comma is not a sweep
    assert f"hydra.sweep.dir='{tmp_path}/x y'" in cmd and "hydra.sweep.subdir=${name}" in cmd
    assert "launcher=local" in cmd and "hydra.launcher.n_jobs=3" in cmd and cmd[-1] == "resume=auto"
    assert "hydra/launcher=submitit_local" in multirun_command("p", "j", sweep_dir="s", launcher="submitit_local")


@pytest.mark.slow
def test_multirun_runs_an_explicit_list_of_runs_and_reports_a_failure(tmp_path):
    runs = [["trainer.seed=3", "name=a"], ["trainer.seed=4", "name=b", "model.hidden=8"]]
    multirun("common.examples.digits", runs, sweep_dir=tmp_path / "grid", subdir="${name}", n_jobs=2,
             common=TINY, log_path=tmp_path / "grid.log", env=ENV)
    assert _finished_runs(tmp_path / "grid") == ["a", "b"]  # not a product: b alone has hidden=8
    cfg_b = (tmp_path / "grid" / "b" / ".hydra" / "config.yaml").read_text()
    assert "hidden: 8" in cfg_b and "hidden: 8" not in (tmp_path / "grid" / "a" / ".hydra" / "config.yaml").read_text()
    with pytest.raises(RuntimeError, match="grid2.log"):
        multirun("common.examples.digits", [["name=c", "trainer.batch_size=-1"]], sweep_dir=tmp_path / "grid2",
                 subdir="${name}", n_jobs=1, common=TINY, log_path=tmp_path / "grid2.log", env=ENV)


@pytest.mark.slow
def test_scpo_reproduce_grid_is_one_joblib_multirun_and_a_rerun_finds_it(tmp_path):
    from scpo_rl import reproduce as R

    study = R.Study("inverted_pendulum", ["sac", "scpo"], [0], 100, [1.0], [1.0], 1,
                    overrides=["experiment=smoke", "rl.learning_starts=50", "trainer.eval_every_steps=100"])
    runs = tmp_path / "runs"
    R.train_all([study], runs, jobs=2)
    swept = (runs / "multirun.yaml").read_text()
    assert "JoblibLauncher" in swept and "n_jobs: 2" in swept and "ListSweeper" in swept
    for method in ("sac", "scpo"):
        assert (runs / f"inverted_pendulum_{method}_s0" / "checkpoints" / "step_100.pt").is_file()
    before = (runs / "multirun.log").read_text()
    R.train_all([study], runs, jobs=2)  # resume semantics: both runs are finished, nothing is launched
    assert (runs / "multirun.log").read_text() == before
