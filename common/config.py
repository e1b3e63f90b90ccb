"""Structured configs shared by every package, registered in Hydra's ConfigStore.

Packages compose them in their own ``conf/config.yaml``::

    defaults:
      - run_layout
      - trainer: default
      - paths: default
      - logger: default
      - _self_

The dataclasses are plain Python too: library code takes a ``TrainerConfig`` (or any object with the
same attributes, such as an OmegaConf node) and never needs Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TrainerConfig:
    """Options of ``common.trainer.Trainer`` (and of the custom loops where they apply)."""

    seed: int = 0
    """Seeds python, numpy and torch; also the seed of the data order (epoch e uses seed + e)."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu or cuda."""
    precision: str = "fp32"
    """fp32, or bf16 autocast (on CPU and CUDA; master weights stay fp32)."""
    max_epochs: int | None = 1
    """Stop after this many epochs (null: no epoch limit)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (null: no step limit). The earlier of the two limits wins."""
    batch_size: int = 32
    """Global batch per optimizer micro-step; split over ranks under torchrun."""
    eval_batch_size: int | None = None
    """Batch size for evaluation (null: batch_size)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    clip_grad_norm: float | None = None
    """Clip the global gradient L2 norm to this value (null: no clipping)."""
    log_every_steps: int = 10
    """Write training metrics every N optimizer steps."""
    eval_every_steps: int | None = None
    """Evaluate every N optimizer steps (null: at the end of every epoch)."""
    checkpoint_every_steps: int | None = None
    """Checkpoint every N optimizer steps, in addition to the end of every epoch (null: epochs only)."""
    keep_last_checkpoints: int = 2
    """How many step checkpoints to keep (best.pt is kept apart)."""
    monitor: str | None = None
    """Validation metric that selects best.pt and drives early stopping (null: last epoch is best)."""
    monitor_mode: str = "max"
    """max or min: whether a larger monitored value is better."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations without improvement of ``monitor`` (null: never)."""
    num_workers: int = 0
    """DataLoader worker processes (0 keeps runs bit-reproducible and light on 2 cores)."""
    num_threads: int | None = None
    """torch.set_num_threads for this run (null: leave torch's default)."""
    progress_bar: bool = True
    """Show a tqdm bar with rate and ETA (rank 0 only)."""
    find_unused_parameters: bool = False
    """Under torchrun: DDP's find_unused_parameters, for models whose loss leaves some parameters unused
    in a step (costs an extra graph traversal per step; ignored in a single process)."""
    sync_batchnorm: bool = False
    """Under torchrun: convert BatchNorm layers to SyncBatchNorm so statistics span every rank's shard of
    the batch (ignored in a single process)."""


@dataclass
class PathsConfig:
    """Where data is read from and runs are written to."""

    data_dir: str | None = None
    """Data root. null: $PAPERS_DATA_DIR, then ./data, then ../shared/data (see common.data)."""
    output_dir: str = "runs"
    """Parent of every run directory; a run lives in <output_dir>/<name>."""
    reports_dir: str = "reports"
    """Where reproduce scripts write <pkg>/report.md, results.json and plots."""


@dataclass
class LoggerConfig:
    """Metric sinks; text logs always go to the console."""

    jsonl: bool = True
    """Append every logged metric dict to <run_dir>/metrics.jsonl."""
    tensorboard: bool = True
    """Write TensorBoard scalars to <run_dir>/tb."""


# Merged at the config root: a stable run directory (so resume=auto finds it), the resume switch and the
# trust_checkpoint switch.
RUN_LAYOUT: dict[str, Any] = {
    "name": "run",  # every package sets its own; experiment files set theirs
    "resume": "never",
    # true: checkpoints and weight files may be fully unpickled (which can run code in them); only for
    # files you made yourself. false: they load as plain weights, or are refused (common.checkpoint).
    "trust_checkpoint": False,
    "hydra": {
        "run": {"dir": "${paths.output_dir}/${name}"},
        "sweep": {"dir": "${paths.output_dir}/${name}/multirun", "subdir": "${hydra:job.override_dirname}"},
        "job": {"chdir": False,
                # Multirun subfolders must not depend on these, so that re-running a sweep with resume=auto
                # (or a longer budget, or another output root) finds the same folders.
                "config": {"override_dirname": {"exclude_keys": [
                    "resume", "trust_checkpoint", "paths.output_dir", "paths.data_dir",
                    "trainer.progress_bar", "trainer.max_steps", "trainer.max_epochs",
                    "trainer.num_threads"]}}},
    },
}


def register_configs() -> None:
    """Register the shared groups with Hydra. Safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="paths", name="default", node=PathsConfig)
    cs.store(group="logger", name="default", node=LoggerConfig)
    cs.store(name="run_layout", node=RUN_LAYOUT)


register_configs()

__all__ = ["TrainerConfig", "PathsConfig", "LoggerConfig", "register_configs", "RUN_LAYOUT", "field"]
