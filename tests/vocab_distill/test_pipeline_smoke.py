"""The Hydra shell and the reproduce smoke profile, end to end (tiny random teacher, seconds)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertModel, BertTokenizerFast

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _train(*overrides, timeout=300):
    return subprocess.run([sys.executable, "-m", "vocab_distill.train", *overrides], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_train_help_shows_groups():
    r = _train("--help")
    assert r.returncode == 0, r.stderr
    for group in ("experiment:", "model:", "trainer:"):
        assert group in r.stdout
    assert "smoke" in r.stdout and "h96" in r.stdout


def test_train_smoke_runs_resumes_and_exports(tmp_path):
    # the v1 joint schedule here (the reproduce smoke covers the two-stage one) and both ablations
    overrides = ["experiment=smoke", f"paths.output_dir={tmp_path}", "pipeline.schedule=joint",
                 "pipeline.methods=[dual_proj,mix_only,proj_only]",
                 "pipeline.tasks=[snips_intent]", "pipeline.finetune_teacher=false"]
    r = _train(*overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "vocab_distill_smoke"
    results = json.loads((run / "results.json").read_text())
    assert set(results["finetune"]) == {"joint_d16", "mix_only_d16", "proj_only_d16"}
    assert 0.0 <= results["finetune"]["joint_d16"]["snips_intent"]["mean"] <= 1.0
    export = run / "joint_d16" / "export"
    assert BertModel.from_pretrained(export).config.hidden_size == 16
    tok = BertTokenizerFast.from_pretrained(export)
    assert len(tok) == results["vocab"]["student_vocab_size"]
    assert (export / "vocab.txt").exists() and (run / "stage1_d16" / "metrics.jsonl").exists()
    # in-process (no second interpreter start-up): resume=never refuses the finished run, auto reuses it
    from hydra import compose, initialize_config_dir

    from common.checkpoint import ResumeError
    from vocab_distill.train import build_pipeline

    with initialize_config_dir(config_dir=str(REPO / "vocab_distill" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(ResumeError, match="resume=auto"):
        build_pipeline(cfg, run)
    cfg.resume = "auto"
    again = build_pipeline(cfg, run).run()
    assert again["finetune"] == results["finetune"]


def test_reproduce_smoke_profile(tmp_path):
    from vocab_distill.reproduce import main

    report = main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"),
                   "--work-dir", str(tmp_path / "work")])
    text = report.read_text()
    assert "profile `smoke`" in text and "dual_proj beats both same-size baselines?" in text
    results = json.loads((tmp_path / "reports" / "vocab_distill" / "results.smoke.json").read_text())
    sizes = results["extra"]["results"]["size_speed"]
    assert set(sizes) == {"teacher", "dual_proj_d16", "scratch_d16", "logit_kd_d16"}
    assert sizes["dual_proj_d16"]["params"] == sizes["scratch_d16"]["params"]
    assert (tmp_path / "reports" / "vocab_distill" / "accuracy_vs_params.smoke.png").exists()

    # the learning-rate diagnostic re-fine-tunes an exported student with the pipeline's recipe
    from vocab_distill.lr_check import lr_check
    from vocab_distill.lr_check import main as lr_main

    export = next((tmp_path / "work").rglob("stage2_dual_proj_d16/export"))
    rows = lr_check(export, "snips_intent", [1e-3, 1e-4], [0], tmp_path / "lr", epochs=1, train_limit=16,
                    eval_limit=16, progress_bar=False)
    assert [r["lr"] for r in rows] == [1e-3, 1e-4] and all(0 <= r["test_acc"] <= 1 for r in rows)
    assert json.loads((tmp_path / "lr" / "lr_check.json").read_text())["rows"] == rows
    with pytest.raises(ValueError, match="unknown task"):
        lr_check(export, "cola", [1e-3], [0], tmp_path / "lr")
    with pytest.raises(SystemExit, match="no config.json"):
        lr_main([str(tmp_path), "--task", "sst2"])


def test_full_profile_groups_by_length_and_jobs_caps_threads(tmp_path):
    from common.reproduce import ProfileContext
    from vocab_distill.reproduce import compose_profile

    cfg = compose_profile("full", ProfileContext("vocab_distill", "full", tmp_path / "out", tmp_path / "work", jobs=1))
    assert cfg.stage1.group_by_length and cfg.stage2.group_by_length
    assert cfg.trainer.num_threads == 1
    default = compose_profile("full", ProfileContext("vocab_distill", "full", tmp_path / "out", tmp_path / "work"))
    assert default.trainer.num_threads == 2
