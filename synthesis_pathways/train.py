"""Hydra shell of the training pipeline (sample -> featurize -> fit act, rt1, rxn, rt2).

    python -m synthesis_pathways.train --help
    python -m synthesis_pathways.train experiment=smoke paths.output_dir=/tmp/runs
    python -m synthesis_pathways.train experiment=full resume=auto
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.config import TrainerConfig
from common.distributed import is_main_process
from common.hydra_utils import report_user_errors, run_dir_from, to_dataclass

from .pipeline import PipelineConfig, run_pipeline


def pipeline_config(cfg: DictConfig) -> PipelineConfig:
    merged = {**OmegaConf.to_container(cfg.data, resolve=True), **OmegaConf.to_container(cfg.model, resolve=True),
              **OmegaConf.to_container(cfg.sampling, resolve=True),
              "stages": list(cfg.stages), "networks": list(cfg.networks)}
    return to_dataclass(merged, PipelineConfig)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> None:
    info = run_pipeline(pipeline_config(cfg), run_dir_from(cfg), trainer_cfg=to_dataclass(cfg.trainer, TrainerConfig),
                        data_dir=cfg.paths.data_dir, resume=cfg.resume, logger_cfg=cfg.logger,
                        progress=cfg.trainer.progress_bar)
    if not is_main_process():  # under torchrun rank 0 reports
        return
    for net, r in info.get("fit", {}).items():
        print(f"{net}: {r['parameters']:,} params, {r['step']} steps ({r['stopped']}), best {r['best']}")
    if "sample" in info:
        s = info["sample"]
        rate = s.get("attempts_per_cpu_second")
        print(f"trees: {s['kept']} kept of {s['attempts']} attempts"
              + (f"; {rate:.1f} attempts per CPU-second" if rate else ""))


if __name__ == "__main__":
    main()
