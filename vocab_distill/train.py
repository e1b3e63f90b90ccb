"""Hydra shell: ``python -m vocab_distill.train [experiment=smoke|quick|full] [model=h96] [key=value ...]``.

Runs the whole pipeline (corpus, V_s, stage 0, stage I, stage II + baselines, fine-tuning, size/speed) in
``runs/<name>``; ``resume=auto`` continues an interrupted run stage by stage, step by step.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.distributed import is_main_process
from common.hydra_utils import report_user_errors, run_dir_from, to_dataclass


def build_pipeline(cfg: DictConfig, work_dir):
    """The library pipeline for a composed config (imported lazily so that ``--help`` stays fast)."""
    from .config import MixedMLMOptions, PipelineConfig, StudentOptions, TeacherOptions
    from .pipeline import Pipeline
    from .pretrain import with_overrides

    return Pipeline(to_dataclass(cfg.pipeline, PipelineConfig), with_overrides(cfg.trainer), work_dir,
                    mixed=to_dataclass(cfg.stage1, MixedMLMOptions), student=to_dataclass(cfg.stage2, StudentOptions),
                    teacher=to_dataclass(cfg.teacher, TeacherOptions),
                    data_dir=cfg.paths.data_dir, resume=cfg.resume, logger_cfg=cfg.logger)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> None:
    results = build_pipeline(cfg, run_dir_from(cfg)).run()
    if is_main_process():  # under torchrun every rank has the results; one prints them
        from .teacher import curve_table

        t = results["teacher"]
        print(curve_table(t))
        print(json.dumps({"teacher": {k: t[k] for k in ("decision", "gate_passed", "gate", "speed")},
                          "finetune": {m: {task: {k: r[k] for k in ("runs", "selected_lr", "selected_epoch")}
                                           for task, r in tasks.items()} for m, tasks in results["finetune"].items()},
                          "vocab": results["vocab"]}, indent=2))


if __name__ == "__main__":
    main()
