"""The plain supervised training loop every supervised package uses.

Read top to bottom: `Trainer.fit` seeds, builds the optimizer and scheduler, resumes if asked, checks that
`trainer.monitor` is a metric the evaluation returns, then runs epochs of micro-batches -> (accumulate) ->
optimizer step -> log / evaluate / checkpoint, until max_epochs, max_steps or early stopping. Everything a
resumed run needs is in the checkpoint, and the data order is a pure function of (seed, epoch), so a run
killed at any step and resumed with `resume=auto` ends bit-identical to an uninterrupted run on CPU, and
its metrics.jsonl holds the same rows (those logged after the checkpoint are dropped and redone).

Under `torchrun` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel, each rank reads a
strided shard of every global batch (like DistributedSampler), and only rank 0 logs and checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from common.checkpoint import (
    CheckpointManager,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    seed_everything,
)
from common.config import ConfigError, check_trainer_config
from common.distributed import init_from_env
from common.logging import MetricLogger, get_logger
from common.progress import progress
from common.runinfo import RunInfo

log = get_logger("common.trainer")


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the last good checkpoint is left untouched."""


@dataclass
class FitResult:
    step: int
    epoch: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] | None = None
    best_checkpoint: Path | None = None
    best_step: int | None = None  # optimizer step of the best evaluation (of the last one without a monitor)
    best_epoch: int | None = None  # epochs completed at that evaluation
    stopped_reason: str = ""
    wall_seconds: float = 0.0  # this call
    # the whole run over every session, as far as its last checkpoint (work a kill threw away is redone
    # and counted once): what the result cost, where wall_seconds after a resume is only the last leg
    wall_seconds_total: float = 0.0


def move_to(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts/lists/tuples to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [move_to(v, device) for v in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)
    return obj


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ConfigError(f"trainer.device must be auto, cpu or cuda, not {name!r}")
    return torch.device("cpu")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer (any dimension, SyncBatchNorm too)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def length_grouped_batches(order: list[int], lengths: Sequence[int], batch_size: int,
                           generator: torch.Generator, window_batches: int = 50) -> list[list[int]]:
    """Cut the shuffled ``order`` into batches of similar length, still in random order.

    The order is split into windows of ``window_batches`` batches; each window is sorted by length
    (longest first, ties kept in shuffled order) and cut into batches; the batches of the epoch are then
    shuffled with ``generator``. Same idea as transformers' ``LengthGroupedSampler``: every example is used
    once per epoch and the batch count is unchanged, but a batch pads to a length close to its members'.
    """
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    # Only the last batch of the last window may be short; keep it last so a rank split sees it as usual.
    full, tail = (batches[:-1], batches[-1:]) if batches and len(batches[-1]) < batch_size else (batches, [])
    perm = torch.randperm(len(full), generator=generator).tolist()
    return [full[i] for i in perm] + tail


class Trainer:
    def __init__(self, cfg, run_dir: str | os.PathLike, *, logger_cfg=None, resume: str | None = "never",
                 config: Mapping | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.config = dict(config) if config is not None else None
        check_trainer_config(cfg)  # the Hydra shells did this already; library callers get it here
        self.rank, self.world_size, local_rank = init_from_env()
        self.is_main = self.rank == 0
        self.device = resolve_device(cfg.device, local_rank)
        # Rows a batch needs to train on (every rank must take part in every step); fit() raises it to 2 per
        # rank for a model with BatchNorm layers.
        self.min_batch_rows = self.world_size
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.ckpt = CheckpointManager(self.run_dir, cfg.keep_last_checkpoints, enabled=self.is_main)
        self.logger_cfg = logger_cfg

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _epoch_batches(self, n: int, epoch: int, lengths: Sequence[int] | None = None) -> list[list[int]]:
        """This rank's micro-batches of epoch ``epoch``: a permutation seeded by (seed, epoch), cut into
        global batches (length-grouped when ``lengths`` is given), each split strided over ranks.

        Only the last global batch can be short; it is dropped with ``trainer.drop_last``, and always when
        it has fewer than ``min_batch_rows`` rows (see ``TrainerConfig.drop_last``)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        b = self.cfg.batch_size
        if lengths is not None:
            batches = length_grouped_batches(order, lengths, b, g)
        else:
            batches = [order[i:i + b] for i in range(0, n, b)]
        least = b if getattr(self.cfg, "drop_last", False) else self.min_batch_rows
        batches = [bt for bt in batches if len(bt) >= least]
        return [bt[self.rank::self.world_size] for bt in batches]

    def _better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if self.cfg.monitor_mode == "max" else value < best

    def load_best(self, model: nn.Module) -> nn.Module:
        """Load best.pt's weights into ``model`` (falls back to the newest step checkpoint)."""
        path = self.ckpt.best_path if self.ckpt.best_path.exists() else self.ckpt.latest()
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {self.ckpt.dir}")
        model.load_state_dict(load_checkpoint(path)["model"])
        return model

    # ------------------------------------------------------------------ the loop
    def fit(self, model: nn.Module, train_data: Dataset, loss_fn: Callable, *, optimizer_fn: Callable,
            scheduler_fn: Callable | None = None, eval_fn: Callable | None = None,
            collate_fn: Callable | None = None, lengths: Sequence[int] | None = None,
            eval_sharded: bool = False, eval_metrics: Collection[str] | None = None) -> FitResult:
        """Train ``model``; ``lengths`` (one per example, e.g. token counts) turns on length-grouped
        batches (see ``length_grouped_batches``), which cut padding when lengths vary a lot.

        ``eval_fn(model)`` returns a dict of metrics. By default it runs on rank 0 only and its metrics are
        broadcast; with ``eval_sharded=True`` it runs on every rank and must shard its data itself with
        ``common.distributed.shard`` / ``gather_shards`` (so it returns the same metrics everywhere).

        ``trainer.monitor`` must be one of those metrics, which is checked before the first step: against
        ``eval_metrics`` (the names eval_fn returns) when given, else against the metrics a resumed
        checkpoint holds, else by calling eval_fn once (RNG state restored after it, nothing logged), so
        a typo costs one evaluation instead of an epoch."""
        cfg, t_start = self.cfg, time.time()
        if lengths is not None and len(lengths) != len(train_data):
            raise ValueError(f"lengths has {len(lengths)} entries for {len(train_data)} training examples")
        # The global RNG (dropout, augmentation) gets a per-rank seed so that ranks draw different masks;
        # the data order stays a function of (seed, epoch) alone, and DDP broadcasts rank 0's initial weights.
        seed_everything(cfg.seed + self.rank)
        if self.world_size > 1 and cfg.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        optimizer = optimizer_fn(model)
        # one row per rank cannot train a BatchNorm layer (its batch statistics need 2 values per channel)
        self.min_batch_rows = self.world_size * (2 if has_batchnorm(model) else 1)
        n_micro = len(self._epoch_batches(len(train_data), 0, lengths))
        if n_micro == 0:
            raise ConfigError(f"{len(train_data)} training examples make no batch of at least "
                              f"{self.min_batch_rows} rows with trainer.batch_size={cfg.batch_size}"
                              f"{' and trainer.drop_last=true' if getattr(cfg, 'drop_last', False) else ''}")
        steps_per_epoch = math.ceil(n_micro / cfg.grad_accum_steps)
        limits = [x for x in (cfg.max_steps, cfg.max_epochs and cfg.max_epochs * steps_per_epoch) if x]
        total_steps = min(limits)
        scheduler = scheduler_fn(optimizer, total_steps) if scheduler_fn else None

        # Counters that a checkpoint restores. `micro` = micro-batches of `epoch` already consumed.
        # `window_loss`: the step losses since the last train/loss row (so a resumed run logs the same rows).
        st = {"step": 0, "epoch": 0, "micro": 0, "best_value": None, "bad_evals": 0,
              "best_metrics": None, "last_metrics": {}, "stopped_reason": "", "best_step": None,
              "best_epoch": None, "wall_seconds": 0.0, "window_loss": []}
        ckpt_path = self.ckpt.resolve_resume(self.resume)
        legacy_wall = False
        if ckpt_path is not None:
            ck = load_checkpoint(ckpt_path, map_location=self.device)
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            if scheduler is not None and ck.get("scheduler") is not None:
                scheduler.load_state_dict(ck["scheduler"])
            restore_rng_state(ck["rng"])
            st.update(ck["trainer_state"])
            legacy_wall = "wall_seconds" not in ck["trainer_state"]  # written before the wall was kept
            log.info("resumed from %s (step %d, epoch %d)", ckpt_path, st["step"], st["epoch"])
        wall_before, t_leg = st["wall_seconds"], time.time()  # training wall of the earlier sessions

        def run_eval() -> dict[str, float]:
            """eval_fn's metrics, the same on every rank."""
            model.eval()
            runs_here = self.is_main or eval_sharded
            if eval_sharded and self.world_size > 1:  # each rank's last forward moved its own BatchNorm
                for buf in model.buffers():            # statistics: all evaluate rank 0's model, as saved
                    dist.broadcast(buf, src=0)
            with torch.no_grad(), self.autocast():
                metrics = {k: float(v) for k, v in eval_fn(model).items()} if runs_here else {}
            model.train()
            if self.world_size > 1:  # rank 0's metrics everywhere, so every rank takes the same decisions
                box = [metrics]
                dist.broadcast_object_list(box, src=0)
                metrics = box[0]
            return metrics

        def check_monitor(names: Collection[str], source: str) -> None:
            if cfg.monitor is not None and cfg.monitor not in names:
                raise ConfigError(f"trainer.monitor={cfg.monitor} is not a metric {source} "
                                  f"({', '.join(sorted(names)) or 'none'})")

        if cfg.monitor is not None and eval_fn is not None:
            if eval_metrics is not None:
                check_monitor(eval_metrics, "the evaluation returns")
            elif st["last_metrics"] or st["best_metrics"]:
                check_monitor(st["last_metrics"] or st["best_metrics"], "of this run's evaluations")
            else:  # one evaluation now, rather than a whole epoch of training before the first one
                rng = capture_rng_state()
                check_monitor(run_eval(), "the evaluation returns")
                restore_rng_state(rng)

        net = model
        if self.world_size > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters)
        # rows an earlier session logged after this checkpoint are dropped: this session logs them again
        logger = MetricLogger(self.run_dir, jsonl=getattr(self.logger_cfg, "jsonl", True),
                              tensorboard=getattr(self.logger_cfg, "tensorboard", True), enabled=self.is_main,
                              start_step=st["step"])
        run_info = RunInfo(self.run_dir, {"config": self.config} if self.config else None, enabled=self.is_main)
        if legacy_wall and self.is_main:  # the best such a checkpoint allows: sessions that ended normally
            wall_before = sum(s.get("wall_seconds", 0.0) for s in run_info.data["sessions"][:-1])

        def checkpoint_state() -> dict:
            st["wall_seconds"] = wall_before + time.time() - t_leg
            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": capture_rng_state(), "trainer_state": dict(st), "config": self.config,
                    "step": st["step"], "epoch": st["epoch"]}

        def save() -> None:
            self.ckpt.save(st["step"], checkpoint_state())
            if self.world_size > 1:
                dist.barrier()

        def evaluate() -> bool:
            """Run eval_fn, track the best, return True when early stopping says stop."""
            if eval_fn is None:
                return False
            metrics = run_eval()
            st["last_metrics"] = metrics
            logger.log(st["step"], {f"val/{k}": v for k, v in metrics.items()} | {"epoch": st["epoch"]})
            if cfg.monitor is None:
                st.update(best_metrics=metrics, best_step=st["step"], best_epoch=st["epoch"])
                return False
            check_monitor(metrics, "the evaluation returns")
            if self._better(metrics[cfg.monitor], st["best_value"]):
                st.update(best_value=metrics[cfg.monitor], bad_evals=0, best_metrics=metrics, best_step=st["step"],
                          best_epoch=st["epoch"])
                self.ckpt.save_best(checkpoint_state())
            else:
                st["bad_evals"] += 1
            patience = cfg.early_stopping_patience
            return patience is not None and st["bad_evals"] >= patience

        bar = progress(total=total_steps, initial=st["step"], desc=f"train {self.run_dir.name}",
                       enabled=cfg.progress_bar, unit="step")
        net.train()
        window_items, t_window = 0, time.time()
        done = st["step"] >= total_steps or st["stopped_reason"] == "early_stopping"
        while not done:
            batches = self._epoch_batches(len(train_data), st["epoch"], lengths)
            # A DataLoader draws its workers' base seed from `generator`; with the default (the global RNG)
            # a loader rebuilt on resume would shift every later random draw (dropout, augmentation).
            loader_rng = torch.Generator().manual_seed(cfg.seed * 100_003 + st["epoch"] + 7)
            loader = DataLoader(train_data, batch_sampler=batches[st["micro"]:], num_workers=cfg.num_workers,
                                collate_fn=collate_fn or default_collate, generator=loader_rng)
            optimizer.zero_grad(set_to_none=True)
            accum_loss, accum_n, extra = 0.0, 0, {}
            for batch in loader:
                # Groups of grad_accum_steps micro-batches from the epoch's start (a checkpoint is always at
                # a group boundary); the last group may be shorter. Each micro-batch loss is divided by the
                # size of its own group, so the update is the mean over the micro-batches it holds.
                group_start = st["micro"] - st["micro"] % cfg.grad_accum_steps
                group_size = min(cfg.grad_accum_steps, len(batches) - group_start)
                st["micro"] += 1
                accum_n += 1
                last_of_epoch = st["micro"] == len(batches)
                stepping = accum_n == group_size
                sync = nullcontext() if (stepping or self.world_size == 1) else net.no_sync()
                batch = move_to(batch, self.device)
                with sync:
                    with self.autocast():
                        out = loss_fn(net, batch)
                    loss = out["loss"] if isinstance(out, Mapping) else out
                    (loss / group_size).backward()
                accum_loss += float(loss.detach())
                window_items += len(batches[st["micro"] - 1]) * self.world_size
                if isinstance(out, Mapping):
                    extra = {k: float(v) for k, v in out.items() if k != "loss"}
                if not stepping:
                    continue

                # ---- optimizer step: NaN guard, clipping, update
                grad_norm = None
                if cfg.clip_grad_norm is not None:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm))
                step_loss = accum_loss / accum_n
                bad = torch.tensor(float(not math.isfinite(step_loss) or
                                         (grad_norm is not None and not math.isfinite(grad_norm))))
                if self.world_size > 1:
                    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
                if bad.item() > 0:
                    logger.close()
                    bar.close()
                    raise NonFiniteLossError(
                        f"non-finite loss ({step_loss}) or gradient norm ({grad_norm}) at step {st['step'] + 1}, "
                        f"epoch {st['epoch']}; nothing was saved from this step. Last good checkpoint: "
                        f"{self.ckpt.latest()}. Try a lower learning rate, trainer.clip_grad_norm or "
                        "trainer.precision=fp32.")
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                st["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", epoch=st["epoch"], refresh=False)
                st["window_loss"].append(step_loss)
                accum_loss, accum_n = 0.0, 0

                at_epoch_end = last_of_epoch
                if at_epoch_end:
                    st["epoch"], st["micro"] = st["epoch"] + 1, 0
                if st["step"] % cfg.log_every_steps == 0 or at_epoch_end:
                    dt = max(time.time() - t_window, 1e-9)
                    logger.log(st["step"], {"train/loss": sum(st["window_loss"]) / len(st["window_loss"]),
                                            "train/lr": optimizer.param_groups[0]["lr"],
                                            "train/samples_per_s": window_items / dt, "epoch": st["epoch"],
                                            **({"train/grad_norm": grad_norm} if grad_norm is not None else {}),
                                            **{f"train/{k}": v for k, v in extra.items()}})
                    st["window_loss"], window_items, t_window = [], 0, time.time()
                eval_due = (st["step"] % cfg.eval_every_steps == 0) if cfg.eval_every_steps else at_epoch_end
                stop = evaluate() if eval_due else False
                reached = st["step"] >= total_steps
                if stop:
                    st["stopped_reason"] = "early_stopping"
                elif reached:
                    st["stopped_reason"] = "max_steps" if cfg.max_steps == total_steps else "max_epochs"
                every = cfg.checkpoint_every_steps
                if at_epoch_end or stop or reached or (every and st["step"] % every == 0):
                    save()
                if stop or reached:
                    done = True
                    break
        bar.close()
        if not st["last_metrics"] and eval_fn is not None:
            evaluate()  # e.g. max_steps hit between eval points: report final metrics
            save()  # with them, so that resuming the finished run neither re-evaluates nor logs them twice
        logger.close()
        wall = time.time() - t_start
        run_info.finish(final_step=st["step"], stopped_reason=st["stopped_reason"])
        best_ckpt = self.ckpt.best_path if self.ckpt.best_path.exists() else None
        return FitResult(step=st["step"], epoch=st["epoch"], last_metrics=st["last_metrics"],
                         best_metrics=st["best_metrics"], best_checkpoint=best_ckpt,
                         best_step=st.get("best_step"), best_epoch=st.get("best_epoch"),
                         stopped_reason=st["stopped_reason"], wall_seconds=wall,
                         wall_seconds_total=wall_before + time.time() - t_leg)
