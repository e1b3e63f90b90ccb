"""Smoke runs of the Hydra shell (one subprocess, others in-process) and of the reproduce smoke profile."""

import json
import os
import shutil
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


@pytest.mark.slow  # ~12-15 s; CI runs this profile end to end anyway (`make check` compares every number)
def test_reproduce_smoke_profile(tmp_path, monkeypatch):
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
    work = tmp_path / "work"
    assert "meta_multilabel.train -m hydra/sweeper=list" in (work / "multirun.log").read_text()
    for cell in ("reuters/uniform/seed0", "reuters/meta/seed0"):
        assert (work / cell / "results.json").is_file() and (work / cell / "resolved_config.json").is_file()

    import common.launch

    def no_multirun(*a, **k):
        raise AssertionError("a finished cell was launched again")

    monkeypatch.setattr(common.launch, "multirun", no_multirun)
    again = json.loads((main(args).parent / "results.json").read_text())  # finished cells are read back
    assert again["rows"] == results["rows"]


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


# ------------------------------------------------------------------ the grid as one Hydra multirun


def test_cell_overrides_compose_to_every_cell_of_smoke_quick_and_full():
    """Each cell's ``python -m meta_multilabel.train`` overrides compose (the Hydra app's own config, what the
    run stores as resolved_config.json) to exactly the plan's four configs, field by field, with the cell's
    method, seed and run directory; a group file is selected and only the fields differing from it set."""
    from dataclasses import fields

    from common.launch import composed_config
    from meta_multilabel import reproduce as rep

    work = Path("/tmp/grid work")  # a space: paths must reach Hydra quoted
    n = 0
    for profile in ("smoke", "quick", "full"):
        plan = rep.PLANS[profile](0)
        runs = rep.plan_runs(plan, work, data_dir="/data root")
        assert list(runs) == [(d, m, s) for d in plan.datasets for m in plan.methods for s in plan.seeds]
        for (dname, method, seed), overrides in runs.items():
            n += 1
            if seed != plan.seeds[0]:  # the other seeds' overrides differ in the seed and the name only
                first = runs[(dname, method, plan.seeds[0])]
                renamed = [o.replace(f"seed{plan.seeds[0]}'", f"seed{seed}'") for o in first]
                assert overrides == [f"trainer.seed={seed}" if o.startswith("trainer.seed=") else o for o in renamed]
                continue
            cfg = composed_config(rep.TRAIN, overrides)
            dplan = plan.datasets[dname]
            assert dplan.features.cache_dir == str(work / "feature_cache")
            for group, cls in rep.GROUPS.items():
                assert set(cfg[group]) == {f.name for f in fields(cls)}, (profile, group)
                for f in fields(cls):
                    assert cfg[group][f.name] == getattr(getattr(dplan, group), f.name), (profile, dname, group, f)
            assert (cfg["method"], cfg["trainer"]["seed"], cfg["name"]) == (method, seed, f"{dname}/{method}/seed{seed}")
            assert cfg["paths"]["output_dir"] == str(work) and cfg["paths"]["data_dir"] == "/data root"
            assert cfg["resume"] == "auto" and cfg["trainer"]["progress_bar"] is False
            assert cfg["logger"]["tensorboard"] is plan.tensorboard and cfg["trainer"]["num_threads"] == 1
    assert n == 2 + 4 + 4 * 5 * 5
    smoke = rep.plan_runs(rep.smoke_plan(0), work)[("reuters", "meta", 0)]
    assert smoke[:4] == ["data=reuters", "features=tfidf", "classifier=linear", "meta=default"]
    assert [o.split("=")[0] for o in smoke if o.startswith(("data.", "classifier."))] == \
        ["data.max_train", "data.max_test", "classifier.epochs"]  # only what differs from the group files
    bbn = rep.plan_runs(rep.full_plan(0), work)[("bbn_minilm", "meta_w", 3)]
    assert "data=bbn" in bbn and "features=minilm" in bbn and "meta.label_order='hierarchy'" in bbn


def _synthetic_plan(seeds=(0, 1)):
    from meta_multilabel import reproduce as rep
    from meta_multilabel.meta import ClassifierConfig, MetaConfig
    from meta_multilabel.pipeline import DataConfig, FeaturesConfig

    data = DataConfig(format="synthetic", name="synthetic", path=None,
                      synthetic={"n_samples": 600, "n_features": 20, "n_classes": 5, "planted_keep": 0.3})
    meta = MetaConfig(episodes=2, inner_epochs=1, warmup_epochs=1, hidden=8, label_dim=4)
    return rep.Plan({"synthetic": rep.DatasetPlan(data, FeaturesConfig(kind="raw"),
                                                  ClassifierConfig(lr=0.05, epochs=2, batch_size=128), meta)},
                    methods=["uniform", "meta"], seeds=list(seeds), tensorboard=False)


def test_plan_runs_as_one_multirun_skips_finished_cells_and_reruns_stale_ones(tmp_path, monkeypatch):
    """run_plan with the multirun replaced by the real Hydra app run in-process once per override list (the
    way a joblib worker runs it): one multirun of every cell, after the parent prepared the features; the
    report from the cells' results.json; a second call launches nothing; a cell whose resolved_config.json
    differs from what its overrides compose to now is launched again, alone; an earlier protocol is refused."""
    import common.launch
    from common.reproduce import ProfileContext
    from meta_multilabel import reproduce as rep
    from meta_multilabel import train

    events, calls = [], []
    real_prepare = rep.prepare_task

    def prepare(data_cfg, feat_cfg, **kw):
        events.append(("prepare", feat_cfg.cache_dir))
        return real_prepare(data_cfg, feat_cfg, **kw)

    def fake_multirun(module, runs, *, sweep_dir, subdir, launcher, n_jobs, log_path, env):
        events.append(("multirun", len(runs)))
        calls.append(dict(module=module, runs=[list(r) for r in runs], sweep_dir=sweep_dir, subdir=subdir,
                          launcher=launcher, n_jobs=n_jobs, log_path=log_path, env=env))
        for r in runs:
            monkeypatch.setattr(sys, "argv", ["train", *r])
            train.main()

    monkeypatch.setattr(rep, "prepare_task", prepare)
    monkeypatch.setattr(common.launch, "multirun", fake_multirun)
    ctx = ProfileContext("meta_multilabel", "smoke", tmp_path / "out", tmp_path / "work")
    ctx.out_dir.mkdir(parents=True)  # run_profiles makes it
    work = ctx.work_dir.resolve()
    report = rep.run_plan(ctx, _synthetic_plan())

    assert events == [("prepare", str(work / "feature_cache")), ("multirun", 4)]
    call = calls[0]
    assert call["module"] == "meta_multilabel.train" and call["subdir"] == "${name}" and call["launcher"] == "local"
    assert call["n_jobs"] == 2 and call["sweep_dir"] == work and call["log_path"] == work / "multirun.log"
    assert call["env"]["OMP_NUM_THREADS"] == "1" and call["env"]["MKL_NUM_THREADS"] == "1"
    names = [next(o for o in r if o.startswith("name=")) for r in call["runs"]]
    assert names == ["name='synthetic/uniform/seed0'", "name='synthetic/uniform/seed1'",
                     "name='synthetic/meta/seed0'", "name='synthetic/meta/seed1'"]
    payload = json.loads((work / "synthetic" / "meta" / "seed1" / "results.json").read_text())
    assert payload["protocol"] == rep.PROTOCOL and payload["method"] == "meta" and payload["seed"] == 1
    assert len(payload["history"]) == 2 and set(payload["results"]) == {"M"}
    rows = {r.metric: r for r in report.rows}
    m = rows["synthetic M micro_f1 (test)"]
    per_seed = [json.loads((work / "synthetic" / "meta" / f"seed{s}" / "results.json").read_text())
                ["results"]["M"]["test"]["micro_f1"] for s in (0, 1)]
    assert m.n == 2 and m.per_seed == per_seed
    assert rows["synthetic B2 micro_f1 (test)"].n == 2 and "synthetic: M − B3 micro_f1 (test, paired over seeds)" in rows
    assert [p.name for p in report.plots] == ["reward_synthetic_meta_smoke.png", "policies_synthetic_meta_smoke.png"]

    # a second call: every cell finished under these settings, nothing launched, the same report
    again = rep.run_plan(ctx, _synthetic_plan())
    assert len(calls) == 1 and [r.per_seed for r in again.rows] == [r.per_seed for r in report.rows]

    # a cell finished under other settings (its checkpoints cleaned up): launched again, alone
    stale = work / "synthetic" / "uniform" / "seed1"
    saved = json.loads((stale / "resolved_config.json").read_text())
    saved["classifier"]["lr"] = 0.001
    (stale / "resolved_config.json").write_text(json.dumps(saved))
    shutil.rmtree(stale / "checkpoints")
    rep.run_plan(ctx, _synthetic_plan())
    assert len(calls) == 2 and calls[1]["runs"] == [call["runs"][1]]
    assert json.loads((stale / "resolved_config.json").read_text())["classifier"]["lr"] == 0.05

    # --jobs: that many at a time (the stale-free grid launches nothing, so a new seed is added)
    rep.run_plan(ProfileContext("meta_multilabel", "smoke", ctx.out_dir, ctx.work_dir, jobs=3),
                 _synthetic_plan(seeds=(0, 1, 2)))
    assert len(calls) == 3 and calls[2]["n_jobs"] == 3 and len(calls[2]["runs"]) == 2

    # a cell of an earlier protocol is refused, not rerun or mixed in
    done = work / "synthetic" / "meta" / "seed0" / "results.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "protocol": "issue20"}))
    with pytest.raises(ValueError, match="earlier protocol"):
        rep.run_plan(ctx, _synthetic_plan())
    assert len(calls) == 3
