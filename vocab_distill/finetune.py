"""Downstream fine-tuning of any exported BERT folder (teacher, students, baselines) on a sentence
classification task, through the common Trainer: a linear head on [CLS] (``BertForSequenceClassification``).

The protocol (README "Protocol"), the same for every model, method and width:

1. A tuning split is carved from train (``tune_size`` sentences, a seeded draw, exact duplicates of training
   sentences dropped from it); the training subset is drawn from the rest.
2. Selection: one trial per learning rate of the grid, ``epochs`` epochs each (warm-up 10 %, linear decay
   over the whole trial), seed ``select_seed``; tuning accuracy after every epoch. The (learning rate,
   epoch) with the best tuning accuracy wins (ties: the earlier epoch, then the smaller rate).
3. Reported runs: every seed of ``seeds`` trains with the winning rate on the *same* schedule (decay over
   ``epochs`` epochs) and stops after the winning epoch, then is scored once on the reported split and
   exported as a classifier folder.

The reported split is never used to choose anything: SST-2's is GLUE dev (its test labels are not public),
SNIPS's is its test set, and ``test_path`` replaces either with a user's labelled file.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import Dataset
from transformers import BertForSequenceClassification, BertTokenizerFast

from common.data import DataFormatError
from common.distributed import barrier, gather_shards, is_main_process, shard
from common.logging import read_jsonl
from common.schedules import linear_warmup_decay
from common.trainer import Trainer

from .corpus import read_intent_folder, read_nlu_intents, read_sst2, read_sst2_file
from .model import quiet_transformers
from .pretrain import with_overrides

SST2_LABELS = ["negative", "positive"]


@dataclass
class TaskData:
    name: str
    labels: list[str]
    train: list[tuple[str, int]]
    tune: list[tuple[str, int]]  # carved from train: chooses the learning rate and epoch
    test: list[tuple[str, int]]  # the reported split
    test_split: str  # what the reported split is, in words


def carve_tune_split(rows: Sequence, tune_size: int, train_limit: int | None, seed: int = 0) -> tuple[list, list]:
    """``(train, tune)`` from one seeded permutation of ``rows``: the first ``tune_size`` are the tuning split
    (minus exact duplicates of a training sentence, which SST-2's phrase-level train holds), the next
    ``train_limit`` (all when None) the training subset."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if tune_size >= len(rows):
        raise ValueError(f"tune_size={tune_size} leaves no training rows out of {len(rows)}")
    rest = order[tune_size:]
    train = [rows[i] for i in (rest[:train_limit] if train_limit else rest)]
    seen = {t.lower() for t, _ in train}
    tune = [rows[i] for i in order[:tune_size] if rows[i][0].lower() not in seen]
    return train, tune


def _labels_to_ids(rows, index: dict[str, int], where) -> list[tuple[str, int]]:
    unknown = sorted({lab for _, lab in rows} - set(index))
    if unknown:
        raise DataFormatError(where, f"intents {unknown} are not in the train split")
    return [(t, index[lab]) for t, lab in rows]


def load_task(name: str, data_dir=None, *, tune_size: int = 1000, train_limit: int | None = None,
              eval_limit: int | None = None, test_path: str | os.PathLike | None = None) -> TaskData:
    """``sst2`` or ``snips_intent`` with its tuning split carved from train and its reported split
    (``test_path``: a user's labelled SST-2-style TSV or SNIPS-style folder instead)."""
    if name == "sst2":
        labels, train_rows = SST2_LABELS, read_sst2("train", data_dir)
        test = read_sst2_file(test_path) if test_path else read_sst2("dev", data_dir)
        split = f"user file {test_path}" if test_path else "GLUE SST-2 dev"
    elif name == "snips_intent":
        raw = read_nlu_intents("snips", "train", data_dir)
        labels = sorted({lab for _, lab in raw})
        index = {lab: i for i, lab in enumerate(labels)}
        train_rows = _labels_to_ids(raw, index, "nlu/snips/train/label")
        test_raw = read_intent_folder(test_path) if test_path else read_nlu_intents("snips", "test", data_dir)
        test = _labels_to_ids(test_raw, index, Path(test_path) / "label" if test_path else "nlu/snips/test/label")
        split = f"user folder {test_path}" if test_path else "SNIPS test"
    else:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    train, tune = carve_tune_split(train_rows, tune_size, train_limit)
    return TaskData(name, labels, train, tune[:eval_limit], test[:eval_limit], split)


TASKS = ("sst2", "snips_intent")


class EncodedClassification(Dataset):
    def __init__(self, tok: BertTokenizerFast, rows: Sequence[tuple[str, int]], max_len: int):
        enc = tok([t for t, _ in rows], truncation=True, max_length=max_len)
        self.ids = enc["input_ids"]
        self.labels = [y for _, y in rows]
        self.pad_id = tok.pad_token_id

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.ids[i], self.labels[i]


def pad_collate(pad_id: int):
    def collate(items):
        width = max(len(ids) for ids, _ in items)
        x = torch.full((len(items), width), pad_id, dtype=torch.long)
        for i, (ids, _) in enumerate(items):
            x[i, : len(ids)] = torch.tensor(ids)
        return {"input_ids": x, "attention_mask": (x != pad_id).long(),
                "labels": torch.tensor([y for _, y in items], dtype=torch.long)}

    return collate


@torch.no_grad()
def accuracy(model, data: EncodedClassification, batch_size: int = 128, sharded: bool = False) -> float:
    """Accuracy over ``data``; ``sharded``: the batches are dealt to the ranks of a torchrun job and the
    correct counts gathered (every rank calls it and gets the single-process number)."""
    dev = next(model.parameters()).device
    collate = pad_collate(data.pad_id)
    starts = list(range(0, len(data), batch_size))

    def correct(i: int) -> int:
        b = collate([data[j] for j in range(i, min(i + batch_size, len(data)))])
        logits = model(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits
        return int((logits.argmax(-1).cpu() == b["labels"]).sum())

    counts = gather_shards([correct(i) for i in shard(starts)], len(starts)) if sharded else map(correct, starts)
    return sum(counts) / max(len(data), 1)


def load_classifier(model_dir: str | os.PathLike, num_labels: int) -> BertForSequenceClassification:
    with quiet_transformers():  # the new classifier head is expected to be randomly initialised
        return BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=num_labels,
                                                             local_files_only=True)


def export_classifier(model: BertForSequenceClassification, tok: BertTokenizerFast, labels: Sequence[str],
                      out_dir: str | os.PathLike, info: dict) -> Path:
    """A fine-tuned classifier as a plain transformers folder: ``config.json`` (with ``id2label``),
    ``model.safetensors``, the tokenizer files and ``vocab.txt``, plus ``finetune.json`` (how it was made).
    ``BertForSequenceClassification.from_pretrained(out_dir)`` and ``python -m vocab_distill.predict out_dir``
    load it; nothing in it is pickle."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {lab: i for i, lab in enumerate(labels)}
    model.cpu().eval().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    vocab = tok.vocab
    (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])),
                                   encoding="utf-8")
    (out / "finetune.json").write_text(json.dumps(info, indent=1))
    return out


def finetune(model_dir: str | os.PathLike, task: TaskData, trainer_cfg, run_dir: str | Path, *, lr: float,
             epochs: int, stop_epoch: int | None = None, max_len: int = 64, score_test: bool = False,
             export_dir: str | Path | None = None, resume: str = "never", logger_cfg=None,
             config=None) -> dict:
    """Fine-tune ``model_dir`` on ``task.train`` with a schedule over ``epochs`` epochs, stopping after
    ``stop_epoch`` (default: all); tuning accuracy after every epoch. ``score_test``: also the accuracy on
    the reported split at the end; ``export_dir``: save the classifier there (``export_classifier``).

    Returns ``{lr, epochs, stop_epoch, tune_acc_by_epoch, tune_acc[, test_acc, test_correct, test_n]}``."""
    stop_epoch = stop_epoch or epochs
    if not 1 <= stop_epoch <= epochs:
        raise ValueError(f"stop_epoch={stop_epoch} must be in 1..{epochs}")
    tok = BertTokenizerFast.from_pretrained(str(model_dir))
    torch.manual_seed(trainer_cfg.seed)  # the classifier head's initialisation depends on the seed
    model = load_classifier(model_dir, len(task.labels))
    train = EncodedClassification(tok, task.train, max_len)
    tune = EncodedClassification(tok, task.tune, max_len)

    def loss_fn(net, batch):
        out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return {"loss": out.loss, "acc": (out.logits.argmax(-1) == batch["labels"]).float().mean().detach()}

    steps_per_epoch = math.ceil(len(train) / trainer_cfg.batch_size)
    full = epochs * steps_per_epoch
    if trainer_cfg.max_steps:  # smoke runs cap the steps: the schedule shrinks with them
        full = min(full, trainer_cfg.max_steps)
    stop_steps = min(stop_epoch * steps_per_epoch, full)
    cfg = with_overrides(trainer_cfg, max_epochs=stop_epoch, max_steps=stop_steps, monitor=None,
                         early_stopping_patience=None, eval_every_steps=None, grad_accum_steps=1)
    # the tuning accuracies are read back from metrics.jsonl (truncated to the checkpoint on resume)
    log_cfg = SimpleNamespace(jsonl=True, tensorboard=getattr(logger_cfg, "tensorboard", True))
    trainer = Trainer(cfg, run_dir, logger_cfg=log_cfg, resume=resume, config=config)
    trainer.fit(model, train, loss_fn,
                optimizer_fn=lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01),
                scheduler_fn=lambda opt, _total: linear_warmup_decay(opt, int(0.1 * full), full),
                collate_fn=pad_collate(tok.pad_token_id),
                eval_fn=lambda m: {"tune_acc": accuracy(m, tune, sharded=True)}, eval_sharded=True)
    barrier()
    by_epoch: dict[int, float] = {}
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.is_file():
        for row in read_jsonl(metrics):
            if "val/tune_acc" in row:
                by_epoch[int(row["epoch"])] = float(row["val/tune_acc"])
    curve = [by_epoch[e] for e in sorted(by_epoch)]
    out = {"lr": lr, "epochs": epochs, "stop_epoch": stop_epoch, "tune_acc_by_epoch": curve,
           "tune_acc": curve[-1] if curve else accuracy(model.eval(), tune, sharded=True)}
    if score_test:
        test = EncodedClassification(tok, task.test, max_len)
        acc = accuracy(model.eval(), test, sharded=True)
        out |= {"test_acc": acc, "test_correct": round(acc * len(test)), "test_n": len(test),
                "test_split": task.test_split}
    if export_dir is not None and is_main_process():
        export_classifier(model, tok, task.labels, export_dir,
                          {"source_model": str(model_dir), "task": task.name, "seed": trainer_cfg.seed, **out})
    barrier()
    return out


def choose(trials: dict[float, list[float]]) -> tuple[float, int, float]:
    """``(lr, epoch, tune_acc)`` of the best tuning accuracy over ``{lr: [acc after epoch 1, 2, ...]}``;
    ties go to the earlier epoch, then to the smaller learning rate."""
    best = None
    for lr in sorted(trials):
        for e, acc in enumerate(trials[lr], start=1):
            if best is None or acc > best[2] or (acc == best[2] and (e, lr) < (best[1], best[0])):
                best = (lr, e, acc)
    if best is None:
        raise ValueError("no selection trial produced a tuning accuracy")
    return best


def drop_checkpoints(run_dir: Path) -> None:
    """A finished fine-tuning run keeps its result and export, not its trainer checkpoints (a teacher
    checkpoint with AdamW state is ~270 MB, and there are dozens of runs)."""
    if is_main_process():
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
