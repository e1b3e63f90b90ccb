"""Entry points: the Hydra train shell (and its resume), the reproduce smoke profile, the compare CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.logging import read_jsonl

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = Path("perceptual/lpips_examples")


def _run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_train_smoke_subprocess(tmp_path):
    """The Hydra shell end to end, in a subprocess (one epoch of the smoke experiment)."""
    out = _run(["-m", "lpips_metric.train", "experiment=smoke", f"paths.output_dir={tmp_path}", "name=smoke",
                "logger.tensorboard=false", "trainer.max_epochs=1"])
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path / "smoke"
    assert (run_dir / "lpips_heads.safetensors").is_file()
    assert (run_dir / "checkpoints" / "step_3.pt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any("val/2afc_mean" in r for r in rows)
    heads = load_checkpoint(run_dir / "lpips_heads.safetensors")  # pickle-free export
    assert heads["net"] == "alex" and all((w >= 0).all() for w in heads["heads"].values())


def test_resume_ends_where_an_uninterrupted_run_does(tiny_bapps, tmp_path):
    from common.checkpoint import ResumeError
    from common.config import LoggerConfig, TrainerConfig
    from lpips_metric.training import DataConfig, MetricTrainConfig, train_metric

    data = DataConfig(root=str(tiny_bapps), train_splits=["traditional"], val_splits=[], jnd_splits=[],
                      preload=False)
    model = MetricTrainConfig(trunk="random")
    log = LoggerConfig(tensorboard=False)

    def cfg(epochs):
        return TrainerConfig(max_epochs=epochs, batch_size=32, monitor=None, progress_bar=False)

    straight, _, _ = train_metric(cfg(2), tmp_path / "straight", model, data, logger_cfg=log)
    train_metric(cfg(1), tmp_path / "split", model, data, logger_cfg=log)  # "killed" after epoch 1
    with pytest.raises(ResumeError, match="resume=auto"):
        train_metric(cfg(2), tmp_path / "split", model, data, logger_cfg=log)
    resumed, result, _ = train_metric(cfg(2), tmp_path / "split", model, data, logger_cfg=log, resume="auto")
    assert result.step == 6
    for a, b in zip(straight.heads, resumed.heads):
        assert torch.equal(a.weight, b.weight)


@pytest.mark.slow
def test_train_subprocess_resume_and_help(tmp_path):
    args = ["-m", "lpips_metric.train", "experiment=smoke", f"paths.output_dir={tmp_path}", "name=smoke",
            "logger.tensorboard=false"]
    assert _run(args + ["trainer.max_epochs=1"]).returncode == 0
    again = _run(args + ["trainer.max_epochs=2"])
    assert again.returncode == 1 and "resume=auto" in again.stderr
    resumed = _run(args + ["trainer.max_epochs=2", "resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert max(r["step"] for r in read_jsonl(tmp_path / "smoke" / "metrics.jsonl")) == 6
    out = _run(["-m", "lpips_metric.train", "--help"])
    assert out.returncode == 0
    assert "model: lin, scratch, tune" in out.stdout and "data: " in out.stdout


def test_reproduce_smoke(tmp_path):
    from lpips_metric.reproduce import main

    main(["--profile", "smoke", "--reports-dir", str(tmp_path / "reports"), "--work-dir", str(tmp_path / "work")])
    report = (tmp_path / "reports" / "lpips_metric" / "report.md").read_text()
    assert "SYNTHETIC" in report and "L2 (Lab)" in report and "alex random-trunk lin (ours)" in report
    results = json.loads((tmp_path / "reports" / "lpips_metric" / "results.json").read_text())
    lin = results["extra"]["scores"]["alex random-trunk lin (ours)"]
    assert 0.5 < lin["2afc_mean"] <= 1 and 0 < lin["jnd_mean"] <= 1
    assert (tmp_path / "reports" / "lpips_metric" / "2afc_smoke.png").is_file()


def _examples() -> Path:
    from common.data import dataset_path

    return dataset_path("LPIPS examples", EXAMPLES, source="../shared/data/SOURCES.md")


def test_compare_cli(tmp_path):
    from lpips_metric.compare import main

    ex = _examples()
    assert main([str(ex / "ex_ref.png"), str(ex / "ex_p0.png"), "--trunk", "random",
                 "--spatial", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").is_file()
    assert main([str(ex / "ex_dir0"), str(ex / "ex_dir1"), "--trunk", "random", "--out", str(tmp_path / "d.csv")]) == 0
    lines = (tmp_path / "d.csv").read_text().splitlines()
    assert lines[0] == "name,lpips_alex_v0.1" and len(lines) == 3


def test_compare_cli_errors(tmp_path, capsys):
    from lpips_metric.compare import main
    from lpips_metric.model import imagenet_trunk_available

    ex = _examples()
    if not imagenet_trunk_available("alex"):
        assert main([str(ex / "ex_ref.png"), str(ex / "ex_p0.png")]) == 2
        err = capsys.readouterr().err  # the hint in the command line's own syntax, not Python's
        assert "--trunk random" in err and "--trunk /path/to/alexnet-owt-7be5be79.pth" in err
        assert "trunk='" not in err and len(err.strip().splitlines()) == 1
    from PIL import Image

    Image.new("RGB", (32, 48)).save(tmp_path / "small.png")
    with pytest.raises(SystemExit, match="equal size"):
        main([str(ex / "ex_ref.png"), str(tmp_path / "small.png"), "--trunk", "random"])


@pytest.mark.slow
def test_full_profile_code_path_at_tiny_size(tmp_path):
    """The `full` profile's extra steps (scratch training through the common Trainer, ImageNet rows or the
    note explaining their absence) at a tiny size."""
    from common.reproduce import ProfileContext
    from lpips_metric.reproduce import Profile, run

    ctx = ProfileContext(pkg="lpips_metric", profile="tiny_full", out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    ctx.out_dir.mkdir()
    ctx.work_dir.mkdir()
    report = run(ctx, Profile(n_train=40, n_val=20, n_jnd=20, val_splits=("traditional", "within"),
                              jnd_splits=("traditional",), train_splits=("traditional",), lin_epochs=2,
                              scratch_epochs=1, imagenet_rows=True))
    assert "alex scratch (ours)" in report.extra["scores"]
    assert (ctx.work_dir / "scratch_alex" / "lpips_heads.safetensors").is_file()
    from lpips_metric.model import LPIPS

    exported = ctx.work_dir / "scratch_alex" / "lpips_heads.safetensors"
    trunk = exported.with_name("lpips_heads.trunk.safetensors")
    metric = LPIPS("alex", trunk=trunk, heads=exported)  # trained trunk + heads
    x = torch.rand(1, 3, 64, 64)
    assert float(metric(x, x.flip(-1), normalize=True)) > 0
    from lpips_metric.model import imagenet_trunk_available

    if not imagenet_trunk_available("alex"):
        assert "ImageNet rows absent" in report.notes
