"""Hydra shell: ``python -m fuyou_offload.train [schedule=...] [model=...] [experiment=...] key=value``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout in Hydra's ConfigStore)
from common.hydra_utils import report_user_errors, run_dir_from
from fuyou_offload.engine import NonFiniteGradientError, StateCorruptError
from fuyou_offload.memory import HostBudgetError
from fuyou_offload.storage import OffloadStorageError
from fuyou_offload.training import run

# Errors of the user's setup (budget, disk, corrupt state, diverged step): one line, exit status 1.
OFFLOAD_ERRORS = (HostBudgetError, OffloadStorageError, StateCorruptError, NonFiniteGradientError)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> None:
    try:
        run(cfg, run_dir_from(cfg))
    except OFFLOAD_ERRORS as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
