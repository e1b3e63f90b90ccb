"""Tests that read the real all-MiniLM-L6-v2 weights (slow: ~90 MB, a few seconds each)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from joint_bert_nlu.data import EncodedDataset, collate, load_dataset
from joint_bert_nlu.inference import JointNLUPredictor, load_joint_model, save_joint_model
from joint_bert_nlu.model import JointBertModel, minilm_path

from .helpers import tokenizer

pytestmark = pytest.mark.slow


def test_encoder_weights_are_the_pretrained_ones_and_survive_save_load(tmp_path):
    vocab = load_dataset("atis", splits=("train",)).vocab
    model = JointBertModel.from_encoder("minilm", vocab, use_crf=True).eval()
    ref = BertModel.from_pretrained(minilm_path(), local_files_only=True).state_dict()
    for name, tensor in model.encoder.state_dict().items():
        torch.testing.assert_close(tensor, ref[name], rtol=0, atol=0)
    save_joint_model(model, tokenizer(), tmp_path / "m")
    loaded, tok = load_joint_model(tmp_path / "m")
    texts = ["show me flights from boston to denver on monday", "what is fare code h"]
    assert JointNLUPredictor(model, tokenizer())(texts) == JointNLUPredictor(loaded, tok)(texts)


def test_minilm_learns_atis_slice():
    """A few hundred steps on 256 ATIS sentences: intent and slots clearly above chance."""
    from common.config import TrainerConfig
    from common.trainer import Trainer
    from joint_bert_nlu.evaluate import evaluate_examples
    from joint_bert_nlu.training import OptimOptions, build_optimizer, joint_loss

    ds = load_dataset("atis", splits=("train",))
    train = EncodedDataset(ds.splits["train"][:256], tokenizer(), ds.vocab)
    torch.manual_seed(0)
    model = JointBertModel.from_encoder("minilm", ds.vocab)
    before = evaluate_examples(model, train)
    cfg = TrainerConfig(device="cpu", max_epochs=4, batch_size=16, progress_bar=False)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        Trainer(cfg, d).fit(model, train, joint_loss, optimizer_fn=lambda m: build_optimizer(m, OptimOptions(lr=1e-4)),
                            collate_fn=collate)
    after = evaluate_examples(model, train)
    # 64 steps: the frequent intents and slot types are learned first (measured: intent 0.93, slot F1 0.47)
    assert after["intent_acc"] > max(0.8, before["intent_acc"]) and after["slot_f1"] > max(0.3, 2 * before["slot_f1"])
