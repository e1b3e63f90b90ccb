"""The Hydra shell in a subprocess, and the reproduce smoke profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    out = tmp_path / "reports" / "scpo_rl"
    assert (out / "smoke_inverted_pendulum_learning_curves.png").is_file()
    csv_rows = (out / "smoke_inverted_pendulum_grid_per_seed.csv").read_text().splitlines()
    assert csv_rows[0] == "method,seed,mass,friction,episode,return" and len(csv_rows) == 1 + 2 * 3
    curve_rows = (out / "smoke_inverted_pendulum_learning_curves_per_seed.csv").read_text().splitlines()
    assert curve_rows[0] == "method,seed,step,return" and len(curve_rows) == 1 + 2 * 2  # evals at 150 and 300
