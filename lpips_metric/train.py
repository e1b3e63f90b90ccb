"""Hydra shell: train (calibrate) LPIPS on 2AFC judgments.

    python -m lpips_metric.train                                   # lin on ImageNet alex (needs cached weights)
    python -m lpips_metric.train experiment=lin_random_trunk      # lin on a random trunk, synthetic data
    python -m lpips_metric.train model=scratch name=lpips_scratch resume=auto
    python -m lpips_metric.train data=bapps data.root=/data/BAPPS/dataset model.net=vgg
"""
# Only Hydra, OmegaConf and the typed schemas are imported at module level: --help (common.hydra_help) and a
# bad override answer without importing torch (seconds); the task imports it when it runs.

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout; no torch)
from common.hydra_help import fast_help
from common.schema import report_config_errors_in_one_line

from .config import DataConfig, MetricTrainConfig  # registers the typed schemas (schema/lpips_metric/...)

report_config_errors_in_one_line()  # what report_user_errors installs, installed before Hydra composes


def run(cfg: DictConfig) -> float:
    """The task (heavy imports happen here)."""
    from common.distributed import is_main_process
    from common.hydra_utils import run_dir_from, to_dataclass, to_plain

    from .model import TrunkWeightsNotFoundError, hydra_option
    from .training import train_metric

    model_cfg = to_dataclass(cfg.model, MetricTrainConfig)
    data_cfg = to_dataclass(cfg.data, DataConfig)
    try:
        _, result, heads = train_metric(cfg.trainer, run_dir_from(cfg), model_cfg, data_cfg, logger_cfg=cfg.logger,
                                        resume=cfg.resume, config=to_plain(cfg), data_dir=cfg.paths.data_dir)
    except TrunkWeightsNotFoundError as e:  # the hint in this command line's syntax (model.trunk=...)
        print(f"error: {e.hint(hydra_option)}", file=sys.stderr)
        sys.exit(1)
    best = result.best_metrics or result.last_metrics
    if is_main_process():  # under torchrun every rank has the result; one prints it
        print(f"2AFC mean {best.get('2afc_mean', float('nan')):.4f}, JND mean {best.get('jnd_mean', float('nan')):.4f} "
              f"after {result.step} steps ({result.stopped_reason}); heads: {heads}")
    return best.get("2afc_mean", 0.0)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="config")
def main(cfg: DictConfig) -> float:
    from common.hydra_utils import report_user_errors

    return report_user_errors(run)(cfg)


if __name__ == "__main__":
    if not fast_help(Path(__file__).parent / "conf", "config", "python -m lpips_metric.train", __doc__):
        main()
