"""Downstream fine-tuning of any exported BERT folder (teacher, students, baselines) on a sentence
classification task, through the common Trainer: a linear head on [CLS] (``BertForSequenceClassification``).

Tasks: SST-2 (train / dev; GLUE's test labels are not public, so dev is the reported split and the last
epoch is used, never a dev-selected checkpoint) and SNIPS intent (train / dev / test; the checkpoint with the
best dev accuracy is evaluated on test). Any other GLUE-style single-sentence task can be added to ``TASKS``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import BertForSequenceClassification, BertTokenizerFast

from common.distributed import barrier, gather_shards, shard
from common.schedules import warmup_linear_decay
from common.trainer import Trainer

from .corpus import read_nlu_intents, read_sst2
from .model import quiet_transformers
from .pretrain import with_overrides


@dataclass
class TaskData:
    name: str
    labels: list[str]
    train: list[tuple[str, int]]
    dev: list[tuple[str, int]]
    test: list[tuple[str, int]] | None  # None: dev is the reported split


def load_sst2(data_dir=None, train_limit: int | None = None, eval_limit: int | None = None) -> TaskData:
    return TaskData("sst2", ["negative", "positive"], read_sst2("train", data_dir, limit=train_limit),
                    read_sst2("dev", data_dir, limit=eval_limit), None)


def load_snips_intent(data_dir=None, train_limit: int | None = None, eval_limit: int | None = None) -> TaskData:
    train = read_nlu_intents("snips", "train", data_dir)
    labels = sorted({lab for _, lab in train})
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(rows, split):
        unknown = sorted({lab for _, lab in rows} - set(index))
        if unknown:
            from common.data import DataFormatError

            raise DataFormatError(f"nlu/snips/{split}/label", f"intents {unknown} are not in the train split")
        return [(t, index[lab]) for t, lab in rows]

    train_rows = encode(train, "train")
    return TaskData("snips_intent", labels, train_rows[:train_limit] if train_limit else train_rows,
                    encode(read_nlu_intents("snips", "dev", data_dir), "dev")[:eval_limit],
                    encode(read_nlu_intents("snips", "test", data_dir), "test")[:eval_limit])


TASKS: dict[str, Callable[..., TaskData]] = {"sst2": load_sst2, "snips_intent": load_snips_intent}


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


def finetune(model_dir: str | os.PathLike, task: TaskData, trainer_cfg, run_dir: str | Path, *, lr: float,
             max_len: int = 64, resume: str = "never", logger_cfg=None, config=None) -> dict[str, float]:
    """Fine-tune ``model_dir`` on ``task``; returns dev accuracy and, where the task has one, test accuracy."""
    tok = BertTokenizerFast.from_pretrained(str(model_dir))
    torch.manual_seed(trainer_cfg.seed)  # the classifier head's initialisation depends on the seed
    model = load_classifier(model_dir, len(task.labels))
    train = EncodedClassification(tok, task.train, max_len)
    dev = EncodedClassification(tok, task.dev, max_len)
    test = EncodedClassification(tok, task.test, max_len) if task.test is not None else None

    def loss_fn(net, batch):
        out = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return {"loss": out.loss, "acc": (out.logits.argmax(-1) == batch["labels"]).float().mean().detach()}

    cfg = with_overrides(trainer_cfg, monitor="dev_acc" if test is not None else None, monitor_mode="max")
    trainer = Trainer(cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)
    result = trainer.fit(model, train, loss_fn,
                         optimizer_fn=lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01),
                         scheduler_fn=warmup_linear_decay(0.1), collate_fn=pad_collate(tok.pad_token_id),
                         eval_fn=lambda m: {"dev_acc": accuracy(m, dev, sharded=True)}, eval_sharded=True)
    out = {"dev_acc": float(result.last_metrics["dev_acc"]) if "dev_acc" in result.last_metrics
           else accuracy(model.eval(), dev, sharded=True)}
    if test is not None:
        barrier()  # under torchrun: rank 0 has written best.pt before any rank looks for it
        if trainer.ckpt.best_path.exists():
            trainer.load_best(model)
            out["dev_acc"] = float(result.best_metrics["dev_acc"])
        out["test_acc"] = accuracy(model.eval(), test, sharded=True)
    return out
