"""Hydra shell: ``python -m joint_bert_nlu.train [model=minilm_crf] [data=snips] [key=value ...]``.

Examples:
    python -m joint_bert_nlu.train                                  # ATIS, MiniLM, softmax slots
    python -m joint_bert_nlu.train data=snips model=minilm_crf
    python -m joint_bert_nlu.train model.encoder=/models/bert-base-uncased experiment=paper_parity
    python -m joint_bert_nlu.train resume=auto                      # continue runs/joint_bert_nlu_atis
The trained model lands in <run_dir>/model (load it with joint_bert_nlu.predict --model <run_dir>/model).
"""
# Only Hydra, OmegaConf and the typed schemas are imported at module level: --help (common.hydra_help: one
# composition instead of Hydra's ~100 repository copies) and a bad override answer without importing torch
# or transformers (seconds); the task imports them when it runs.

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout; no torch)
from common.hydra_help import fast_help
from common.schema import report_config_errors_in_one_line
from joint_bert_nlu.config import DataOptions, ModelOptions, OptimOptions  # (and the typed schemas)

report_config_errors_in_one_line()  # what report_user_errors installs, installed before Hydra composes


def run(cfg: DictConfig) -> float:
    """The task: train, select on dev, evaluate, save (heavy imports happen here)."""
    from common.distributed import is_main_process
    from common.hydra_utils import run_dir_from, to_dataclass, to_plain
    from common.pretrained import PretrainedNotFoundError
    from joint_bert_nlu.model import EncoderNotFoundError, resolve_encoder_path
    from joint_bert_nlu.training import train_joint

    try:
        encoder_path = resolve_encoder_path(cfg.model.encoder)
    except (EncoderNotFoundError, PretrainedNotFoundError) as e:  # a wrong model.encoder: one clear line
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"encoder: {cfg.model.encoder} ({encoder_path})", file=sys.stderr)
    results = train_joint(
        cfg.trainer, run_dir_from(cfg), to_dataclass(cfg.model, ModelOptions),
        to_dataclass(cfg.data, DataOptions), to_dataclass(cfg.optim, OptimOptions),
        data_dir=cfg.paths.data_dir, logger_cfg=cfg.logger, resume=cfg.resume, config=to_plain(cfg))
    if is_main_process():  # under torchrun every rank has the results; one prints them
        print(json.dumps({"dataset": results["dataset"], "best_dev_epoch": results["best_dev_epoch"],
                          "dev": results["dev"], "test": results["test"]}))
    return results["dev"]["sentence_acc"]


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from common.hydra_utils import report_user_errors

    return report_user_errors(run)(cfg)


if __name__ == "__main__":
    if not fast_help(Path(__file__).parent / "conf", "config", "python -m joint_bert_nlu.train", __doc__):
        main()
