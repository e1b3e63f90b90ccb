"""A run is validated before anything is loaded or written: shared options, resume=never, resume=auto with
other settings. Each refusal is one line, exit status 1, and leaves the run folder as it was."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from common.checkpoint import (
    RUN_CONFIG_FILE,
    ResumeError,
    check_resume,
    config_differences,
    run_checkpoints,
    write_run_config,
)
from common.config import RESUME_MAY_CHANGE
from common.hydra_utils import report_user_errors

REPO = Path(__file__).resolve().parents[2]
DIGITS_CONF = REPO / "common" / "examples" / "conf"


@pytest.fixture(autouse=True)
def _no_stale_hydra_config():
    """An in-process Hydra run leaves its HydraConfig behind; run_dir_from must not see it in other tests."""
    HydraConfig.instance().cfg = None
    yield
    HydraConfig.instance().cfg = None


def _fake_checkpoint(run_dir: Path, rel: str = "checkpoints/step_5.pt") -> None:
    path = run_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not read: the check looks at names only")


def test_resume_never_sees_checkpoints_at_any_depth_but_not_in_multirun(tmp_path):
    run = tmp_path / "run"
    check_resume(run, "never")  # no folder yet
    _fake_checkpoint(run, "multirun/seed=1/checkpoints/step_3.pt")  # a sweep launched under this name
    check_resume(run, "never")
    _fake_checkpoint(run, "nets/act/checkpoints/step_7.pt")  # a package that trains several nets
    assert [p.name for p in run_checkpoints(run)] == ["step_7.pt"]
    with pytest.raises(ResumeError, match=r"already holds checkpoints .*nets/act/checkpoints/step_7.pt.*resume=auto"):
        check_resume(run, "never")
    check_resume(run, "auto")  # no stored config (a run from before it was kept): nothing to compare
    with pytest.raises(ResumeError, match="no such checkpoint file"):
        check_resume(run, str(tmp_path / "nope.pt"))


def test_resume_auto_names_every_changed_setting_in_one_line(tmp_path):
    saved = {"name": "seg", "resume": "never", "method": {"name": "full"}, "optim": {"lr": 0.01, "betas": (0.9, 0.99)},
             "trainer": {"max_epochs": 3, "progress_bar": True, "log_every_steps": 10, "precision": "fp32"},
             "logger": {"tensorboard": True}, "paths": {"output_dir": "runs", "data_dir": None}}
    run = tmp_path / "seg"
    write_run_config(run, saved)
    assert json.loads((run / RUN_CONFIG_FILE).read_text())["optim"]["betas"] == [0.9, 0.99]
    # the budget, the paths, the sinks and how often things are logged may change
    allowed = json.loads(json.dumps(saved)) | {
        "resume": "auto", "trainer": saved["trainer"] | {"max_epochs": 9, "progress_bar": False, "log_every_steps": 1},
        "logger": {"tensorboard": False}, "paths": {"output_dir": "/elsewhere", "data_dir": "/data"}}
    assert config_differences(saved, allowed, RESUME_MAY_CHANGE) == []
    changed = allowed | {"method": {"name": "scribbles", "scribble_width": 3}, "optim": {"lr": 0.5, "betas": [0.9, 0.99]},
                         "trainer": allowed["trainer"] | {"precision": "bf16"}}
    check_resume(run, "auto", changed, RESUME_MAY_CHANGE)  # no checkpoint yet: nothing to protect
    _fake_checkpoint(run)
    with pytest.raises(ResumeError) as err:
        check_resume(run, "auto", changed, RESUME_MAY_CHANGE)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("method.name 'full' -> 'scribbles'", "method.scribble_width '<absent>' -> 3",
                 "optim.lr 0.01 -> 0.5", "trainer.precision 'fp32' -> 'bf16'", "original settings", "name=..."):
        assert part in msg, (part, msg)
    assert "max_epochs" not in msg and "betas" not in msg and "tensorboard" not in msg


def _digits_cfg(*overrides: str):
    import common.examples.digits  # noqa: F401  (registers the model group)

    with initialize_config_dir(str(DIGITS_CONF), version_base="1.3"):
        return compose(config_name="digits", overrides=list(overrides))


@pytest.mark.parametrize("override,expected", [
    ("trainer.precision=fp16", "fp16 is not supported: fp16 needs dynamic loss scaling (a GradScaler)"),
    ("trainer.precision=fp8", "trainer.precision=fp8 is not one of fp32, bf16"),
    ("trainer.device=cuda", "trainer.device=cuda but this machine has no visible CUDA device"),
    ("trainer.device=tpu", "trainer.device=tpu is not one of auto, cpu, cuda"),
    ("trainer.monitor_mode=best", "trainer.monitor_mode=best is not one of max, min"),
    ("trainer.batch_size=0", "trainer.batch_size=0 must be >= 1"),
    ("trainer.max_epochs=null", "set trainer.max_epochs or trainer.max_steps (both are null)"),
    ("resume=/no/such.pt", "resume=/no/such.pt: no such checkpoint file"),
])
def test_bad_shared_options_stop_before_the_task_in_one_line(tmp_path, monkeypatch, capsys, override, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    called = []
    task = report_user_errors(lambda cfg: called.append(cfg))
    with pytest.raises(SystemExit) as code:
        task(_digits_cfg(f"paths.output_dir={tmp_path}", override))
    err = capsys.readouterr().err
    assert code.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err and not called  # the task (data, model) never started
    assert not (tmp_path / "digits").exists()  # and nothing was written


def test_batch_that_does_not_split_over_the_ranks_and_cpu_sync_batchnorm_are_refused(monkeypatch):
    from common.config import ConfigError, TrainerConfig, check_trainer_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"batch_size=33 must divide by the number of torchrun processes \(WORLD_SIZE=2\)"):
        check_trainer_config(TrainerConfig(batch_size=33))
    with pytest.raises(ConfigError, match="sync_batchnorm=true needs CUDA"):
        check_trainer_config(TrainerConfig(sync_batchnorm=True, device="cpu"))


def _digits_main(monkeypatch, *argv: str) -> None:
    from common.examples import digits

    monkeypatch.setattr(sys, "argv", ["digits", *argv])
    digits.main()
    HydraConfig.instance().cfg = None


def test_digits_cli_writes_its_config_after_validation_and_refuses_changed_settings(tmp_path, monkeypatch, capsys):
    common = [f"paths.output_dir={tmp_path}", "trainer.progress_bar=false", "logger.tensorboard=false"]
    _digits_main(monkeypatch, *common, "trainer.max_steps=2")
    run = tmp_path / "digits"
    hydra_files = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    assert set(hydra_files) == {"config.yaml", "hydra.yaml", "overrides.yaml"}  # where Hydra puts them
    assert b"max_steps: 2" in hydra_files["config.yaml"] and b"- trainer.max_steps=2" in hydra_files["overrides.yaml"]
    stored = json.loads((run / RUN_CONFIG_FILE).read_text())
    assert stored["model"]["lr"] == 0.01 and stored["trainer"]["max_steps"] == 2

    # another method of training under the same run: refused in one line, the folder untouched
    capsys.readouterr()
    with pytest.raises(SystemExit) as code:
        _digits_main(monkeypatch, *common, "resume=auto", "model.lr=0.5", "model.hidden=32", "trainer.max_steps=4")
    err = capsys.readouterr().err
    assert code.value.code == 1 and err.count("\n") == 1, err
    assert "model.hidden 64 -> 32, model.lr 0.01 -> 0.5" in err and "max_steps" not in err
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == hydra_files
    assert json.loads((run / RUN_CONFIG_FILE).read_text()) == stored

    # a longer budget is what resume is for
    _digits_main(monkeypatch, *common, "resume=auto", "trainer.max_steps=3")
    assert "after 3 steps" in capsys.readouterr().out

    # a monitor that the evaluation does not return: one line, before a training step
    with pytest.raises(SystemExit) as code:
        _digits_main(monkeypatch, *common, "name=typo", "trainer.monitor=bad")
    err = capsys.readouterr().err
    assert code.value.code == 1 and err == "error: trainer.monitor=bad is not a metric the evaluation returns (acc)\n"
    assert not (tmp_path / "typo" / "checkpoints").exists()


def test_cli_refusal_of_resume_never_leaves_the_run_untouched_and_loads_nothing(tmp_path):
    """A real CLI each (digits and label_efficient_seg, in parallel) on a run folder that holds
    checkpoints: resume=never is refused in one line before Hydra's files are rewritten, and before any
    data is read (label_efficient_seg's data root does not exist, so loading would fail differently)."""
    procs = {}
    for module, name in (("common.examples.digits", "digits"), ("label_efficient_seg.train", "seg")):
        run = tmp_path / name
        _fake_checkpoint(run)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_bytes(b"# the finished run's config\nname: " + name.encode() + b"\n")
        cmd = [sys.executable, "-m", module, f"paths.output_dir={tmp_path}", f"name={name}",
               f"paths.data_dir={tmp_path / 'no_data'}", "trainer.max_epochs=7"]
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"}), time.time())
    for name, (proc, t0) in procs.items():
        _, err = proc.communicate(timeout=120)
        seconds = time.time() - t0
        assert proc.returncode == 1, err[-2000:]
        assert err.startswith("error: ") and err.count("\n") == 1 and "already holds checkpoints" in err, err
        config = (tmp_path / name / ".hydra" / "config.yaml").read_bytes()
        assert config == b"# the finished run's config\nname: " + name.encode() + b"\n"
        assert sorted(p.name for p in (tmp_path / name).iterdir()) in (
            [".hydra", "checkpoints"], [".hydra", "checkpoints", f"{name}.log"],
            [".hydra", "checkpoints", "train.log"])  # Hydra's (empty) job log at most
        print(f"{name}: refused after {seconds:.1f} s")
