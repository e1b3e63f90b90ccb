"""lpips_metric never runs code from a head, trunk or checkpoint file (issue 29).

Head files are what people download from others; a planted pickle (its unpickling creates a marker file)
is refused in one line by ``LPIPS(heads=...)``, ``LPIPS(trunk=...)``, the compare CLI and the train
shell's ``resume=<path>``. The exports are safetensors + JSON and round-trip without trust.
"""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import UntrustedCheckpointError, checkpoint_trust, save_checkpoint
from lpips_metric.model import LPIPS, build_trunk, head_state, load_heads
from tests.evil_pickle import assert_refused, plant, run_main


def test_head_and_trunk_files_refuse_a_planted_pickle(tmp_path):
    heads, trunk = tmp_path / "heads.pth", tmp_path / "trunk.pth"
    m_heads, m_trunk = plant(heads), plant(trunk)
    with pytest.raises(UntrustedCheckpointError) as exc:
        LPIPS("alex", trunk="random", heads=heads)
    line = assert_refused(str(exc.value), heads, m_heads, how="trust=True")
    assert "python -m common.checkpoint convert" in line  # an older .pth export: the conversion is named
    with pytest.raises(UntrustedCheckpointError) as exc:
        build_trunk("alex", trunk)
    assert_refused(str(exc.value), trunk, m_trunk, how="trust=True")


def test_compare_cli_refuses_planted_heads_and_trunk(tmp_path, monkeypatch, capsys):
    from lpips_metric.compare import main

    for flag in ("--heads", "--trunk"):
        evil = tmp_path / f"{flag[2:]}.pth"
        marker = plant(evil)
        argv = [str(tmp_path / "a.png"), str(tmp_path / "b.png"), flag, str(evil)]
        if flag == "--heads":
            argv += ["--trunk", "random"]
        monkeypatch.setattr("sys.argv", ["compare", *argv])
        capsys.readouterr()
        assert main() == 2
        assert_refused(capsys.readouterr().err, evil, marker, how="--trust-checkpoint")


def test_train_resume_path_refuses_a_planted_pickle(tmp_path, monkeypatch, capsys):
    from lpips_metric import train

    evil = tmp_path / "evil.pt"
    marker = plant(evil)
    argv = ["experiment=smoke", f"paths.output_dir={tmp_path}", "name=s", f"resume={evil}", "data.n_train=10",
            "data.n_val=4", "data.n_jnd=4", "data.val_splits=[traditional]",
            f"data.synthetic_dir={tmp_path / 'b'}", "logger.tensorboard=false"]
    assert_refused(run_main(train.main, argv, monkeypatch, capsys), evil, marker)


def test_exports_are_safetensors_and_round_trip(tmp_path):
    """tune-style export: heads + trunk as safetensors + JSON, loaded back without trust; an older .pth
    head file of plain weights (written before the change) still loads."""
    from lpips_metric.training import export_metric

    torch.manual_seed(0)
    metric = LPIPS("alex", trunk="random", heads="random")
    path = export_metric(metric, tmp_path / "lpips_heads.safetensors", "tune")
    cfg = json.loads((tmp_path / "lpips_heads.json").read_text())
    assert cfg == {"net": "alex", "version": "0.1", "variant": "tune",
                   "trunk_file": "lpips_heads.trunk.safetensors"}
    with checkpoint_trust(False):
        back = LPIPS("alex", trunk=tmp_path / cfg["trunk_file"], heads=path)
    for a, b in zip(metric.heads, back.heads):
        assert torch.equal(a.weight, b.weight)
    for (k, a), b in zip(metric.trunk.state_dict().items(), back.trunk.state_dict().values()):
        assert torch.equal(a, b), k
    old = save_checkpoint(tmp_path / "old.pth",
                          {"heads": head_state(metric), "net": "alex", "version": "0.1"})
    again = load_heads(LPIPS("alex", trunk="random", heads="random"), old)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(metric.heads, again.heads))
