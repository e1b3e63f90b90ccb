"""Fine-tuning Joint BERT with the common Trainer (Hydra-free; ``train.py`` is the Hydra shell).

``train_joint`` loads a dataset, builds the joint model over the chosen encoder, trains with AdamW and a
linear warm-up/decay schedule, selects the checkpoint with the best **dev** sentence accuracy, then
evaluates that checkpoint once on dev and test, chooses the out-of-domain score and threshold on dev
(``joint_bert_nlu.ood``; the other data set's dev split as out-of-domain examples) and saves it in the
transformers manner to ``<run_dir>/model`` (weights, config with label maps, text rules and threshold,
tokenizer). ``results.json`` also holds each dev/test sentence's correctness, for paired tests between
configurations over sentences.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from transformers import AutoTokenizer

from common.bench import peak_rss_bytes
from common.checkpoint import CheckpointManager, load_checkpoint, seed_everything
from common.distributed import barrier
from common.schedules import linear_warmup_decay
from common.trainer import FitResult, Trainer

from . import ood
from .config import DataOptions, ModelOptions, OptimOptions
from .data import EncodedDataset, NLUDataset, collate, load_dataset
from .evaluate import compute_metrics, evaluate_examples, predict_encoded, same_intent
from .inference import JointNLUPredictor, save_joint_model
from .model import JointBertModel, resolve_encoder_path
from .text import TextNormalizer


def build_optimizer(model, opts: OptimOptions) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:  # BERT fine-tuning convention: no decay on biases and LayerNorm
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opts.lr, eps=opts.adam_eps)


def joint_loss(model, batch) -> dict[str, torch.Tensor]:
    out = model(**batch)
    return {"loss": out.loss, "intent_loss": out.intent_loss.detach(), "slot_loss": out.slot_loss.detach()}


def prepare_data(data: DataOptions, tokenizer, data_dir=None,
                 multi_label: bool = False) -> tuple[NLUDataset, dict[str, EncodedDataset]]:
    ds = load_dataset(data.dataset, data_dir=data_dir)
    if multi_label:
        ds.vocab = ds.vocab.multi_label()
    limits = {"train": data.train_limit, "dev": data.eval_limit, "test": data.eval_limit}
    encoded = {split: EncodedDataset(examples[:limits[split]], tokenizer, ds.vocab, data.max_seq_length,
                                     multi_label)
               for split, examples in ds.splits.items()}
    return ds, encoded


def train_joint(trainer_cfg, run_dir: str | os.PathLike, model_opts: ModelOptions | None = None,
                data_opts: DataOptions | None = None, optim_opts: OptimOptions | None = None, *,
                data_dir=None, logger_cfg=None, resume: str = "never", config=None) -> dict:
    """Train, select on dev, evaluate dev + test, save ``<run_dir>/model``; returns the results dict
    (also written to ``<run_dir>/results.json``)."""
    model_opts, data_opts = model_opts or ModelOptions(), data_opts or DataOptions()
    optim_opts = optim_opts or OptimOptions()
    run_dir = Path(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder_path(model_opts.encoder))
    ds, encoded = prepare_data(data_opts, tokenizer, data_dir, multi_label=model_opts.intent_mode == "multi_label")
    seed_everything(trainer_cfg.seed)  # the heads' initialisation depends on the seed
    model = JointBertModel.from_encoder(
        model_opts.encoder, ds.vocab, use_crf=model_opts.use_crf, intent_input=model_opts.intent_input,
        head_dropout=model_opts.head_dropout, slot_loss_coef=model_opts.slot_loss_coef,
        slot_loss_reduction=model_opts.slot_loss_reduction, max_seq_length=data_opts.max_seq_length,
        intent_mode=model_opts.intent_mode,
        text_normalization=TextNormalizer.from_examples(encoded["train"].examples).to_dict())
    eval_bs = trainer_cfg.eval_batch_size or trainer_cfg.batch_size
    pad_id = tokenizer.pad_token_id or 0
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)

    def scheduler_fn(optimizer, total_steps):
        return linear_warmup_decay(optimizer, int(optim_opts.warmup_ratio * total_steps), total_steps)

    t0 = time.time()
    fit: FitResult = trainer.fit(
        model, encoded["train"], joint_loss,
        optimizer_fn=partial(build_optimizer, opts=optim_opts), scheduler_fn=scheduler_fn,
        eval_fn=lambda m: evaluate_examples(m, encoded["dev"], eval_bs, trainer.device, pad_id, sharded=True),
        eval_sharded=True,
        collate_fn=partial(collate, pad_token_id=pad_id,
                           pad_to=data_opts.max_seq_length if data_opts.pad_to_max_length else None),
        lengths=encoded["train"].lengths() if data_opts.group_by_length else None)
    train_seconds = time.time() - t0
    # Under torchrun every rank loads the dev-selected checkpoint (once rank 0 has written it) and scores its
    # share of dev and test; all get the same results, and rank 0 alone saves and reports.
    barrier()
    best_epoch = _load_best(model, run_dir, fit)
    model.eval()
    results = {
        "dataset": ds.name, "encoder": model_opts.encoder, "model": asdict(model_opts),
        "data": asdict(data_opts), "optim": asdict(optim_opts), "seed": trainer_cfg.seed,
        "steps": fit.step, "epochs": fit.epoch, "stopped_reason": fit.stopped_reason,
        "best_dev_epoch": best_epoch, "train_seconds": train_seconds,
        "torch_threads": torch.get_num_threads(), "peak_rss_bytes": peak_rss_bytes(),
    }
    results["per_sentence"] = {}
    for split in ("dev", "test"):
        results[split], results["per_sentence"][split] = _evaluate_with_items(
            model, encoded[split], eval_bs, trainer.device, pad_id)
    ood_name = _ood_dataset(data_opts.dataset, data_opts.ood_dataset)
    if ood_name is not None:
        model.config.ood, results["ood"] = calibrate_ood(model, tokenizer, encoded, ood_name, data_dir,
                                                         data_opts.eval_limit, eval_bs)
    if trainer.is_main:
        save_joint_model(model, tokenizer, run_dir / "model")
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _load_best(model, run_dir: Path, fit: FitResult) -> int:
    """Load the dev-selected checkpoint (best.pt, else the newest) into ``model``; return its epoch."""
    ckpts = CheckpointManager(run_dir)
    path = ckpts.best_path if ckpts.best_path.exists() else ckpts.latest()
    if path is None:
        return fit.epoch
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    return int(state["trainer_state"]["epoch"])


def _evaluate_with_items(model, dataset: EncodedDataset, batch_size, device, pad_id) -> tuple[dict, dict]:
    """Metrics of a split and each sentence's intent and whole-frame correctness (0/1, in split order)."""
    preds = predict_encoded(model, dataset, batch_size, device, pad_id, sharded=True)
    multi = model.config.intent_mode == "multi_label"
    gold_i, gold_t = [e.intent for e in dataset.examples], [list(e.tags) for e in dataset.examples]
    metrics = compute_metrics(gold_i, preds.intents, gold_t, preds.tags, multi_label=multi)
    intent_ok = [int(same_intent(g, p, multi)) for g, p in zip(gold_i, preds.intents)]
    frame_ok = [int(ok and g == p) for ok, g, p in zip(intent_ok, gold_t, preds.tags)]
    return metrics, {"intent": intent_ok, "sentence": frame_ok}


def _ood_dataset(dataset: str, option: str | None) -> str | None:
    """The out-of-domain data set of ``data.ood_dataset`` (auto: the other built-in one, else none)."""
    if option in (None, "none", "null"):
        return None
    if option == "auto":
        return ood.OTHER_DATASET.get(dataset)
    return option


def calibrate_ood(model, tokenizer, encoded: dict[str, EncodedDataset], ood_name: str, data_dir,
                  limit: int | None, batch_size: int) -> tuple[dict, dict]:
    """Choose the out-of-domain score and threshold on dev (own dev vs ``ood_name``'s dev) and report them on
    test (own test vs its test). Sentences go through the predictor, text rules included, as in use.

    Returns (the ``ood`` entry of the model config, the ``ood`` entry of results.json).
    """
    other = load_dataset(ood_name, data_dir=data_dir, splits=("dev", "test"))
    predictor = JointNLUPredictor(model, tokenizer, batch_size=batch_size)

    def scores(examples):
        return predictor.scores([" ".join(e.words) for e in examples[:limit]])

    calibration = ood.calibrate(scores(encoded["dev"].examples), scores(other.splits["dev"]), other.name)
    test = ood.evaluate(calibration, scores(encoded["test"].examples), scores(other.splits["test"]))
    return calibration, {**calibration, "test": test}

