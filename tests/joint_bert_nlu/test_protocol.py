"""The protocol fixed in README "Protocol": the default config is the headline's (paper loss, 10 epochs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import common.config  # noqa: F401  (registers trainer/paths/logger/run_layout)
from joint_bert_nlu.config import ModelOptions
from joint_bert_nlu.model import JointBertConfig

CONF = Path(__file__).resolve().parents[2] / "joint_bert_nlu" / "conf"


@pytest.mark.parametrize("overrides", [[], ["data=snips"], ["experiment=snips"], ["model=minilm_crf"]])
def test_default_config_is_the_papers_loss_with_a_fixed_10_epoch_budget(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert cfg.model.slot_loss_reduction == "sentence_sum"
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.early_stopping_patience is None
    assert cfg.trainer.monitor == "sentence_acc" and cfg.optim.lr == pytest.approx(1e-4)


def test_library_defaults_match_the_config():
    assert ModelOptions().slot_loss_reduction == "sentence_sum"
    assert JointBertConfig().slot_loss_reduction == "sentence_sum"
