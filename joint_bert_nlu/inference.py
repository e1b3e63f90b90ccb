"""Serving a trained joint model: save/load with its tokenizer, and raw text -> intent + slot spans.

The predictor turns raw text into the words the model was trained on (``joint_bert_nlu.text``: the rules
read off the training split and stored in ``config.json``), tags them, and returns one record per input:
an error record for an input without words, a ``truncated`` field and a warning when the input is longer
than the model reads, and an out-of-domain score with the dev-chosen threshold (``joint_bert_nlu.ood``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from seqeval.metrics.sequence_labeling import get_entities

from .data import align_words, collate
from .model import JointBertModel, decode_logits, model_device
from .ood import ood_scores
from .text import TextNormalizer

EMPTY_INPUT = "no words in the input (empty line, or punctuation only)"
TOKENIZER_FILES = ("tokenizer_config.json",)
TOKENIZER_VOCAB = ("tokenizer.json", "vocab.txt")


class ModelFolderError(FileNotFoundError):
    """A model folder lacks a file it needs (one line naming the folder and the files)."""


def save_joint_model(model: JointBertModel, tokenizer, out_dir: str | os.PathLike) -> Path:
    """``config.json`` (label maps, text rules, out-of-domain threshold) + ``model.safetensors`` + the
    tokenizer files, in one folder."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


TORCH_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_model_folder(model_dir: str | os.PathLike, weights: Sequence[str] = TORCH_WEIGHTS) -> Path:
    """Raise :class:`ModelFolderError` unless ``model_dir`` holds ``config.json``, one of ``weights`` and
    a tokenizer (``tokenizer_config.json`` with ``tokenizer.json`` or ``vocab.txt``)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"model folder {model_dir} does not exist; train one with `python -m "
                               "joint_bert_nlu.train` (it writes <run_dir>/model)")
    missing = [f for f in ("config.json",) + TOKENIZER_FILES if not (model_dir / f).is_file()]
    for group in (weights, TOKENIZER_VOCAB):
        if not any((model_dir / f).is_file() for f in group):
            missing.append(" or ".join(group))
    if missing:
        raise ModelFolderError(f"model folder {model_dir} lacks {'; '.join(missing)}: it is not a complete folder "
                               "written by joint_bert_nlu.train (<run_dir>/model) or joint_bert_nlu.export")
    return model_dir


def load_tokenizer(model_dir: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def load_joint_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu", *,
                     trust: bool | None = None):
    """(model in eval mode, tokenizer) from a folder written by :func:`save_joint_model`.

    Weights come from ``model.safetensors`` (no pickle). A folder with only a pickle-format
    ``pytorch_model.bin`` is read as plain weights, never unpickled, unless ``trust=True``
    (see :func:`common.checkpoint.load_export`): model folders are what people share.
    """
    from common.checkpoint import load_export

    model_dir = check_model_folder(model_dir)
    if any((model_dir / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        model = JointBertModel.from_pretrained(model_dir, use_safetensors=True)
    else:
        model = JointBertModel(JointBertModel.config_class.from_pretrained(model_dir))
        model.load_state_dict(load_export(model_dir / "pytorch_model.bin", trust=trust))
    return model.to(device).eval(), load_tokenizer(model_dir)


class JointNLUPredictor:
    """Batched prediction on raw sentences: ``predictor(["book a table for two"])``, one record per text.

    ``model`` is a :class:`JointBertModel` or an ONNX-runtime model (``joint_bert_nlu.export.OnnxJointModel``):
    anything with ``config``, ``crf`` and ``logits(input_ids, attention_mask, word_index)``.

    A record: ``{"text", "words", "intent", "confidence", "ood_score", "in_domain", "slots": [{"slot",
    "value", "start", "end", "words": [first, last]}], "tags"}``; ``words`` are the normalised words the
    tags belong to, ``start``/``end`` character offsets into ``text`` (so ``value`` is what the user typed,
    edge punctuation excluded). ``in_domain`` is ``ood_score >= threshold`` (null for a model without a
    threshold). A text longer than ``max_length`` sub-tokens adds ``"truncated": {"words_read", "words"}``:
    the words past the limit are tagged ``O`` (and a warning is issued). A text without words gives
    ``{"text", "error"}``.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, *, max_length: int | None = None,
                 normalizer: TextNormalizer | None = None, ood_threshold: float | None = None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        config = model.config
        self.max_length = int(max_length or config.max_seq_length)
        limit = getattr(config.encoder_config(), "max_position_embeddings", None)
        if limit is not None and self.max_length > limit:
            raise ValueError(f"max_length {self.max_length} exceeds the encoder's {limit} positions")
        self.normalizer = normalizer or TextNormalizer.from_dict(config.text_normalization)
        ood = config.ood or {}
        self.ood_kind = ood.get("score", "msp")
        self.ood_threshold = ood_threshold if ood_threshold is not None else ood.get("threshold")

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, device="cpu", batch_size: int = 64, *,
                        trust: bool | None = None, backend: str = "torch", **options):
        """``backend``: torch (``model.safetensors``), onnx (``model.onnx``) or onnx-int8 (``model.int8.onnx``)."""
        if backend == "torch":
            model, tokenizer = load_joint_model(model_dir, device, trust=trust)
        else:
            from .export import load_onnx_model

            model, tokenizer = load_onnx_model(model_dir, int8=backend == "onnx-int8")
        return cls(model, tokenizer, batch_size=batch_size, **options)

    def __call__(self, texts: Sequence[str]) -> list[dict]:
        return [record for record, _ in self.run(texts)]

    def scores(self, texts: Sequence[str]) -> dict[str, list[float]]:
        """Both out-of-domain scores of every text with words (``joint_bert_nlu.ood``)."""
        out: dict[str, list[float]] = {}
        for _, scores in self.run(texts):
            for k, v in (scores or {}).items():
                out.setdefault(k, []).append(v)
        return out

    @torch.inference_mode()
    def run(self, texts: Sequence[str]) -> list[tuple[dict, dict | None]]:
        """(record, both OOD scores) per text; the scores are None for an error record."""
        texts = list(texts)
        split = [self.normalizer.words(t) for t in texts]
        results: list[tuple[dict, dict | None] | None] = [None] * len(texts)
        nonempty = [i for i, (w, _) in enumerate(split) if w]
        for i in set(range(len(texts))) - set(nonempty):
            results[i] = ({"text": texts[i], "error": EMPTY_INPUT}, None)
        feats = {i: align_words(self.tokenizer, split[i][0], self.max_length) for i in nonempty}
        order = sorted(nonempty, key=lambda i: len(feats[i]["input_ids"]))
        vocab = self.model.config.vocab
        device = model_device(self.model)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            batch = collate([feats[i] for i in idx], pad_token_id=self.tokenizer.pad_token_id or 0)
            batch = {k: v.to(device) for k, v in batch.items()}
            intent_logits, slot_logits = self.model.logits(batch["input_ids"], batch["attention_mask"],
                                                           batch["word_index"])
            intents, conf, slot_ids = decode_logits(self.model.config, self.model.crf, intent_logits,
                                                    slot_logits, batch["word_mask"])
            scores = ood_scores(intent_logits, self.model.config.intent_mode)
            for j, i in enumerate(idx):
                words, offsets = split[i]
                tags = [vocab.slots[t] for t in slot_ids[j]]
                n_read = len(tags)
                tags += ["O"] * (len(words) - n_read)
                mine = {k: v[j] for k, v in scores.items()}
                score = mine[self.ood_kind]
                record = {"text": texts[i], "words": words, "intent": intents[j], "confidence": round(conf[j], 6),
                          "ood_score": round(score, 6),
                          "in_domain": None if self.ood_threshold is None else bool(score >= self.ood_threshold),
                          "slots": spans_from_tags(texts[i], offsets, tags), "tags": tags}
                if n_read < len(words):
                    record["truncated"] = {"words_read": n_read, "words": len(words)}
                    warnings.warn(f"input of {len(words)} words is longer than the model's {self.max_length} "
                                  f"sub-tokens: only the first {n_read} words were read, the other "
                                  f"{len(words) - n_read} are tagged O", TruncationWarning, stacklevel=2)
                results[i] = (record, mine)
        return results  # type: ignore[return-value]


class TruncationWarning(UserWarning):
    """An input was longer than the model reads; its last words were tagged O unread."""


def spans_from_tags(text: str, offsets: Sequence[tuple[int, int]], tags: Sequence[str]) -> list[dict]:
    """Chunks of a BIO tag sequence (seqeval's chunking, the one used for scoring) as character spans."""
    spans = []
    for slot, first, last in get_entities(list(tags)):
        start, end = offsets[first][0], offsets[last][1]
        spans.append({"slot": slot, "value": text[start:end], "start": start, "end": end,
                      "words": [first, last]})
    return spans
