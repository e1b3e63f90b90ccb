"""Hydra shell: train (calibrate) LPIPS on 2AFC judgments.

    python -m lpips_metric.train                                   # lin on ImageNet alex (needs cached weights)
    python -m lpips_metric.train experiment=lin_random_trunk      # lin on a random trunk, synthetic data
    python -m lpips_metric.train model=scratch name=lpips_scratch resume=auto
    python -m lpips_metric.train data=bapps data.root=/data/BAPPS/dataset model.net=vgg
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.distributed import is_main_process
from common.hydra_utils import report_user_errors, run_dir_from, to_dataclass, to_plain

from .config import DataConfig, MetricTrainConfig  # registers the typed schemas (schema/lpips_metric/...)
from .training import train_metric


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float:
    model_cfg = to_dataclass(cfg.model, MetricTrainConfig)
    data_cfg = to_dataclass(cfg.data, DataConfig)
    _, result, heads = train_metric(cfg.trainer, run_dir_from(cfg), model_cfg, data_cfg, logger_cfg=cfg.logger,
                                    resume=cfg.resume, config=to_plain(cfg), data_dir=cfg.paths.data_dir)
    best = result.best_metrics or result.last_metrics
    if is_main_process():  # under torchrun every rank has the result; one prints it
        print(f"2AFC mean {best.get('2afc_mean', float('nan')):.4f}, JND mean {best.get('jnd_mean', float('nan')):.4f} "
              f"after {result.step} steps ({result.stopped_reason}); heads: {heads}")
    return best.get("2afc_mean", 0.0)


if __name__ == "__main__":
    main()
