"""Metrics of the paper (intent accuracy, slot F1, sentence accuracy) and batched prediction.

* Intent accuracy: predicted intent string == gold intent string. A gold intent unseen in training
  (it maps to UNK) can never match, so it always counts as an error.
* Slot F1: micro chunk F1 from ``seqeval`` in its default, conlleval-compatible mode, on word-level
  tag lists against the **original gold strings** (an unseen gold tag is an ordinary missed chunk, not
  a bogus "UNK" chunk). Predictions never contain PAD or UNK (the model masks them).
* Sentence (semantic-frame) accuracy: intent correct and every word's tag equal to gold.

In the (non-paper) multi-label intent mode an intent is correct when the predicted set of '#'-joined
atomic intents equals the gold set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from common.distributed import gather_shards, shard

from .data import MULTI_INTENT_SEP, EncodedDataset, NLUExample, collate
from .model import model_device


def _check_lengths(gold, pred, what: str) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{what}: {len(gold)} gold vs {len(pred)} predicted sentences")


def same_intent(gold: str, pred: str, multi_label: bool) -> bool:
    """Exact string match (atomic classes); in the multi-label mode, equal sets of '#' atoms."""
    if multi_label:
        return set(gold.split(MULTI_INTENT_SEP)) == set(pred.split(MULTI_INTENT_SEP))
    return gold == pred


def intent_accuracy(gold: Sequence[str], pred: Sequence[str], multi_label: bool = False) -> float:
    _check_lengths(gold, pred, "intent_accuracy")
    return sum(same_intent(g, p, multi_label) for g, p in zip(gold, pred)) / max(1, len(gold))


def slot_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval default-mode micro precision / recall / F1 over word-level tag lists."""
    _check_lengths(gold, pred, "slot_scores")
    gold, pred = [list(g) for g in gold], [list(p) for p in pred]
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags vs {len(p)} predicted tags")
    # Default (conlleval-compatible) mode; zero_division=0 only silences the "no chunks" warning.
    return {"slot_precision": float(precision_score(gold, pred, zero_division=0)),
            "slot_recall": float(recall_score(gold, pred, zero_division=0)),
            "slot_f1": float(f1_score(gold, pred, zero_division=0))}


def sentence_accuracy(gold_intents, pred_intents, gold_tags, pred_tags, multi_label: bool = False) -> float:
    _check_lengths(gold_intents, pred_intents, "sentence_accuracy")
    _check_lengths(gold_tags, pred_tags, "sentence_accuracy")
    ok = [same_intent(gi, pi, multi_label) and list(gt) == list(pt)
          for gi, pi, gt, pt in zip(gold_intents, pred_intents, gold_tags, pred_tags)]
    return sum(ok) / max(1, len(ok))


def compute_metrics(gold_intents, pred_intents, gold_tags, pred_tags, multi_label: bool = False) -> dict[str, float]:
    out = {"intent_acc": intent_accuracy(gold_intents, pred_intents, multi_label)}
    out.update(slot_scores(gold_tags, pred_tags))
    out["sentence_acc"] = sentence_accuracy(gold_intents, pred_intents, gold_tags, pred_tags, multi_label)
    return out


@dataclass
class Predictions:
    intents: list[str]
    confidences: list[float]
    tags: list[list[str]]  # one tag per word of the input (words cut by truncation get "O")


@torch.no_grad()
def predict_encoded(model, dataset: EncodedDataset, batch_size: int = 64, device=None,
                    pad_token_id: int = 0, sharded: bool = False) -> Predictions:
    """Predict every example of ``dataset``; batches are length-sorted so padding stays small.

    ``sharded=True`` (every rank of a torchrun job calls it): the batches, cut exactly as in one process,
    are dealt to the ranks (``common.distributed.shard``) and their predictions gathered, so each example is
    predicted in the same batch, with the same padding, as in a single process: the same numbers exactly.
    """
    device = device or model_device(model)
    was_training = model.training
    model.eval()
    vocab = model.vocab
    order = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def predict(idx: list[int]) -> list[tuple[str, float, list[str]]]:
        batch = collate([dataset[i] for i in idx], pad_token_id=pad_token_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        batch_intents, conf, slot_ids = model.decode(**batch)
        out = []
        for j, i in enumerate(idx):
            n_words = len(dataset.examples[i].words)
            word_tags = [vocab.slots[s] for s in slot_ids[j]]
            out.append((batch_intents[j], conf[j], word_tags + ["O"] * (n_words - len(word_tags))))
        return out

    if sharded:
        per_batch = gather_shards([predict(idx) for idx in shard(batches)], len(batches))
    else:
        per_batch = [predict(idx) for idx in batches]
    intents: list[str | None] = [None] * len(dataset)
    confs: list[float] = [0.0] * len(dataset)
    tags: list[list[str] | None] = [None] * len(dataset)
    for idx, preds in zip(batches, per_batch):
        for i, (intent, conf, word_tags) in zip(idx, preds):
            intents[i], confs[i], tags[i] = intent, conf, word_tags
    model.train(was_training)
    return Predictions(intents, confs, tags)


def evaluate_examples(model, dataset: EncodedDataset, batch_size: int = 64, device=None,
                      pad_token_id: int = 0, sharded: bool = False) -> dict[str, float]:
    """All metrics of ``model`` on an encoded split, scored against the original gold strings
    (``sharded``: see :func:`predict_encoded`)."""
    preds = predict_encoded(model, dataset, batch_size, device, pad_token_id, sharded=sharded)
    examples: list[NLUExample] = dataset.examples
    return compute_metrics([e.intent for e in examples], preds.intents, [list(e.tags) for e in examples],
                           preds.tags, multi_label=model.config.intent_mode == "multi_label")
