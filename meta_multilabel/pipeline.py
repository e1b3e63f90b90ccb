"""From configuration to results: read a corpus, build features, split off D_meta, run one method.

Shared by the Hydra shell (``train.py``) and the reproduce profiles; importable without Hydra.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data import dataset_path
from common.logging import get_logger
from meta_multilabel.config import ClassifierConfig, DataConfig, FeaturesConfig, MetaConfig
from meta_multilabel.data import (
    BBN_SOURCE,
    SPLIT_DIR,
    MultiLabelCorpus,
    meta_split,
    read_reuters,
    read_typing,
    synthetic_corpus,
)
from meta_multilabel.features import FeatureMatrix, cached_minilm, tfidf_features, token_id_features
from meta_multilabel.meta import PreparedTask, run_baseline, run_meta

log = get_logger(__name__)

METHODS = ("uniform", "inverse_freq", "meta", "meta_w", "meta_tau")
"""uniform → B1, B2, B3; inverse_freq → B4; meta → M; meta_w → M-w; meta_tau → M-τ."""
PROTOCOL = "issue28"
"""Stamped into every run's results.json (``protocol``): the reproduce profiles refuse cells of an earlier
protocol (other model selection, B2 fallback, no-positive labels) rather than mix them in."""


def load_corpus(cfg: DataConfig, data_dir: str | None = None) -> tuple[MultiLabelCorpus, np.ndarray | None]:
    """The corpus named by ``cfg`` (and, for ``synthetic``, its raw feature matrix)."""
    if cfg.format == "synthetic":
        return synthetic_corpus(**cfg.synthetic, seed=cfg.split_seed)
    if cfg.format == "reuters":
        path = _data_file(cfg.path, "Reuters-21578", data_dir,
                          "the NLTK data repository (corpora/reuters), or ../shared/data/reuters21578")
        return read_reuters(path, name=cfg.name), None
    if cfg.format == "typing":
        if cfg.split_paths:
            paths = {k: _data_file(v, cfg.name, data_dir, BBN_SOURCE) for k, v in cfg.split_paths.items()}
            return read_typing(split_paths=paths, name=cfg.name), None
        split_file = None
        if cfg.split_file:
            split_file = Path(cfg.split_file)
            if not split_file.is_absolute():
                split_file = SPLIT_DIR / split_file
        path = _data_file(cfg.path, cfg.name, data_dir, BBN_SOURCE)
        return read_typing(path, split_file=split_file, split_seed=cfg.split_seed, name=cfg.name), None
    raise ValueError(f"data.format must be reuters, typing or synthetic, got {cfg.format!r}")


def _data_file(relpath: str | None, name: str, data_dir: str | None, source: str) -> Path:
    if relpath is None:
        raise ValueError(f"data.path is required for {name}")
    if Path(relpath).is_absolute():
        return Path(relpath)
    return dataset_path(name, relpath, source=source, data_dir=data_dir)


def prepare_task(data_cfg: DataConfig, feat_cfg: FeaturesConfig, data_dir: str | None = None,
                 progress_bar: bool = True) -> PreparedTask:
    """Read, split (D_train / D_meta / test) and featurise a corpus."""
    corpus, raw = load_corpus(data_cfg, data_dir)
    train, test = corpus.splits["train"], corpus.splits["test"]
    if data_cfg.max_train:
        train = train.subset(range(min(data_cfg.max_train, len(train))))
    if data_cfg.max_test:
        test = test.subset(range(min(data_cfg.max_test, len(test))))
    if data_cfg.use_dev_as_meta and "dev" in corpus.splits:
        d_train, d_meta = train, corpus.splits["dev"]
        if data_cfg.max_train:
            d_meta = d_meta.subset(range(min(max(data_cfg.max_train // 5, 1), len(d_meta))))
        meta_source = "dev split"
    else:
        tr_idx, me_idx = meta_split(len(train), data_cfg.meta_fraction, data_cfg.meta_seed, train.groups or None)
        d_train, d_meta = train.subset(tr_idx), train.subset(me_idx)
        meta_source = f"{data_cfg.meta_fraction:.0%} of train (seed {data_cfg.meta_seed})"
    parts = {"train": d_train, "meta": d_meta, "test": test}
    if feat_cfg.kind == "raw" or raw is not None:
        if raw is None:
            raise ValueError("features.kind=raw needs data.format=synthetic")
        X = {k: FeatureMatrix(raw[np.asarray(v.items, dtype=int)]) for k, v in parts.items()}
    elif feat_cfg.kind == "tfidf":
        X = tfidf_features(d_train.items, {k: v.items for k, v in parts.items()}, corpus.task,
                           max_features=feat_cfg.max_features, min_df=feat_cfg.min_df)
    elif feat_cfg.kind == "tokens":
        X = token_id_features(d_train.items, {k: v.items for k, v in parts.items()}, corpus.task,
                              max_length=feat_cfg.max_length, max_vocab=feat_cfg.max_features,
                              min_df=feat_cfg.min_df)
    elif feat_cfg.kind == "minilm":
        X = {k: FeatureMatrix(cached_minilm(v.items, corpus.task, feat_cfg.cache_dir,
                                            encoder_path=feat_cfg.encoder_path, max_length=feat_cfg.max_length,
                                            batch_size=feat_cfg.batch_size, progress_bar=progress_bar))
             for k, v in parts.items()}
    else:
        raise ValueError(f"features.kind must be tfidf, tokens, minilm or raw, got {feat_cfg.kind!r}")
    info = {"corpus": corpus.name, "n_train": len(d_train), "n_meta": len(d_meta), "n_test": len(test),
            "num_labels": corpus.num_labels, "meta_source": meta_source, "features": feat_cfg.kind,
            "feature_dim": X["train"].dim}
    log.info("task %s: %s", corpus.name, info)
    return PreparedTask(name=corpus.name, task=corpus.task, label_names=corpus.label_names,
                        parents=corpus.parents(), X=X, Y={k: v.Y for k, v in parts.items()}, info=info)


def run_method(task: PreparedTask, method: str, clf_cfg: ClassifierConfig, meta_cfg: MetaConfig,
               run_dir: str | Path, *, seed: int = 0, resume: str = "never", logger=None,
               progress_bar: bool = True, keep_last: int = 2) -> dict:
    """Run one method; returns {method_name: {test, meta, thresholds, ...}, ...} (private keys start with _)."""
    if method == "uniform":
        return run_baseline(task, "uniform", clf_cfg, run_dir, seed=seed, resume=resume, logger=logger,
                            progress_bar=progress_bar, keep_last=keep_last)
    if method == "inverse_freq":
        return run_baseline(task, "inverse_freq", clf_cfg, run_dir, seed=seed, resume=resume, logger=logger,
                            progress_bar=progress_bar, keep_last=keep_last)
    if method in ("meta", "meta_w", "meta_tau"):
        from dataclasses import replace

        cfg = replace(meta_cfg, learn_weights=method != "meta_tau", learn_thresholds=method != "meta_w")
        label_init = None
        if cfg.label_embedding == "minilm":
            from meta_multilabel.features import label_name_embeddings

            label_init = label_name_embeddings(task.label_names)
        elif cfg.label_embedding != "learned":
            raise ValueError(f"meta.label_embedding must be learned or minilm, got {cfg.label_embedding!r}")
        return run_meta(task, cfg, clf_cfg, run_dir, seed=seed, resume=resume, logger=logger,
                        progress_bar=progress_bar, keep_last=keep_last, label_init=label_init)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def public_results(results: dict) -> dict:
    """The JSON-safe part of :func:`run_method`'s output (drops model states and histories)."""
    return {k: v for k, v in results.items() if not k.startswith("_")}


def write_results(run_dir: str | Path, task: PreparedTask, results: dict, extra: dict | None = None) -> Path:
    path = Path(run_dir) / "results.json"
    payload = {"task": task.info, "label_names": task.label_names, "results": public_results(results),
               "wall_seconds": results.get("_wall_seconds"), **(extra or {})}
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return path


def configs_from(cfg) -> tuple[DataConfig, FeaturesConfig, ClassifierConfig, MetaConfig]:
    """The four typed configs from a Hydra/OmegaConf node or a plain dict with the same keys."""
    from common.hydra_utils import to_dataclass

    return (to_dataclass(cfg["data"], DataConfig), to_dataclass(cfg["features"], FeaturesConfig),
            to_dataclass(cfg["classifier"], ClassifierConfig), to_dataclass(cfg["meta"], MetaConfig))


def run_experiment(cfg, run_dir: str | Path, *, plain_config: dict | None = None) -> dict:
    """One run of ``cfg.method`` on ``cfg.data``: the body of ``python -m meta_multilabel.train``.

    Writes into ``run_dir``: checkpoints (every epoch / episode), ``metrics.jsonl`` + ``tb/``,
    ``run_info.json``, ``results.json`` (with the method, seed, meta-learning ``history`` and the ``protocol``
    stamp: what a reproduce profile reads back) and, for meta methods, the policy plots.
    """
    import torch

    from common.bench import peak_rss_bytes
    from common.logging import MetricLogger
    from common.runinfo import write_run_info
    from meta_multilabel.plots import plot_policies, plot_rewards

    data_cfg, feat_cfg, clf_cfg, meta_cfg = configs_from(cfg)
    trainer = cfg["trainer"]
    if trainer.get("num_threads"):
        torch.set_num_threads(int(trainer["num_threads"]))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = prepare_task(data_cfg, feat_cfg, data_dir=cfg["paths"].get("data_dir"),
                        progress_bar=bool(trainer.get("progress_bar", True)))
    logger = MetricLogger.from_config(run_dir, cfg["logger"])
    try:
        results = run_method(task, cfg["method"], clf_cfg, meta_cfg, run_dir, seed=int(trainer["seed"]),
                             resume=str(cfg.get("resume", "never")), logger=logger,
                             progress_bar=bool(trainer.get("progress_bar", True)),
                             keep_last=int(trainer.get("keep_last_checkpoints", 2)))
    finally:
        logger.close()
    extra = {"method": cfg["method"], "seed": int(trainer["seed"]), "reward": meta_cfg.reward,
             "recurrence": meta_cfg.recurrence, "label_order": meta_cfg.label_order,
             "peak_rss_bytes": peak_rss_bytes(), "history": results.get("_history"), "protocol": PROTOCOL}
    write_results(run_dir, task, results, extra)
    if "_history" in results:
        plot_rewards(results["_history"], run_dir / "reward_curve.png")
        name = next(k for k in results if not k.startswith("_"))
        plot_policies(task, results[name].get("weights"), results[name]["thresholds"], run_dir / "policies.png",
                      title=f"{task.name} {name}")
    write_run_info(run_dir, extra={"config": plain_config} if plain_config else None)
    return results
