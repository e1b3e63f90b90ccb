"""The training core on scikit-learn's digits: it learns, resumes exactly, guards NaN, runs DDP."""

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointManager, ResumeError, load_checkpoint, save_checkpoint
from common.config import TrainerConfig
from common.examples.digits import MLP, load_digits_split, loss_fn, train_digits
from common.logging import read_jsonl
from common.trainer import NonFiniteLossError, Trainer, length_grouped_batches

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("digits_worker.py")
FAST = TrainerConfig(max_epochs=3, batch_size=64, progress_bar=False, monitor="acc", log_every_steps=5)


def _final_state(run_dir: Path) -> dict:
    latest = CheckpointManager(run_dir).latest()
    assert latest is not None, f"no checkpoint in {run_dir}"
    return load_checkpoint(latest)


def test_learns_digits(tmp_path):
    _, result = train_digits(FAST, tmp_path / "run", logger_cfg=None)
    assert result.best_metrics["acc"] > 0.9
    assert result.stopped_reason == "max_epochs"
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert any("train/loss" in r for r in rows) and any("val/acc" in r for r in rows)
    assert (tmp_path / "run" / "tb").is_dir()
    info = (tmp_path / "run" / "run_info.json").read_text()
    assert '"wall_seconds"' in info and '"hardware"' in info and '"commit"' in info


def _run_worker(kill_at: int, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    overrides = [f"paths.output_dir={run_dir.parent}", f"name={run_dir.name}", "trainer.max_epochs=3",
                 "trainer.checkpoint_every_steps=10", "trainer.progress_bar=false", "logger.tensorboard=false",
                 *extra]
    return subprocess.run([sys.executable, str(WORKER), str(kill_at), *overrides], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    # Dropout makes every step draw from the global RNG, so the resumed run must restore it exactly.
    ref = _run_worker(0, tmp_path / "straight", "model.dropout=0.2")
    assert ref.returncode == 0, ref.stderr[-2000:]
    # 1,500 train images / 64 = 24 micro-batches per epoch; micro-batch 40 is mid-epoch 2, and the
    # newest checkpoint at that moment is step 30.
    killed = _run_worker(40, tmp_path / "crashy", "model.dropout=0.2")
    assert killed.returncode == -9
    assert CheckpointManager(tmp_path / "crashy").latest().name == "step_30.pt"
    resumed = _run_worker(0, tmp_path / "crashy", "resume=auto", "model.dropout=0.2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "crashy")
    assert a["step"] == b["step"] == 72
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["trainer_state"]["last_metrics"] == b["trainer_state"]["last_metrics"]
    assert a["trainer_state"]["best_metrics"] == b["trainer_state"]["best_metrics"]
    last_val = lambda d: [r for r in read_jsonl(d / "metrics.jsonl") if "val/acc" in r][-1]["val/acc"]
    assert last_val(tmp_path / "straight") == last_val(tmp_path / "crashy")


def test_resume_of_finished_run_is_a_no_op(tmp_path):
    cfg = replace(FAST, max_epochs=1)
    _, first = train_digits(cfg, tmp_path / "r")
    _, second = train_digits(cfg, tmp_path / "r", resume="auto")
    assert second.step == first.step and second.last_metrics == first.last_metrics
    # the resumed call took moments; the run's total is the first session's, kept in the checkpoint
    assert second.wall_seconds_total >= 0.5 * first.wall_seconds_total > 0
    # a checkpoint from before the wall was kept in it: the finished sessions of run_info.json count
    latest = CheckpointManager(tmp_path / "r").latest()
    ck = load_checkpoint(latest)
    del ck["trainer_state"]["wall_seconds"]
    save_checkpoint(latest, ck)
    sessions = json.loads((tmp_path / "r" / "run_info.json").read_text())["sessions"]
    _, third = train_digits(cfg, tmp_path / "r", resume="auto")
    assert third.wall_seconds_total >= sum(s["wall_seconds"] for s in sessions)
    with pytest.raises(ResumeError, match="resume=auto"):
        train_digits(cfg, tmp_path / "r", resume="never")


def test_grad_accumulation_matches_large_batch(tmp_path):
    cfg_big = replace(FAST, max_epochs=1, batch_size=60, monitor=None)
    cfg_acc = replace(cfg_big, batch_size=30, grad_accum_steps=2)
    m_big, r_big = train_digits(cfg_big, tmp_path / "big")
    m_acc, r_acc = train_digits(cfg_acc, tmp_path / "acc")
    assert r_big.step == r_acc.step == 25
    # Not bit-identical: the big run's batches are different index sets (randperm cut at 60 vs 30 is
    # the same order, so the same 60 images per step) but summation order differs.
    for p, q in zip(m_big.parameters(), m_acc.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    train, _ = load_digits_split()
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        out = loss_fn(model, batch)
        if calls["n"] >= 30:
            out["loss"] = out["loss"] * float("nan")
        return out

    cfg = replace(FAST, checkpoint_every_steps=10, monitor=None)
    trainer = Trainer(cfg, tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match="step 30") as err:
        trainer.fit(MLP(), train, poisoned, optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    # 24 steps per epoch: the newest checkpoint is the end of epoch 0 (step 24), not step 30.
    assert "step_24.pt" in str(err.value)
    good = load_checkpoint(trainer.ckpt.latest())
    assert good["step"] == 24 and all(torch.isfinite(v).all() for v in good["model"].values())


def test_early_stopping_stops(tmp_path):
    cfg = replace(FAST, max_epochs=50, early_stopping_patience=2, monitor="loss_like", monitor_mode="min")
    train, _ = load_digits_split()
    trainer = Trainer(cfg, tmp_path / "es")
    result = trainer.fit(MLP(), train, loss_fn, optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.0),
                         eval_fn=lambda m: {"loss_like": 1.0})  # never improves after the first eval
    assert result.stopped_reason == "early_stopping" and result.epoch == 3
    assert (result.best_step, result.best_epoch) == (24, 1)  # the first evaluation, end of epoch 0
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()


def test_bf16_autocast_trains(tmp_path):
    _, result = train_digits(replace(FAST, precision="bf16", max_epochs=2), tmp_path / "bf16")
    assert result.best_metrics["acc"] > 0.85


def test_clip_norm_is_logged_and_bounds_update(tmp_path):
    _, _ = train_digits(replace(FAST, max_epochs=1, clip_grad_norm=0.5), tmp_path / "clip")
    rows = [r for r in read_jsonl(tmp_path / "clip" / "metrics.jsonl") if "train/grad_norm" in r]
    assert rows and all(math.isfinite(r["train/grad_norm"]) for r in rows)


DDP_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {repo!r})
from common.config import TrainerConfig
from common.examples.digits import train_digits, DigitsModelConfig
cfg = TrainerConfig(max_epochs=2, batch_size=64, progress_bar=False, seed=3)
model, res = train_digits(cfg, {run!r}, DigitsModelConfig(lr=0.05))
import os
if int(os.environ.get("RANK", "0")) == 0:
    torch.save(model.state_dict(), {out!r})
"""


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"w{nproc}.pt"
        script = tmp_path / f"ddp{nproc}.py"
        script.write_text(DDP_SCRIPT.format(repo=str(REPO), run=str(tmp_path / f"run{nproc}"), out=str(out)))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + nproc + os.getpid() % 1000), str(script)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[nproc] = torch.load(out)
    for k in outs[1]:
        torch.testing.assert_close(outs[1][k], outs[2][k], rtol=1e-4, atol=1e-5)


def test_length_grouped_batches_cover_each_example_once_and_cut_padding():
    lengths = [20 if i % 3 else 85 for i in range(1000)]  # sentences and Reuters-like segments, mixed
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    grouped = length_grouped_batches(order, lengths, 32, torch.Generator().manual_seed(1), window_batches=8)
    plain = [order[i:i + 32] for i in range(0, 1000, 32)]
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert [len(b) for b in grouped] == [len(b) for b in plain]  # same batch count and sizes; short one last
    padded = lambda batches: sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded(grouped) < 0.6 * padded(plain)
    again = length_grouped_batches(order, lengths, 32, torch.Generator().manual_seed(1), window_batches=8)
    assert again == grouped  # deterministic given the order and the generator: resume rebuilds the same epoch


def test_fit_with_lengths_uses_the_grouped_batches(tmp_path):
    train, _ = load_digits_split()
    lengths = [int(y) for _, y in train]  # "length" = the digit, so a grouped batch holds few distinct digits
    seen = []

    def recording_loss(model, batch):
        seen.append(batch[1].tolist())
        return loss_fn(model, batch)

    cfg = replace(FAST, max_epochs=1, monitor=None)
    Trainer(cfg, tmp_path / "grouped").fit(MLP(), train, recording_loss, lengths=lengths,
                                           optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert sum(len(b) for b in seen) == len(train)
    assert sum(len(set(b)) for b in seen) / len(seen) < 4  # random batches of 64 hold ~10 distinct digits
    with pytest.raises(ValueError, match="lengths has 3 entries"):
        Trainer(cfg, tmp_path / "bad").fit(MLP(), train, loss_fn, lengths=[1, 2, 3],
                                           optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))


DDP_SHARDED_EVAL = r"""
import sys, json, torch
sys.path.insert(0, {repo!r})
from common.distributed import init_from_env, shard, gather_shards, rank_world
rank, world, _ = init_from_env()
items = list(range(11))
mine = shard(items)
back = gather_shards([x * x for x in mine], len(items))
with open({out!r} + f".{{rank}}", "w") as f:
    json.dump({{"mine": mine, "back": back, "world": world}}, f)
"""


def test_shard_and_gather_restore_the_single_process_order(tmp_path):
    from common.distributed import gather_shards, shard

    assert shard([1, 2, 3]) == [1, 2, 3] and gather_shards([4, 5], 2) == [4, 5]
    with pytest.raises(ValueError, match="2 results for 3 items"):
        gather_shards([1, 2], 3)
    script = tmp_path / "shard.py"
    script.write_text(DDP_SHARDED_EVAL.format(repo=str(REPO), out=str(tmp_path / "out")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29700 + os.getpid() % 1000), str(script)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert got[0]["mine"] == [0, 2, 4, 6, 8, 10] and got[1]["mine"] == [1, 3, 5, 7, 9]
    assert got[0]["back"] == got[1]["back"] == [x * x for x in range(11)] and got[0]["world"] == 2
