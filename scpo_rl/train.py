"""Hydra shell: ``python -m scpo_rl.train env=hopper algo=scpo trainer.max_steps=150000 resume=auto``.

Several seeds in parallel on one machine:
``python -m scpo_rl.train -m trainer.seed=0,1,2 hydra/launcher=joblib hydra.launcher.n_jobs=2``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from common.hydra_utils import report_user_errors, run_dir_from, to_plain
from scpo_rl.config import run_config_from  # registers the typed schemas (schema/scpo_rl/...); no torch


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@report_user_errors
def main(cfg: DictConfig) -> float:
    # heavy imports (torch, MuJoCo) here, so that --help answers at once
    from common.runinfo import write_run_info
    from scpo_rl.loop import RLTrainer

    run_dir = run_dir_from(cfg)
    trainer = RLTrainer(run_config_from(cfg), run_dir, resume=cfg.resume, logger_cfg=cfg.logger)
    info = write_run_info(run_dir, extra={"config": to_plain(cfg)})
    result = trainer.run()
    info.finish(final_eval_return=result["final_eval_return"], steps=result["step"])
    print(f"final deterministic eval return {result['final_eval_return']:.1f} at step {result['step']} ({run_dir})")
    return result["final_eval_return"]


if __name__ == "__main__":
    main()
