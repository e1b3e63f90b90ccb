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
from torch import nn
from torch.utils.data import TensorDataset

from common.checkpoint import CheckpointManager, ResumeError, load_checkpoint, save_checkpoint
from common.config import ConfigError, TrainerConfig
from common.examples.digits import MLP, DigitsModelConfig, accuracy, load_digits_split, loss_fn, train_digits
from common.logging import MetricLogger, read_jsonl
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
    # train/loss every 4 steps: the rows after a checkpoint average steps from before it (the window must
    # resume with the run)
    overrides = [f"paths.output_dir={run_dir.parent}", f"name={run_dir.name}", "trainer.max_epochs=3",
                 "trainer.checkpoint_every_steps=10", "trainer.progress_bar=false", "logger.tensorboard=false",
                 "trainer.log_every_steps=4", *extra]
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
    # every row once, as in the uninterrupted run: those logged after step 30 by the killed session are gone
    assert _rows(tmp_path / "crashy") == _rows(tmp_path / "straight")
    assert [r["step"] for r in _rows(tmp_path / "crashy") if "val/acc" in r] == [24, 48, 72]


def _rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl without what differs between two identical runs (wall-clock time, throughput)."""
    return [{k: v for k, v in r.items() if k not in ("time", "train/samples_per_s")}
            for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_metric_logger_resumed_at_a_step_drops_later_rows_and_purges_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricLogger(tmp_path) as first:
        for step in range(1, 6):
            first.log(step, {"loss": float(step)})
        first.log(5, {"val": 0.5})  # then killed: the newest checkpoint is step 3
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a row torn by the kill
    with MetricLogger(tmp_path, start_step=3) as resumed:
        for step in (4, 5):
            resumed.log(step, {"loss": 10.0 * step})
    assert [(r["step"], r.get("loss")) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert len(list((tmp_path / "tb").iterdir())) == 2  # a second event file, which purges steps >= 4
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert events.Scalars("val") == []  # a tag the resumed session never rewrites is purged as well


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


class Linear1(nn.Module):
    """y = w * x with w = 0 at the start: every micro-batch of x = 1 has gradient 1 for loss = y."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.w * x


def test_last_partial_accumulation_group_weighs_like_a_full_one(tmp_path):
    # 5 micro-batches, accumulation 4: groups of 4 and 1. Each update is the mean gradient over its group
    # (1), so with SGD lr 1, w goes 0 -> -1 -> -2 (dividing by 4 in the short group gave -1.25).
    cfg = replace(FAST, max_epochs=1, batch_size=1, grad_accum_steps=4, monitor=None)
    model = Linear1()
    result = Trainer(cfg, tmp_path / "acc").fit(
        model, TensorDataset(torch.ones(5, 1)), lambda m, b: m(b[0]).mean(),
        optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=1.0))
    assert result.step == 2 and model.w.item() == -2.0


def _dropout_mlp_fit(run_dir: Path, cfg: TrainerConfig, resume: str = "never") -> MLP:
    train, _ = load_digits_split()
    torch.manual_seed(0)
    model = MLP(dropout=0.3)
    Trainer(cfg, run_dir, resume=resume).fit(model, train, loss_fn,
                                             optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    return model


def test_resume_inside_an_epoch_with_a_partial_accumulation_group_is_exact(tmp_path):
    # 24 micro-batches of 64 per epoch, accumulation 5: 5 steps per epoch, the last of 4 micro-batches
    cfg = replace(FAST, max_epochs=2, grad_accum_steps=5, monitor=None, checkpoint_every_steps=3)
    straight = _dropout_mlp_fit(tmp_path / "straight", cfg)
    _dropout_mlp_fit(tmp_path / "cut", replace(cfg, max_steps=3))  # stops at micro-batch 15 of epoch 0
    resumed = _dropout_mlp_fit(tmp_path / "cut", cfg, resume="auto")
    assert _final_state(tmp_path / "cut")["step"] == _final_state(tmp_path / "straight")["step"] == 10
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


class BatchNormNet(nn.Module):
    """Linear -> BatchNorm1d -> Linear: a batch of one row fails in training mode."""

    def __init__(self, n_in: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


def _rows_seen(cfg: TrainerConfig, model: nn.Module, n: int, run_dir: Path) -> list[int]:
    seen = []

    def loss(m, batch):
        seen.append(len(batch[0]))
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    data = TensorDataset(torch.randn(n, 8), torch.randint(0, 2, (n,)))
    Trainer(cfg, run_dir).fit(model, data, loss, optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    return seen


def test_a_last_batch_too_small_for_batchnorm_is_dropped(tmp_path):
    # the synthesis_pathways failure: 191 rows in batches of 38 leave one row for the last batch
    cfg = replace(FAST, max_epochs=1, batch_size=38, monitor=None)
    assert _rows_seen(cfg, BatchNormNet(), 191, tmp_path / "bn") == [38] * 5
    # without BatchNorm a one-row batch trains as before; drop_last drops any short last batch
    assert _rows_seen(cfg, nn.Linear(8, 2), 191, tmp_path / "plain") == [38] * 5 + [1]
    assert _rows_seen(replace(cfg, drop_last=True), nn.Linear(8, 2), 200, tmp_path / "drop") == [38] * 5
    assert _rows_seen(replace(cfg, drop_last=False), nn.Linear(8, 2), 200, tmp_path / "keep") == [38] * 5 + [10]
    with pytest.raises(ConfigError, match="1 training examples make no batch of at least 2 rows"):
        _rows_seen(cfg, BatchNormNet(), 1, tmp_path / "one")


@pytest.mark.slow
def test_synthesis_smoke_with_a_one_row_last_batch_trains(tmp_path):
    """The reported command: experiment=smoke with trainer.batch_size=38 (191 rows for one net) died in
    BatchNorm1d ("Expected more than 1 value per channel")."""
    data = REPO.parent / "shared" / "data"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not (data / "synthesis").is_dir() and "PAPERS_DATA_DIR" not in env:
        pytest.skip("needs the synthesis data (../shared/data/synthesis or $PAPERS_DATA_DIR)")
    env.setdefault("PAPERS_DATA_DIR", str(data))
    proc = subprocess.run([sys.executable, "-m", "synthesis_pathways.train", "experiment=smoke",
                           "trainer.batch_size=38", f"paths.output_dir={tmp_path}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "synthesis_pathways_smoke" / "pipeline.json").read_text())
    assert any(rows[0] % 38 == 1 for rows in (r["rows"] for r in info["fit"].values()))


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


def test_a_monitor_typo_fails_before_the_first_step(tmp_path):
    train, val = load_digits_split()
    calls = {"loss": 0, "eval": 0}

    def counting_loss(model, batch):
        calls["loss"] += 1
        return loss_fn(model, batch)

    def eval_fn(model):
        calls["eval"] += 1
        return {"acc": accuracy(model, val)}

    cfg = replace(FAST, monitor="bad")
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"trainer.monitor=bad is not a metric the evaluation returns \(acc\)"):
        Trainer(cfg, tmp_path / "a").fit(MLP(), train, counting_loss, optimizer_fn=sgd, eval_fn=eval_fn)
    assert calls == {"loss": 0, "eval": 1}  # one evaluation, no training step
    with pytest.raises(ConfigError, match="trainer.monitor=bad"):
        Trainer(cfg, tmp_path / "b").fit(MLP(), train, counting_loss, optimizer_fn=sgd, eval_fn=eval_fn,
                                         eval_metrics=("acc",))
    assert calls == {"loss": 0, "eval": 1}  # the declared names answer without evaluating


def test_the_evaluation_that_checks_the_monitor_changes_no_result(tmp_path):
    # The check evaluation runs before the first step; an eval_fn that draws random numbers must not shift
    # the dropout masks of training (the RNG state is restored after it).
    train, val = load_digits_split()

    def fit(run: str, **kw) -> MLP:
        torch.manual_seed(0)
        model = MLP(dropout=0.3)
        Trainer(replace(FAST, max_epochs=1), tmp_path / run).fit(
            model, train, loss_fn, optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
            eval_fn=lambda m: {"acc": accuracy(m, val), "noise": float(torch.rand(1))}, **kw)
        return model

    checked, declared = fit("checked"), fit("declared", eval_metrics=("acc", "noise"))
    for p, q in zip(checked.parameters(), declared.parameters()):
        assert torch.equal(p, q)


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
    # One SGD step: the logged norm is the gradient's before clipping, and the update is lr * clip long
    # (it would be lr * grad_norm without clipping).
    train, _ = load_digits_split()
    torch.manual_seed(0)
    model = MLP()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = replace(FAST, max_steps=1, clip_grad_norm=0.1, log_every_steps=1, monitor=None)
    Trainer(cfg, tmp_path / "clip").fit(model, train, loss_fn,
                                        optimizer_fn=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    grad_norm = read_jsonl(tmp_path / "clip" / "metrics.jsonl")[0]["train/grad_norm"]
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    assert grad_norm > 2 * 0.1  # well above the clip, so clipping must shrink the step
    assert math.isclose(float(update), 0.1 * 0.1, rel_tol=1e-4)


TORCHRUN_SCRIPT = r"""
import json, sys, torch
from dataclasses import replace
sys.path.insert(0, {repo!r})
from torch import nn
from torch.utils.data import TensorDataset
from common.config import TrainerConfig
from common.distributed import gather_shards, rank_world, shard
from common.examples.digits import DigitsModelConfig, MLP, accuracy, load_digits_split, train_digits
from common.trainer import Trainer
RUN, OUT = {run!r}, {out!r}
rank, world = rank_world()
out = {{}}
sgd = lambda lr: (lambda m: torch.optim.SGD(m.parameters(), lr=lr))

# 1. digits under DDP (the test compares the weights with one process)
cfg = TrainerConfig(max_epochs=2, batch_size=64, progress_bar=False, seed=3)
model, _ = train_digits(cfg, RUN + "/digits", DigitsModelConfig(lr=0.05))
if rank == 0:
    torch.save(model.state_dict(), OUT + "/digits.pt")

# 2. shard / gather_shards
mine = shard(list(range(11)))
out["shard"] = {{"mine": mine, "back": gather_shards([x * x for x in mine], 11)}}

# 3. per-rank seeds: each rank's dropout masks and rows
class Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.rows, self.masks = nn.Linear(1, 1), [], []
    def forward(self, x):
        self.rows.append(x[:, 0].long().tolist())
        self.masks.append(nn.functional.dropout(torch.ones(32), 0.5, self.training).tolist())
        return self.lin(x)
probe = Probe()
small = TrainerConfig(max_epochs=2, batch_size=4, progress_bar=False, seed=5)
Trainer(small, RUN + "/probe").fit(probe, TensorDataset(torch.arange(10.0)[:, None]),
                                   lambda m, b: m(b[0]).pow(2).mean(), optimizer_fn=sgd(0.01))
out["probe"] = {{"rows": probe.rows, "masks": probe.masks}}

# 4. BatchNorm: each rank normalises its own rows (SyncBatchNorm is CUDA-only: on CPU it is refused)
torch.manual_seed(0)
bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
Trainer(replace(small, max_steps=1, batch_size=8), RUN + "/bn").fit(
    bn, TensorDataset(x), lambda m, b: m(b[0]).pow(2).mean(), optimizer_fn=sgd(0.0))
out["bn"] = {{"mean": bn[1].running_mean.tolist()}}
try:
    Trainer(replace(small, sync_batchnorm=True), RUN + "/sync")
    out["sync"] = "accepted"
except ValueError as e:
    out["sync"] = str(e)

# 5. eval_sharded: each rank scores its shard, the gathered metric is the whole set's
train, val = load_digits_split()
seen = []
def sharded_acc(m):
    xv, yv = val.tensors
    idx = shard(list(range(len(yv))))
    seen.append(len(idx))
    preds = gather_shards(m(xv[idx]).argmax(-1).tolist(), len(yv))
    return {{"acc": float((torch.tensor(preds) == yv).float().mean())}}
torch.manual_seed(0)
mlp = MLP()
res = Trainer(replace(cfg, max_epochs=1, monitor="acc"), RUN + "/eval").fit(
    mlp, train, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), optimizer_fn=sgd(0.1),
    eval_fn=sharded_acc, eval_sharded=True, eval_metrics=("acc",))
out["eval"] = {{"seen": seen, "gathered": res.last_metrics["acc"], "whole": accuracy(mlp, val)}}

# 6. a model with a branch the loss never uses: trains with find_unused_parameters, fails without
class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(1, 1), nn.Linear(1, 1)
    def forward(self, x):
        return self.used(x)
data = TensorDataset(torch.arange(16.0)[:, None])
r = Trainer(replace(small, max_steps=3, find_unused_parameters=True), RUN + "/unused").fit(
    Unused(), data, lambda m, b: m(b[0]).pow(2).mean(), optimizer_fn=sgd(0.001))
out["unused_steps"] = r.step
try:
    Trainer(replace(small, max_steps=3), RUN + "/unused_off").fit(
        Unused(), data, lambda m, b: m(b[0]).pow(2).mean(), optimizer_fn=sgd(0.001))
    out["unused_off"] = "trained"
except RuntimeError as e:
    out["unused_off"] = str(e)
with open(OUT + f"/rank{{rank}}.json", "w") as f:
    json.dump(out | {{"world": world}}, f)
"""


def test_torchrun_two_gloo_ranks(tmp_path):
    """One 2-process torchrun run (gloo) checks the distributed groundwork against one process: DDP
    training matches, shard/gather_shards restore the order, ranks draw different dropout masks from the
    same data order, BatchNorm sees each rank's rows (sync_batchnorm is refused on CPU in one line),
    eval_sharded gathers the whole set's metric, and find_unused_parameters is what lets a model with an
    unused branch train."""
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_SCRIPT.format(repo=str(REPO), run=str(tmp_path / "runs"), out=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    # the single-process references, while the two ranks run
    one, _ = train_digits(TrainerConfig(max_epochs=2, batch_size=64, progress_bar=False, seed=3),
                          tmp_path / "one", DigitsModelConfig(lr=0.05))
    small = TrainerConfig(max_epochs=2, batch_size=4, progress_bar=False, seed=5)
    global_batches = [b for e in (0, 1) for b in Trainer(small, tmp_path / "order")._epoch_batches(10, e)]
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["world"] == 2

    ddp = torch.load(tmp_path / "digits.pt")
    for k, v in one.state_dict().items():
        torch.testing.assert_close(v, ddp[k], rtol=1e-4, atol=1e-5)

    assert got[0]["shard"]["mine"] == [0, 2, 4, 6, 8, 10] and got[1]["shard"]["mine"] == [1, 3, 5, 7, 9]
    assert got[0]["shard"]["back"] == got[1]["shard"]["back"] == [x * x for x in range(11)]

    for r in (0, 1):  # each rank's rows are its stride of the single-process global batches
        assert got[r]["probe"]["rows"] == [b[r::2] for b in global_batches]
    assert all(m0 != m1 for m0, m1 in zip(got[0]["probe"]["masks"], got[1]["probe"]["masks"]))

    # rank 0's statistics are those of its 4 rows only; SyncBatchNorm (CUDA) would make them the 8 rows'
    rank0 = Trainer(replace(small, batch_size=8), tmp_path / "order")._epoch_batches(8, 0)[0][0::2]
    xr = bn[0](x[rank0]).detach()
    torch.testing.assert_close(torch.tensor(got[0]["bn"]["mean"]), 0.1 * xr.mean(0))
    assert "sync_batchnorm=true needs CUDA" in got[0]["sync"]

    assert [g["eval"]["seen"] for g in got] == [[149], [148]]  # 297 validation images, strided
    assert got[0]["eval"]["gathered"] == got[0]["eval"]["whole"] == got[1]["eval"]["gathered"]

    assert got[0]["unused_steps"] == 3
    assert "unused" in got[0]["unused_off"] or "not used" in got[0]["unused_off"], got[0]["unused_off"]


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
