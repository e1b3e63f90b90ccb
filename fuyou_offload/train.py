"""Hydra shell: ``python -m fuyou_offload.train [schedule=...] [model=...] [experiment=...] key=value``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout in Hydra's ConfigStore)
from common.hydra_utils import report_user_errors, run_dir_from
from fuyou_offload.training import run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> None:
    run(cfg, run_dir_from(cfg))


if __name__ == "__main__":
    main()
