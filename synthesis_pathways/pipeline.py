"""The end-to-end training pipeline: sample trees -> split -> featurize -> fit act, rt1, rxn, rt2.

Every stage writes into the run directory and is skipped when its output exists, so a killed run
continues with ``resume=auto``:

    <run_dir>/cache/                   block-template match matrix (keyed by pool + templates)
    <run_dir>/trees/shard_*.jsonl      sampled trees (one file per seeded shard, atomic)
    <run_dir>/features/{train,valid,test}.npz and split.json
    <run_dir>/nets/<net>/              common.trainer run of each network (checkpoints, metrics.jsonl, tb/)
    <run_dir>/model.safetensors, .json the four trained nets + feature config (what decoding loads; no pickle)
    <run_dir>/pipeline.json            stage statistics and wall-clock per stage

Under ``torchrun`` rank 0 alone samples, featurizes and writes; the other ranks wait for it, then every rank
reads the features and the nets train with DDP (sharded validation); rank 0 writes the model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import ResumeError
from common.config import TrainerConfig
from common.distributed import barrier, is_main_process
from common.logging import get_logger

from .chem import morgan_bits
from .data import load_building_blocks, load_templates
from .featurize import NETWORKS, FeatureConfig, Featurizer, StepData, network_data
from .knn import CandidateRanker
from .model import MODEL_FILE, NetConfig, SynNetModel, build_networks, fit_network, monitor_for, n_parameters
from .sampling import iter_trees, sample_to_disk, split_indices
from .space import ReactionSpace
from .syntree import SyntheticTree

log = get_logger(__name__)
SPLITS = ("train", "valid", "test")


@dataclass
class PipelineConfig:
    templates: str = "hb"
    """Template file or dataset key (hb, synformer)."""
    blocks: str = "enamine_1913"
    """Building-block file (.smi/.txt/.csv/.sdf[.gz]) or dataset key (enamine_1913, wuxi)."""
    blocks_column: str | None = None
    """SMILES column of a CSV pool (default: smiles)."""
    filter_blocks: bool = True
    """Keep only blocks that match some template slot (the reference's BuildingBlockFilter)."""
    attempts: int = 2000
    """Sampling attempts (trees are dropped on failure and by the QED filter)."""
    shard_size: int = 250
    """Attempts per seeded shard: the unit of parallelism and of resume."""
    workers: int = 1
    """Sampling processes (results do not depend on it)."""
    max_steps: int = 15
    qed_filter: bool = True
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    nbits: int = 4096
    radius: int = 2
    emb_bits: int = 256
    rt2_keep_unimolecular: bool = False
    """True: train rt2 on unimolecular steps with a zero target, as the reference does."""
    hidden: dict[str, int] = field(default_factory=lambda: {"act": 1000, "rt1": 1200, "rxn": 3000, "rt2": 3000})
    num_layers: int = 5
    dropout: float = 0.5
    lr: float = 1e-4
    lr_grid: list[float] = field(default_factory=list)
    """Learning rates tried for every net, each trained to early stopping from the same initial weights; the
    one with the best validation monitor (MRR for rt1/rt2, accuracy for act/rxn) is kept. Empty: ``lr`` only."""
    min_epochs: int = 0
    """Epochs before early stopping may stop a net (its best checkpoint is tracked from the first epoch)."""
    networks: list[str] = field(default_factory=lambda: list(NETWORKS))
    """Which networks to fit (all four are needed to decode)."""
    stages: list[str] = field(default_factory=lambda: ["sample", "featurize", "fit"])

    @property
    def feat(self) -> FeatureConfig:
        return FeatureConfig(self.nbits, self.radius, self.emb_bits, self.radius)

    @property
    def net_cfg(self) -> NetConfig:
        return NetConfig(dict(self.hidden), self.num_layers, self.dropout, self.lr)


def load_space(templates: str = "hb", blocks: str = "enamine_1913", *, blocks_column: str | None = None,
               data_dir=None, cache_dir=None, filter_blocks: bool = True) -> ReactionSpace:
    """Templates + the block pool (canonical, de-duplicated), with the block-template match matrix (cached
    in ``cache_dir``); ``filter_blocks`` keeps only blocks that match some template slot, as the reference."""
    tpl = load_templates(templates, data_dir)
    bbs = load_building_blocks(blocks, column=blocks_column, data_dir=data_dir)
    space = ReactionSpace(tpl, bbs.smiles, cache_dir=cache_dir)
    return space.filtered() if filter_blocks else space


def space_for_run(run_cfg: dict, *, data_dir=None, cache_dir=None, templates: str | None = None,
                  blocks: str | None = None) -> ReactionSpace:
    """The space a training run used, from its ``pipeline.json`` config (a run from before the block filter
    had none, and used every block); ``templates``/``blocks`` override the run's files."""
    return load_space(templates or run_cfg.get("templates", "hb"), blocks or run_cfg.get("blocks", "enamine_1913"),
                      blocks_column=run_cfg.get("blocks_column"), data_dir=data_dir, cache_dir=cache_dir,
                      filter_blocks=run_cfg.get("filter_blocks", False))


def load_trees(run_dir: str | os.PathLike, split: str) -> list[SyntheticTree]:
    """Trees of one split (the split indices are saved by the featurize stage)."""
    run_dir = Path(run_dir)
    idx = set(json.loads((run_dir / "features" / "split.json").read_text())[split])
    return [t for i, t in enumerate(iter_trees(run_dir / "trees")) if i in idx]


def tree_nodes(run_dir: str | os.PathLike, splits: tuple[str, ...] = ("train", "valid")) -> set[str]:
    """Canonical SMILES of every node (blocks, intermediates, roots) of every tree in ``splits``: what the
    networks saw in training (train) and in model selection (valid)."""
    run_dir = Path(run_dir)
    parts = json.loads((run_dir / "features" / "split.json").read_text())
    idx = set().union(*(parts[s] for s in splits))
    return {n for i, t in enumerate(iter_trees(run_dir / "trees")) if i in idx for n in t.nodes()}


def _improves(value: float | None, best: float | None, mode: str) -> bool:
    if value is None:
        return False
    return best is None or (value > best if mode == "max" else value < best)


def block_ranker(space: ReactionSpace, feat: FeatureConfig) -> CandidateRanker:
    """Validation ranking of rt1/rt2 outputs among the space's block embeddings and partner lists."""
    emb = np.stack([morgan_bits(b, feat.emb_radius, feat.emb_bits) for b in space.blocks])
    return CandidateRanker(emb, space.partners)


def run_pipeline(cfg: PipelineConfig, run_dir: str | os.PathLike, *, trainer_cfg: TrainerConfig,
                 data_dir=None, resume: str = "never", logger_cfg=None, progress: bool = True) -> dict:
    run_dir = Path(run_dir)
    if resume == "never" and any((run_dir / "trees").glob("shard_*.jsonl")):
        raise ResumeError(f"{run_dir} already holds sampled trees; pass resume=auto to continue it, "
                          "or choose another name=... / paths.output_dir=...")
    info_path = run_dir / "pipeline.json"
    info: dict = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["config"] = dataclasses.asdict(cfg)
    barrier()  # under torchrun: every rank has looked before rank 0 writes
    main = is_main_process()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    def save_info():
        if main:
            info_path.write_text(json.dumps(info, indent=1, default=str))

    def space_now():
        return load_space(cfg.templates, cfg.blocks, blocks_column=cfg.blocks_column, data_dir=data_dir,
                          cache_dir=run_dir / "cache", filter_blocks=cfg.filter_blocks)

    # Data (the match cache, trees, features) come from rank 0; the other ranks wait, then read them.
    if main:
        space = space_now()
        _prepare_data(cfg, run_dir, space, info, save_info, trainer_cfg.seed, progress)
    barrier()
    if not main:
        space = space_now()  # the cache rank 0 wrote: loaded, not recomputed
    feat_dir = run_dir / "features"

    if "fit" in cfg.stages:
        train = StepData.load(feat_dir / "train.npz")
        valid = StepData.load(feat_dir / "valid.npz")
        # the nets' initial weights come from the global RNG, which torch seeds at random per process: seed it
        # here, or two runs of the same config train different nets (the Trainer seeds only inside fit)
        torch.manual_seed(trainer_cfg.seed)
        nets = build_networks(cfg.feat, space.n_templates, cfg.net_cfg)
        ranker = block_ranker(space, cfg.feat)
        info.setdefault("fit", {})
        grid = list(cfg.lr_grid) or [cfg.lr]
        for net in cfg.networks:
            tr = network_data(train, net, space.n_templates, rt2_keep_unimolecular=cfg.rt2_keep_unimolecular)
            va = network_data(valid, net, space.n_templates, rt2_keep_unimolecular=cfg.rt2_keep_unimolecular)
            if len(tr) == 0:
                raise ValueError(f"no training rows for {net}: sample more trees (attempts={cfg.attempts})")
            monitor, mode = monitor_for(net, ranker)
            init = copy.deepcopy(nets[net].state_dict())  # every learning rate starts from the same weights
            tried, best = {}, None
            for lr in grid:
                model = nets[net]
                model.load_state_dict(init)
                # one folder per learning rate when there is a grid (a single lr keeps the old layout)
                net_dir = run_dir / "nets" / net / (f"lr_{lr:g}" if len(grid) > 1 else "")
                result = fit_network(net, model, tr, va if len(va) else None, trainer_cfg=trainer_cfg,
                                     run_dir=net_dir, lr=lr, logger_cfg=logger_cfg, resume=resume,
                                     config={"pipeline": dataclasses.asdict(cfg), "net": net, "lr": lr},
                                     ranker=ranker, min_epochs=cfg.min_epochs)
                value = (result.best_metrics or {}).get(monitor)
                tried[lr] = {"best": result.best_metrics, "stopped": result.stopped_reason, "epoch": result.epoch,
                             "best_epoch": result.best_epoch, "step": result.step,
                             "wall_seconds": result.wall_seconds_total}
                if best is None or _improves(value, best[1], mode):  # ties keep the earlier learning rate
                    best = (lr, value, copy.deepcopy(model.state_dict()), result)
            lr, _, state, result = best
            nets[net].load_state_dict(state)
            nets[net].eval()
            info["fit"][net] = {"rows": [len(tr), len(va)], "parameters": n_parameters(nets[net]),
                                "monitor": monitor, "lr": lr, "lr_grid": {f"{k:g}": v for k, v in tried.items()},
                                "step": result.step, "epoch": result.epoch, "best_epoch": result.best_epoch,
                                "evals_without_improvement": (result.epoch - result.best_epoch
                                                              if result.best_epoch is not None else None),
                                "stopped": result.stopped_reason, "best": result.best_metrics,
                                "wall_seconds": sum(v["wall_seconds"] for v in tried.values())}
            save_info()
        if set(cfg.networks) == set(NETWORKS) and main:
            SynNetModel(nets, cfg.feat, space.n_templates, cfg.net_cfg).save(run_dir / MODEL_FILE)
    save_info()
    return info


def _prepare_data(cfg: PipelineConfig, run_dir: Path, space: ReactionSpace, info: dict, save_info, seed: int,
                  progress: bool) -> None:
    """The sample and featurize stages (each skipped when its output exists)."""
    info["space"] = {"templates": space.n_templates, "blocks": len(space.blocks),
                     "blocks_in_pool": space.unfiltered_blocks,
                     "usable_templates": int(space.usable_templates().sum()),
                     "match_seconds": space.match_seconds}

    if "sample" in cfg.stages:
        t0 = time.time()
        stats = sample_to_disk(space, run_dir / "trees", attempts=cfg.attempts, seed=seed,
                               shard_size=cfg.shard_size, workers=cfg.workers, max_steps=cfg.max_steps,
                               qed_filter=cfg.qed_filter, progress=progress)
        # a rerun reads finished shards back in moments: add its leg to the wall of the earlier sessions
        wall = info.get("sample", {}).get("wall_seconds", 0.0) + time.time() - t0
        info["sample"] = stats.to_dict() | {"wall_seconds": wall}
        save_info()
        log.info("sampling: %d attempts, %d trees kept", stats.attempts, stats.kept)

    feat_dir = run_dir / "features"
    featurizer = Featurizer(cfg.feat, space.bimolecular_mask(), space.partner_slot)
    if "featurize" in cfg.stages and not all((feat_dir / f"{s}.npz").exists() for s in SPLITS):
        t0 = time.time()
        trees = list(iter_trees(run_dir / "trees"))
        parts = split_indices(len(trees), cfg.split, seed=seed)
        feat_dir.mkdir(parents=True, exist_ok=True)
        (feat_dir / "split.json").write_text(json.dumps({s: p.tolist() for s, p in zip(SPLITS, parts)}))
        rows = {}
        for name, part in zip(SPLITS, parts):
            data = featurizer.featurize(trees[i] for i in part)
            data.save(feat_dir / f"{name}.npz")
            rows[name] = {"trees": len(part), "steps": len(data)}
        dt = time.time() - t0
        info["featurize"] = {"rows": rows, "wall_seconds": dt, "trees_per_second": len(trees) / max(dt, 1e-9)}
        save_info()

