"""Serving a trained joint model: save/load with its tokenizer, and raw text -> intent + slot spans."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from seqeval.metrics.sequence_labeling import get_entities
from transformers import AutoTokenizer

from common.checkpoint import load_export

from .data import align_words, collate, split_words
from .model import JointBertModel


def save_joint_model(model: JointBertModel, tokenizer, out_dir: str | os.PathLike) -> Path:
    """``config.json`` (label maps included) + ``model.safetensors`` + the tokenizer files, in one folder."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_joint_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu", *,
                     trust: bool | None = None):
    """(model in eval mode, tokenizer) from a folder written by :func:`save_joint_model`.

    Weights come from ``model.safetensors`` (no pickle). A folder with only a pickle-format
    ``pytorch_model.bin`` is read as plain weights, never unpickled, unless ``trust=True``
    (see :func:`common.checkpoint.load_export`): model folders are what people share.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} holds no saved joint model (no config.json); train one with "
                                "`python -m joint_bert_nlu.train` (it writes <run_dir>/model)")
    if any((model_dir / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        model = JointBertModel.from_pretrained(model_dir, use_safetensors=True)
    elif (model_dir / "pytorch_model.bin").is_file():
        model = JointBertModel(JointBertModel.config_class.from_pretrained(model_dir))
        model.load_state_dict(load_export(model_dir / "pytorch_model.bin", trust=trust))
    else:
        raise FileNotFoundError(f"{model_dir} holds no model weights (no model.safetensors)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model.to(device).eval(), tokenizer


class JointNLUPredictor:
    """Batched prediction on raw sentences: ``predictor(["book a table for two"])``.

    Each result: ``{"text", "intent", "confidence", "slots": [{"slot", "value", "start", "end",
    "words": [first, last]}], "tags"}``; ``start``/``end`` are character offsets into the text.
    """

    def __init__(self, model: JointBertModel, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.max_length = model.config.max_seq_length

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device="cpu", batch_size: int = 64, *,
                        trust: bool | None = None):
        return cls(*load_joint_model(model_dir, device, trust=trust), batch_size=batch_size)

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str]) -> list[dict]:
        texts = list(texts)
        split = [split_words(t) for t in texts]
        results: list[dict | None] = [None] * len(texts)
        nonempty = [i for i, (w, _) in enumerate(split) if w]
        for i in set(range(len(texts))) - set(nonempty):
            results[i] = {"text": texts[i], "intent": None, "confidence": 0.0, "slots": [], "tags": []}
        feats = {i: align_words(self.tokenizer, split[i][0], self.max_length) for i in nonempty}
        order = sorted(nonempty, key=lambda i: len(feats[i]["input_ids"]))
        device = next(self.model.parameters()).device
        vocab = self.model.vocab
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            batch = collate([feats[i] for i in idx], pad_token_id=self.tokenizer.pad_token_id or 0)
            batch = {k: v.to(device) for k, v in batch.items()}
            intents, conf, slot_ids = self.model.decode(**batch)
            for j, i in enumerate(idx):
                words, offsets = split[i]
                tags = [vocab.slots[t] for t in slot_ids[j]]
                tags += ["O"] * (len(words) - len(tags))
                results[i] = {"text": texts[i], "intent": intents[j], "confidence": round(conf[j], 6),
                              "slots": spans_from_tags(texts[i], offsets, tags), "tags": tags}
        return results


def spans_from_tags(text: str, offsets: Sequence[tuple[int, int]], tags: Sequence[str]) -> list[dict]:
    """Chunks of a BIO tag sequence (seqeval's chunking, the one used for scoring) as character spans."""
    spans = []
    for slot, first, last in get_entities(list(tags)):
        start, end = offsets[first][0], offsets[last][1]
        spans.append({"slot": slot, "value": text[start:end], "start": start, "end": end,
                      "words": [first, last]})
    return spans
