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

import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A shared option holds a value the core cannot run with; the message names the option, the value and
    what to use instead (printed as one line by ``common.hydra_utils.report_user_errors``)."""


# The closed choices of TrainerConfig. The fields stay typed ``str`` on purpose: OmegaConf would reject an
# unknown enum value while composing, with a multi-line message and no reason; check_trainer_config names
# the option, the allowed values and (for fp16) why, in one line, before anything is loaded.
class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class MonitorMode(StrEnum):
    MAX = "max"
    MIN = "min"


@dataclass
class TrainerConfig:
    """Options of ``common.trainer.Trainer`` (and of the custom loops where they apply)."""

    seed: int = 0
    """Seeds python, numpy and torch; also the seed of the data order (epoch e uses seed + e)."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu or cuda (:class:`Device`; cuda without a visible CUDA
    device is refused before anything is loaded)."""
    precision: str = "fp32"
    """fp32, or bf16 autocast (on CPU and CUDA; master weights stay fp32) (:class:`Precision`). fp16 is
    refused: it needs dynamic loss scaling (a GradScaler) against gradient underflow, which the Trainer does
    not do; bf16 saves the same memory with fp32's exponent range."""
    max_epochs: int | None = 1
    """Stop after this many epochs (null: no epoch limit)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (null: no step limit). The earlier of the two limits wins."""
    batch_size: int = 32
    """Global batch per optimizer micro-step; split over ranks under torchrun."""
    eval_batch_size: int | None = None
    """Batch size for evaluation (null: batch_size)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated into one optimizer step. Each micro-batch loss is divided by the size of
    its group, so the last group of an epoch (fewer micro-batches when they do not divide evenly) gets the
    same weight per micro-batch as the others."""
    drop_last: bool = False
    """Drop every epoch's last global batch when it is smaller than batch_size (as DataLoader's
    drop_last). Even when false, a last batch too small to train on is dropped: one with fewer than 2 rows
    per rank when the model holds a BatchNorm layer (its batch statistics need 2 values per channel), or
    fewer than 1 row per rank under torchrun (every rank must take part in every step)."""
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
    """Validation metric that selects best.pt and drives early stopping (null: last epoch is best). It must
    be a key of what the eval_fn returns; this is checked before the first training step."""
    monitor_mode: str = "max"
    """max or min: whether a larger monitored value is better (:class:`MonitorMode`)."""
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
    the batch (ignored in a single process). CUDA only: torch's SyncBatchNorm has no CPU implementation, so
    a CPU run under torchrun refuses it."""


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


# Keys whose value may differ between runs that share a folder: a multirun subfolder does not depend on
# them (re-running a sweep with resume=auto, a longer budget or another output root finds the same
# folders), and resume=auto accepts a change of them (see RESUME_MAY_CHANGE).
MULTIRUN_EXCLUDE_KEYS: tuple[str, ...] = (
    "resume", "trust_checkpoint", "paths.output_dir", "paths.data_dir", "trainer.progress_bar", "trainer.max_steps",
    "trainer.max_epochs", "trainer.num_threads", "launcher")

# What resume=auto lets change against the config a run was trained with (dotted keys, fnmatch patterns):
# the budget, where files live, how much is shown, and settings that do not touch the trained weights: the
# metric sinks, how often metrics are written and checkpoints taken, how many are kept, and the device
# (continuing a CPU run on a GPU is a reason to resume; the run is then no longer bit-identical to an
# uninterrupted one). Any other difference is refused (common.checkpoint.check_resume).
RESUME_MAY_CHANGE: tuple[str, ...] = MULTIRUN_EXCLUDE_KEYS + (
    "logger.*", "paths.reports_dir", "trainer.log_every_steps", "trainer.checkpoint_every_steps",
    "trainer.keep_last_checkpoints", "trainer.device")

# Merged at the config root: a stable run directory (so resume=auto finds it), the resume switch and the
# trust_checkpoint switch.
# `output_subdir: null` stops Hydra from writing <run_dir>/.hydra/*.yaml before the task starts:
# common.hydra_utils.report_user_errors writes the same three files itself, after the run was validated,
# so that a refused run (resume=never on a finished run, a bad option) leaves the folder untouched.
RUN_LAYOUT: dict[str, Any] = {
    "defaults": [{"launcher": None}, "_self_"],  # launcher=local|slurm: common.launch
    "name": "run",  # every package sets its own; experiment files set theirs
    "resume": "never",
    # true: checkpoints and weight files may be fully unpickled (which can run code in them); only for
    # files you made yourself. false: they load as plain weights, or are refused (common.checkpoint).
    "trust_checkpoint": False,
    "hydra": {
        "callbacks": {"rank_zero_writes": {"_target_": "common.launch.RankZeroWrites"}},  # torchrun
        "run": {"dir": "${paths.output_dir}/${name}"},
        "sweep": {"dir": "${paths.output_dir}/${name}/multirun", "subdir": "${hydra:job.override_dirname}"},
        "output_subdir": None,
        "job": {"chdir": False,
                "config": {"override_dirname": {"exclude_keys": list(MULTIRUN_EXCLUDE_KEYS)}}},
    },
}


def _allowed(name: str, value: Any, choices: type[StrEnum]) -> None:
    if value not in {c.value for c in choices}:
        raise ConfigError(f"trainer.{name}={value} is not one of {', '.join(c.value for c in choices)}")


def check_trainer_config(cfg: Any) -> None:
    """Raise :class:`ConfigError` (one line) when a shared trainer option cannot run here.

    ``cfg`` is a :class:`TrainerConfig` or anything with its attributes (an OmegaConf node). Called by the
    Hydra shells before any data or model is loaded (``common.hydra_utils.report_user_errors``) and again by
    ``Trainer`` for library callers. Types are OmegaConf's job; this checks values: the closed choices, the
    ranges, a CUDA device when cuda (or SyncBatchNorm under torchrun) is asked for, and that the batch splits
    over the torchrun ranks.
    """
    if cfg.precision == "fp16":
        raise ConfigError("trainer.precision=fp16 is not supported: fp16 needs dynamic loss scaling (a "
                          "GradScaler) against gradient underflow, which the Trainer does not do; use "
                          "trainer.precision=bf16 (the same memory, fp32's exponent range, no scaling) or fp32")
    _allowed("precision", cfg.precision, Precision)
    _allowed("device", cfg.device, Device)
    _allowed("monitor_mode", cfg.monitor_mode, MonitorMode)
    at_least = {"batch_size": 1, "grad_accum_steps": 1, "log_every_steps": 1, "keep_last_checkpoints": 1,
                "num_workers": 0}
    at_least_or_null = {"max_epochs": 1, "max_steps": 1, "eval_batch_size": 1, "eval_every_steps": 1,
                        "checkpoint_every_steps": 1, "early_stopping_patience": 1, "num_threads": 1}
    for name, low in at_least.items():
        if getattr(cfg, name, low) < low:
            raise ConfigError(f"trainer.{name}={getattr(cfg, name)} must be >= {low}")
    for name, low in at_least_or_null.items():
        if getattr(cfg, name, None) is not None and getattr(cfg, name) < low:
            raise ConfigError(f"trainer.{name}={getattr(cfg, name)} must be >= {low} (or null)")
    if cfg.clip_grad_norm is not None and not cfg.clip_grad_norm > 0:
        raise ConfigError(f"trainer.clip_grad_norm={cfg.clip_grad_norm} must be > 0 (or null: no clipping)")
    if cfg.max_epochs is None and cfg.max_steps is None:
        raise ConfigError("set trainer.max_epochs or trainer.max_steps (both are null)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.batch_size % world:
        raise ConfigError(f"trainer.batch_size={cfg.batch_size} must divide by the number of torchrun "
                          f"processes (WORLD_SIZE={world})")
    if cfg.device == "cuda" or (world > 1 and getattr(cfg, "sync_batchnorm", False)):
        import torch  # only here: the Hydra shells validate before their heavy imports

        cuda = torch.cuda.is_available()
        if cfg.device == "cuda" and not cuda:
            raise ConfigError("trainer.device=cuda but this machine has no visible CUDA device "
                              "(torch.cuda.is_available() is False); use trainer.device=cpu or auto")
        if cfg.device == "cpu" or not cuda:
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices: torch's SyncBatchNorm runs on "
                              "GPU modules only, and this run is on cpu; leave it false (each rank then "
                              "normalises with its own rows' statistics)")


def register_configs() -> None:
    """Register the shared groups with Hydra. Safe to call more than once."""
    cs = ConfigStore.instance()
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="paths", name="default", node=PathsConfig)
    cs.store(group="logger", name="default", node=LoggerConfig)
    cs.store(name="run_layout", node=RUN_LAYOUT)
    from common.launch import register_launchers  # the `launcher` group run_layout lists

    register_launchers()


register_configs()

__all__ = ["TrainerConfig", "PathsConfig", "LoggerConfig", "register_configs", "RUN_LAYOUT", "field", "ConfigError",
           "Precision", "Device", "MonitorMode", "check_trainer_config", "MULTIRUN_EXCLUDE_KEYS", "RESUME_MAY_CHANGE"]
