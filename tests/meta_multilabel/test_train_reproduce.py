"""Smoke runs of the Hydra shell (one subprocess, others in-process) and of the reproduce smoke profile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import common.config  # noqa: F401  (registers the shared config groups)
from common.checkpoint import ResumeError
from common.data import DatasetNotFoundError, dataset_path
from meta_multilabel.pipeline import run_experiment

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "meta_multilabel" / "conf"
SYNTHETIC = ["data=synthetic", "features=raw", "meta.episodes=2", "meta.inner_epochs=1",
             "meta.warmup_epochs=1", "meta.hidden=8", "meta.label_dim=4", "classifier.batch_size=128",
             "trainer.progress_bar=false", "logger.tensorboard=false"]


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_train_main_in_process(tmp_path, monkeypatch):
    """The Hydra shell itself (``@hydra.main`` + user-error handling), without a second interpreter."""
    from meta_multilabel import train

    monkeypatch.setattr(sys, "argv", ["train", f"paths.output_dir={tmp_path}", "name=syn", *SYNTHETIC])
    train.main()
    res = json.loads((tmp_path / "syn" / "results.json").read_text())
    assert set(res["results"]) == {"M"}
    with pytest.raises(SystemExit) as exc:  # resume=never over existing checkpoints: one-line error, status 1
        train.main()
    assert exc.value.code == 1


@pytest.mark.slow  # a second Python interpreter costs ~10-30 s of imports on the shared 2-core machine
def test_train_cli_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "meta_multilabel.train", f"paths.output_dir={tmp_path}", "name=syn",
                          *SYNTHETIC], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "M test:" in out.stdout
    run = tmp_path / "syn"
    res = json.loads((run / "results.json").read_text())
    assert set(res["results"]) == {"M"} and res["reward"] == "label_f1"
    for f in ("checkpoints/step_2.pt", "policies.png", "reward_curve.png", "run_info.json", "metrics.jsonl"):
        assert (run / f).exists(), f


def test_run_experiment_refuses_then_resumes(tmp_path):
    run_dir = tmp_path / "syn"
    run_experiment(_cfg(tmp_path, *SYNTHETIC), run_dir)
    with pytest.raises(ResumeError, match="resume=auto"):
        run_experiment(_cfg(tmp_path, *SYNTHETIC), run_dir)
    longer = [o.replace("episodes=2", "episodes=3") for o in SYNTHETIC]
    run_experiment(_cfg(tmp_path, *longer, "resume=auto"), run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_missing_dataset_names_it(tmp_path):
    cfg = _cfg(tmp_path, "data=bbn", f"paths.data_dir={tmp_path / 'nowhere'}")
    with pytest.raises(DatasetNotFoundError, match="bbn"):
        run_experiment(cfg, tmp_path / "x")


def test_reproduce_smoke_profile(tmp_path):
    try:
        dataset_path("Reuters-21578", "reuters21578/reuters.tar.gz", source="../shared/data")
    except DatasetNotFoundError as e:
        pytest.skip(str(e))
    from meta_multilabel.reproduce import main

    args = ["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work")]
    text = main(args).read_text()
    assert "reuters: M − B2 micro_f1" in text
    results = json.loads((tmp_path / "reports" / "meta_multilabel" / "results.json").read_text())
    assert any(r["metric"].startswith("reuters B2 micro_f1") for r in results["rows"])
    main(args)  # a second call reads the finished cells back instead of training again


def test_bench_runs_on_synthetic(tmp_path):
    from meta_multilabel.bench import main

    res = main(["--data", "synthetic", "--repeats", "1", "--out-dir", str(tmp_path)])
    assert res["timings"]["epoch, weighted BCE (ours)"]["median_s"] > 0 and res["peak_rss_bytes"] > 0
    assert (tmp_path / "bench.md").read_text().startswith("# meta_multilabel benchmark")


def test_full_plan_and_paired_rows_against_b2_and_b3():
    """full: Reuters and BBN on TF-IDF and on frozen MiniLM features, every method, 5 seeds; the report pairs M
    with B2 and with B3 over seeds (Row.from_paired), the B3 row for the verdict."""
    import numpy as np

    from meta_multilabel import reproduce

    plan = reproduce.full_plan(0)
    assert set(plan.datasets) == {"reuters", "bbn", "reuters_minilm", "bbn_minilm"} and plan.seeds == [0, 1, 2, 3, 4]
    assert {d.features.kind for d in plan.datasets.values()} == {"tfidf", "minilm"}
    assert plan.methods == ["uniform", "inverse_freq", "meta_w", "meta_tau", "meta"]
    assert 0 < reproduce.estimate_cpu_hours(plan) < 10

    class Task:
        task, Y = "text", {"test": np.zeros((4, 3))}

    rng = np.random.default_rng(0)
    cells = {("reuters", name): [{"test": {k: float(rng.uniform(0.7, 0.8)) for k in reproduce.TEXT_METRICS},
                                  "best_episode": 11} for _ in range(5)] for name in ("B1", "B2", "B3", "M")}
    rep = reproduce._report(reproduce.Plan({}, ["uniform", "meta"], list(range(5))), {"reuters": Task()}, cells, [])
    paired = {r.metric: r for r in rep.rows if "paired" in r.metric}
    assert set(paired) == {"reuters: M − B2 micro_f1 (test, paired over seeds)",
                           "reuters: M − B3 micro_f1 (test, paired over seeds)"}
    m = [c["test"]["micro_f1"] for c in cells[("reuters", "M")]]
    b3 = [c["test"]["micro_f1"] for c in cells[("reuters", "B3")]]
    row = paired["reuters: M − B3 micro_f1 (test, paired over seeds)"]
    assert row.value == pytest.approx(np.mean(np.subtract(m, b3))) and row.p_value is not None and row.n == 5
    assert rep.headline is row
