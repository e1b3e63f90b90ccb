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


def _snips_style_folder(path: Path) -> Path:
    """A user's labelled SNIPS-style test folder (intents of SNIPS train)."""
    path.mkdir(parents=True)
    (path / "seq.in").write_text("play some jazz music\nwill it rain tomorrow in paris\nbook a table for two\n")
    (path / "label").write_text("PlayMusic\nGetWeather\nBookRestaurant\n")
    return path


def test_train_smoke_runs_resumes_and_exports(tmp_path):
    # the v1 joint schedule here (the reproduce smoke covers the two-stage one), both ablations, and a user's
    # labelled test folder in place of SNIPS test
    user_test = _snips_style_folder(tmp_path / "my_snips_test")
    overrides = ["experiment=smoke", f"paths.output_dir={tmp_path}", "pipeline.schedule=joint",
                 "pipeline.methods=[dual_proj,mix_only,proj_only]", f"+pipeline.test_files.snips_intent={user_test}",
                 "pipeline.tasks=[snips_intent]", "pipeline.finetune_teacher=false"]
    r = _train(*overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "vocab_distill_smoke"
    results = json.loads((run / "results.json").read_text())
    assert set(results["finetune"]) == {"joint_d16", "mix_only_d16", "proj_only_d16"}
    joint = results["finetune"]["joint_d16"]["snips_intent"]
    assert joint["split"] == f"user folder {user_test}" and joint["test_n"] == 3
    assert 0.0 <= joint["runs"][0] <= 1.0
    export = run / "joint_d16" / "export"
    assert BertModel.from_pretrained(export).config.hidden_size == 16
    tok = BertTokenizerFast.from_pretrained(export)
    assert len(tok) == results["vocab"]["student_vocab_size"]
    assert (export / "vocab.txt").exists() and (run / "stage1_d16" / "metrics.jsonl").exists()
    # every reported fine-tuning run left a classifier folder, and no trainer checkpoints
    clf = Path(joint["exports"][0])
    assert (clf / "model.safetensors").is_file() and not (clf.parent / "checkpoints").exists()
    assert json.loads((clf / "finetune.json").read_text())["test_acc"] == joint["runs"][0]
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


@pytest.mark.slow  # ~6-9 s; CI runs this profile end to end anyway (`make check` compares every number)
def test_reproduce_smoke_profile(tmp_path):
    from vocab_distill.reproduce import main

    report = main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"),
                   "--work-dir", str(tmp_path / "work")])
    text = report.read_text()
    assert "profile `smoke`" in text and "dual_proj − hidden_kd (pp)" in text
    assert "teacher: held-out acc. at real [MASK] positions (%)" in text and "copy-the-input baseline" in text
    results = json.loads((tmp_path / "reports" / "vocab_distill" / "results.smoke.json").read_text())
    sizes = results["extra"]["results"]["size_speed"]
    assert set(sizes) == {"teacher", "dual_proj_d16", "scratch_d16", "logit_kd_d16", "hidden_kd_d16"}
    assert sizes["dual_proj_d16"]["params"] == sizes["scratch_d16"]["params"] == sizes["hidden_kd_d16"]["params"]
    for plot in ("accuracy_vs_params.smoke.png", "teacher_curve.smoke.png"):
        assert (tmp_path / "reports" / "vocab_distill" / plot).exists()
    # the same selection budget for every model: one trial per learning rate of its grid, same epochs
    ft = results["extra"]["results"]["finetune"]
    for name, tasks in ft.items():
        for r in tasks.values():
            assert len(r["selection"]["trials"]) == 1 and r["selected_epoch"] >= 1, name


def test_full_profile_groups_by_length_and_jobs_caps_threads(tmp_path):
    from common.reproduce import ProfileContext
    from vocab_distill.reproduce import compose_profile

    cfg = compose_profile("full", ProfileContext("vocab_distill", "full", tmp_path / "out", tmp_path / "work", jobs=1))
    assert cfg.stage1.group_by_length and cfg.stage2.group_by_length
    assert cfg.trainer.num_threads == 1
    default = compose_profile("full", ProfileContext("vocab_distill", "full", tmp_path / "out", tmp_path / "work"))
    assert default.trainer.num_threads == 2
