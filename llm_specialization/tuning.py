"""The training protocol of the trained rungs (R4 prompt tuning, R5 LoRA, R6 full fine-tuning).

One protocol for all three, so that their ranking says something about the methods rather than about one
untuned setting each:

1. **Step-matched budget**: every run takes ``steps`` optimizer steps of the same effective batch, whatever
   the number of training documents n (n = 256: 3 epochs at 48 steps of 16; n = 64: 12 epochs).
2. **Schedule**: linear warm-up over ``warmup_fraction`` of the steps, then cosine (or linear) decay to 0.
3. **Dev-selected checkpoints**: the reduced dev set (:func:`llm_specialization.data.fixed_dev_subset`) is
   scored every ``eval_every_steps``; the best dev accuracy selects the checkpoint that is tested.
4. **Learning-rate sweep**: every rate of the rung's grid (>= 4, log-spaced) trains once (first seed,
   n = ``sweep_shots``) and is scored on the reduced dev set only; the best dev accuracy (then dev macro-F1,
   then the smaller rate) is chosen, and its run is reused as that seed's final run.
5. **Seeds**: the chosen rate then trains with every seed at every n in ``shots``; a seed changes the
   balanced training sample, the adapter initialisation and the data order. Each final run is tested on the
   fixed test subset once.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path

import torch

from common.config import TrainerConfig
from common.distributed import barrier, is_main_process
from common.schedules import linear_warmup_decay
from llm_specialization.config import LR_GRID


@dataclass
class TrainingProtocol:
    """How R4-R6 train and which runs make up a rung's result (see the module docstring)."""

    steps: int = 48
    """Optimizer steps of every run (48 = 256 documents x 3 epochs / effective batch 16)."""
    warmup_fraction: float = 0.1
    """Linear warm-up over this fraction of the steps."""
    schedule: str = "cosine"
    """Decay after warm-up: cosine | linear (both to 0)."""
    eval_every_steps: int = 24
    """Score the reduced dev set every this many steps (and select the best checkpoint)."""
    dev_docs: int = 96
    """Documents of the reduced dev set (stratified like the test subset)."""
    shots: tuple[int, ...] = (64, 256)
    """Training documents n of the final runs (class-balanced: n / 8 per class)."""
    sweep_shots: int = 256
    """n of the learning-rate sweep."""
    seeds: int = 3
    """Seeds of the final runs at the chosen rate (base seed, base seed + 1, ...)."""
    lr_grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(LR_GRID))
    """Learning rates swept per method (one value: no sweep)."""
    keep_checkpoints: bool = False
    """Keep every run's checkpoints (a full fine-tuning run holds ~5 GB of them); false deletes a run's
    checkpoints once its result is stored (the metrics logs stay)."""

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be cosine or linear, not {self.schedule!r}")
        if self.steps < 1 or self.eval_every_steps < 1 or self.seeds < 1 or self.dev_docs < 1:
            raise ValueError("steps, eval_every_steps, seeds and dev_docs must be at least 1")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        for method, grid in self.lr_grid.items():
            if not grid or any(lr <= 0 for lr in grid):
                raise ValueError(f"lr_grid.{method} must hold positive learning rates, got {list(grid)}")
        self.shots = tuple(self.shots)
        self.lr_grid = {k: tuple(float(x) for x in v) for k, v in self.lr_grid.items()}

    def key(self) -> dict:
        """The whole protocol but keep_checkpoints (reported beside the results)."""
        d = asdict(self)
        d.pop("keep_checkpoints")
        return d

    def run_key(self) -> dict:
        """What changes one training run's result besides its method, n, rate and seed: more seeds, shots or
        rates in a later run reuse the runs already stored."""
        return {k: getattr(self, k) for k in ("steps", "warmup_fraction", "schedule", "eval_every_steps", "dev_docs")}


def warmup_cosine_decay(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base rate over ``warmup_steps``, then a half cosine down to 0 at
    ``total_steps`` (the factors of transformers' ``get_cosine_schedule_with_warmup``, tested)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scheduler_fn(protocol: TrainingProtocol):
    """The Trainer's ``scheduler_fn(optimizer, total_steps)`` for the protocol's schedule."""
    build = warmup_cosine_decay if protocol.schedule == "cosine" else linear_warmup_decay

    def make(optimizer, total_steps: int):
        return build(optimizer, int(protocol.warmup_fraction * total_steps), total_steps)

    return make


def trainer_config(base, protocol: TrainingProtocol, seed: int) -> TrainerConfig:
    """The shared trainer settings (batch, accumulation, clipping, threads, ...) with the protocol's budget,
    dev monitor and seed; ``base`` is a TrainerConfig or Hydra's ``trainer`` node. trainer.max_epochs and
    max_steps are replaced by ``protocol.steps``."""
    d = asdict(base) if is_dataclass(base) else {k: base[k] for k in base}
    return replace(TrainerConfig(**d), max_steps=protocol.steps, max_epochs=None,
                   eval_every_steps=protocol.eval_every_steps, monitor="dev_accuracy", monitor_mode="max",
                   early_stopping_patience=None, seed=seed)


def select_lr(records: dict[float, dict]) -> float:
    """The rate with the best dev accuracy, then dev macro-F1, then the smaller rate (``records``: rate ->
    the sweep run's best dev metrics)."""
    return max(records, key=lambda lr: (records[lr]["dev_accuracy"], records[lr]["dev_macro_f1"], -lr))


def run_name(method: str, n: int, lr: float, seed: int) -> str:
    return f"{method}/n{n}_lr{lr:g}_seed{seed}"


def drop_checkpoints(run_dir: Path, keep_best: bool = False) -> None:
    """Free the disk a finished run's checkpoints hold (rank 0; metrics.jsonl and run_info.json stay)."""
    barrier()
    folder = Path(run_dir) / "checkpoints"
    if is_main_process() and folder.is_dir():
        if keep_best:
            for p in folder.glob("step_*.pt"):
                p.unlink()
        else:
            shutil.rmtree(folder)
    barrier()
