"""The Hydra shell and the reproduce script, run as users run them (subprocesses, tiny settings)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.logging import read_jsonl

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=smoke", "data.shapes_n=8", "data.shapes_size=16", "data.crop=16", "trainer.batch_size=4"]


def _run(args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_train_smoke_and_resume(tmp_path):
    """Epoch 1 runs in-process through the library (the same call the shell makes); then the shell itself,
    in a subprocess, refuses nothing and continues the run with resume=auto to epoch 2."""
    from common.checkpoint import ResumeError
    from common.config import LoggerConfig, TrainerConfig
    from label_efficient_seg.experiment import DataConfig, run_experiment

    run = tmp_path / "run"
    # experiment=smoke with the TINY overrides below, spelled out for the in-process call
    args = (DataConfig("shapes", crop=16, shapes_n=8, shapes_size=16), {"name": "scribbles"},
            {"base": 4, "depth": 2}, {"lr": 0.01}, TrainerConfig(max_epochs=1, batch_size=4, progress_bar=False))
    run_experiment(*args, run, logger_cfg=LoggerConfig(tensorboard=False))
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["method"] == "scribbles" and 0 <= final["score"] <= 1 and final["steps"] == 2
    assert 0 < final["labelled_pixel_share"] < 0.5
    assert any("train/loss" in row for row in read_jsonl(run / "metrics.jsonl"))
    assert any("val/score" in row for row in read_jsonl(run / "metrics.jsonl"))
    with pytest.raises(ResumeError, match="resume=auto"):  # the same run directory without resume=auto
        run_experiment(*args, run, logger_cfg=LoggerConfig(tensorboard=False))
    cont = _run(["-m", "label_efficient_seg.train", *TINY, f"paths.output_dir={tmp_path}", "name=run",
                 "method=scribbles", "trainer.max_epochs=2", "resume=auto"])
    assert cont.returncode == 0, cont.stderr[-2000:]
    assert "scribbles on shapes: test miou" in cont.stdout
    assert json.loads((run / "final_metrics.json").read_text())["steps"] == 4


@pytest.mark.slow  # a third interpreter start (~6 CPU-s); the groups are also composed by tests/common
def test_train_help_lists_groups_and_user_errors_are_one_line(tmp_path):
    r = _run(["-m", "label_efficient_seg.train", "--help"])
    for group in ("data:", "method:", "model:", "optim:", "experiment:", "trainer:"):
        assert group in r.stdout
    assert "fixmatch" in r.stdout and "boxinst" in r.stdout
    missing = _run(["-m", "label_efficient_seg.train", "data=kvasir", f"paths.data_dir={tmp_path}/nowhere",
                    f"paths.output_dir={tmp_path}", "name=missing"])
    assert missing.returncode == 1 and "Kvasir-SEG" in missing.stderr and "Traceback" not in missing.stderr


def test_reproduce_smoke_profile(tmp_path):
    """The smoke profile through the reproduce CLI entry (in-process: same code path as `python -m`)."""
    from label_efficient_seg import reproduce

    rep = tmp_path / "rep"
    reproduce.run_profiles("label_efficient_seg", {"smoke": reproduce.smoke},
                           argv=["--profile", "smoke", "--reports-dir", str(rep), "--work-dir", str(tmp_path / "w")])
    out = rep / "label_efficient_seg"
    results = json.loads((out / "results.json").read_text())
    assert results["profile"] == "smoke" and len(results["rows"]) == 8  # 7 rows + 1 paired claim
    claim = next(r for r in results["rows"] if r["metric"].startswith("claim: camvid/scribbles - "))
    assert claim["n"] == 1 and "single run, no verdict" in claim["note"]
    cam = results["extra"]["camvid/cam_tags"]  # the two-stage CAM path ran and scored its pseudo-masks
    assert 0 <= cam["pseudo_mask_quality_train"]["coverage"] <= 1
    assert (out / "examples_smoke.png").stat().st_size > 0
    assert "% of full supervision" in (out / "report.md").read_text()


def test_resume_at_epoch_boundary_is_exact(tmp_path):
    """A FixMatch run (augmentation, CutMix and the strong view all draw random numbers) killed after
    epoch 1 and resumed with resume=auto ends with the same weights as the uninterrupted run. The kill is
    simulated by copying the finished run without its last checkpoint."""
    import shutil

    import torch

    from common.checkpoint import load_checkpoint
    from common.config import LoggerConfig, TrainerConfig
    from label_efficient_seg.experiment import DataConfig, run_experiment

    args = (DataConfig("shapes", crop=16, shapes_n=8, shapes_size=16),
            {"name": "fixmatch", "labelled_fraction": 0.5, "tau": 0.5}, {"base": 4, "depth": 2}, None,
            TrainerConfig(max_epochs=2, batch_size=4, progress_bar=False))
    logger = LoggerConfig(tensorboard=False)
    run_experiment(*args, tmp_path / "straight", logger_cfg=logger)
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "step_4.pt").unlink()
    (tmp_path / "resumed" / "checkpoints" / "best.pt").unlink(missing_ok=True)
    run_experiment(*args, tmp_path / "resumed", logger_cfg=logger, resume="auto")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_4.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_4.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_epoch_is_exact(tmp_path):
    """The same FixMatch run checkpointed every step, resumed from step 3 (the first step of epoch 2, with
    its second batch still to come) ends bit-identical to the uninterrupted run."""
    import shutil

    import torch

    from common.checkpoint import load_checkpoint
    from common.config import LoggerConfig, TrainerConfig
    from label_efficient_seg.experiment import DataConfig, run_experiment

    args = (DataConfig("shapes", crop=16, shapes_n=8, shapes_size=16),
            {"name": "fixmatch", "labelled_fraction": 0.5, "tau": 0.5}, {"base": 4, "depth": 2}, None,
            TrainerConfig(max_epochs=2, batch_size=4, progress_bar=False, checkpoint_every_steps=1))
    logger = LoggerConfig(tensorboard=False)
    run_experiment(*args, tmp_path / "straight", logger_cfg=logger)
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints" / "step_4.pt").unlink()
    (tmp_path / "resumed" / "checkpoints" / "best.pt").unlink(missing_ok=True)
    assert (tmp_path / "resumed" / "checkpoints" / "step_3.pt").exists()
    run_experiment(*args, tmp_path / "resumed", logger_cfg=logger, resume="auto")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "step_4.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step_4.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_bench_runs_side_by_side(tmp_path):
    from label_efficient_seg import bench

    res = bench.run(size=16, batch=2, base=4, repeats=1, methods=["full", "boxinst", "fixmatch"])
    assert set(res["steps"]) == {"full", "boxinst", "fixmatch"}
    assert res["steps"]["full"]["ratio_to_full"] == 1.0
    assert all(r["step_s"] > 0 for r in res["steps"].values())
    assert "markdown" not in bench.to_markdown(res) and "| boxinst |" in bench.to_markdown(res)
