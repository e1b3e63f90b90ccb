"""Hydra shell: ``python -m label_efficient_seg.train method=<m> data=<d> [experiment=<e>] key=value ...``

Examples::

    python -m label_efficient_seg.train                                   # CamVid, full supervision
    python -m label_efficient_seg.train method=fixmatch name=camvid_fixmatch
    python -m label_efficient_seg.train experiment=kvasir_boxes name=kv_boxinst
    python -m label_efficient_seg.train experiment=smoke name=smoke resume=auto

All the work happens in :func:`label_efficient_seg.experiment.run_experiment` (no Hydra there).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
import label_efficient_seg.config  # noqa: F401  (registers the typed schemas, schema/label_efficient_seg/...)
from common.distributed import is_main_process
from common.hydra_utils import report_user_errors, run_dir_from, to_plain
from label_efficient_seg.experiment import run_experiment


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float:
    res = run_experiment(cfg.data, cfg.method, cfg.model, cfg.optim, cfg.trainer, run_dir_from(cfg),
                         logger_cfg=cfg.logger, resume=cfg.resume, data_dir=cfg.paths.data_dir,
                         config=to_plain(cfg))
    test = ", ".join(f"{k} {v:.4f}" for k, v in res["test"].items() if isinstance(v, float))
    if is_main_process():  # under torchrun every rank has the scores; one prints them
        print(f"{res['method']} on {res['dataset']}: test {test} ({res['steps']} steps, "
              f"{res['wall_seconds']:.0f} s, {res['stopped_reason']})")
    return float(res["score"])


if __name__ == "__main__":
    main()
