"""What every Trainer package relies on under torchrun: Hydra's files come from rank 0 alone, and a sharded
evaluation sees rank 0's weights and BatchNorm statistics on every rank (CPU, gloo)."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

import common.config  # noqa: F401  (registers run_layout and its callback)
import common.examples.digits  # noqa: F401  (registers model/digits_mlp)
from common.launch import RankZeroWrites
from tests.common.torchrun import REPO, run_torchrun

DIGITS_CONF = REPO / "common" / "examples" / "conf"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_rank_zero_writes_strips_hydra_files_off_other_ranks(rank, monkeypatch):
    with initialize_config_dir(config_dir=str(DIGITS_CONF), version_base="1.3"):
        cfg = compose("digits", return_hydra_config=True)
    assert "rank_zero_writes" in cfg.hydra.callbacks  # run_layout installs it in every package
    monkeypatch.setenv("RANK", rank)
    RankZeroWrites().on_run_start(config=cfg)
    handlers = cfg.hydra.job_logging.handlers
    if rank == "0":  # untouched: the job log file stays
        assert "file" in handlers and "file" in cfg.hydra.job_logging.root.handlers
    else:
        assert cfg.hydra.output_subdir is None and "file" not in handlers
        assert "file" not in cfg.hydra.job_logging.root.handlers and "console" in handlers


BN_SCRIPT = r"""
import json, os, sys, torch
from torch import nn
from torch.utils.data import TensorDataset
from common.config import TrainerConfig
from common.distributed import gather_shards, shard
from common.trainer import Trainer

torch.manual_seed(0)
x, y = torch.randn(64, 4), torch.randn(64, 1)
model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
seen = []

def eval_fn(m):
    seen.append(m[1].running_mean.tolist())
    out = gather_shards([float(m(x[i:i + 1])) for i in shard(range(len(x)))], len(x))
    return {{"mse": float(((torch.tensor(out)[:, None] - y) ** 2).mean())}}

cfg = TrainerConfig(max_epochs=2, batch_size=16, progress_bar=False, monitor="mse", monitor_mode="min")
res = Trainer(cfg, {run!r}).fit(model, TensorDataset(x, y), lambda net, b: ((net(b[0]) - b[1]) ** 2).mean(),
                                optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                                eval_fn=eval_fn, eval_sharded=True)
with open({out!r} + os.environ["RANK"], "w") as f:
    json.dump({{"seen": seen, "best": res.best_metrics}}, f)
"""


@pytest.mark.slow
def test_sharded_evaluation_sees_rank0_batchnorm_statistics(tmp_path):
    """Each rank's last training forward updates its own BatchNorm statistics (on CPU there is no
    SyncBatchNorm); the evaluation must still score rank 0's model on every shard."""
    script = tmp_path / "bn.py"
    script.write_text(BN_SCRIPT.format(run=str(tmp_path / "run"), out=str(tmp_path / "rank")))
    r = run_torchrun(str(script), [], tmp_path, module_flag=False)
    assert r.returncode == 0, r.output[-3000:]
    got = [json.loads((tmp_path / f"rank{k}").read_text()) for k in (0, 1)]
    assert got[0]["seen"] == got[1]["seen"] and len(got[0]["seen"]) >= 2  # one per epoch (and a first check)
    assert got[0]["best"] == got[1]["best"]
