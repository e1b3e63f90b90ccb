"""The four SynNet networks and their training on the common core.

Layout of each net (the reference's ``MLP`` with ``num_layers=5``, one dropout layer)::

    Linear(in, h) - BN - ReLU
    3 x [Linear(h, h) - BN - ReLU], Dropout(p) after the last of these only
    Linear(h, out)

act and rxn are classifiers (cross-entropy; softmax only at inference), rt1 and rt2 regress the
256-bit block embedding (MSE). Paper widths: act 1000, rt1 1200, rxn 3000, rt2 3000 (~188M parameters
at 4096-bit states).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.checkpoint import load_checkpoint, load_export, save_safetensors
from common.config import TrainerConfig
from common.distributed import barrier, gather_shards, shard
from common.trainer import FitResult, Trainer

from .featurize import NETWORKS, FeatureConfig, NetworkData, SparseRowDataset
from .knn import CandidateRanker

PAPER_HIDDEN = {"act": 1000, "rt1": 1200, "rxn": 3000, "rt2": 3000}
CLASSIFIERS = ("act", "rxn")


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, *, num_layers: int = 5, dropout: float = 0.5,
                 num_dropout_layers: int = 1):
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
        n_hidden_blocks = num_layers - 2
        for i in range(n_hidden_blocks):
            layers += [nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            if i >= n_hidden_blocks - num_dropout_layers:  # dropout on the last block(s) only
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, out_dim))
        super().__init__(*layers)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class NetConfig:
    hidden: dict[str, int] = field(default_factory=lambda: dict(PAPER_HIDDEN))
    num_layers: int = 5
    dropout: float = 0.5
    lr: float = 1e-4


def build_networks(feat: FeatureConfig, n_templates: int, cfg: NetConfig) -> dict[str, MLP]:
    return {net: MLP(feat.input_dim(net, n_templates), cfg.hidden[net], feat.output_dim(net, n_templates),
                     num_layers=cfg.num_layers, dropout=cfg.dropout) for net in NETWORKS}


# ---------------------------------------------------------------------------------------------------
# Losses and validation


def loss_fn_for(net: str):
    if net in CLASSIFIERS:
        def classification_loss(model, batch):
            logits = model(batch["x"])
            return {"loss": nn.functional.cross_entropy(logits, batch["y"]),
                    "acc": (logits.argmax(-1) == batch["y"]).float().mean()}
        return classification_loss

    def regression_loss(model, batch):
        return nn.functional.mse_loss(model(batch["x"]), batch["y"])
    return regression_loss


TOP_K = 10  # the "top-k" of rt1/rt2 validation: the true block among the 10 nearest candidates


@torch.no_grad()
def validate(model: nn.Module, data: NetworkData, net: str, *, batch_size: int = 512,
             device: torch.device | str = "cpu", sharded: bool = False,
             ranker: CandidateRanker | None = None) -> dict[str, float]:
    """act/rxn: accuracy and CE; rt1/rt2: MSE, and with a ``ranker`` the k-NN metrics decoding depends on:
    mean reciprocal rank (``mrr``), top-1 and top-10 accuracy of the true block among the candidates (all
    blocks for rt1, the template slot's partner list for rt2). ``sharded`` (every rank of a torchrun job
    calls it): the same batches are dealt to the ranks and their sums gathered and added in batch order."""
    was_training = model.training
    model.eval()
    ds = SparseRowDataset(data)
    starts = list(range(0, len(ds), batch_size))

    def sums(start: int) -> tuple[float, ...]:
        idx = list(range(start, min(start + batch_size, len(ds))))
        batch = ds.collate(idx)
        x, y = batch["x"].to(device), batch["y"].to(device)
        out = model(x)
        if net in CLASSIFIERS:
            return (float(nn.functional.cross_entropy(out, y, reduction="sum")), int((out.argmax(-1) == y).sum()),
                    len(y), 0.0, 0, 0, 0)
        mse = float(nn.functional.mse_loss(out, y, reduction="sum")) / y.shape[1]
        if ranker is None:
            return mse, 0, len(y), 0.0, 0, 0, 0
        groups = None if data.candidates is None else data.candidates[idx]
        r = ranker.ranks(out.float().cpu().numpy(), y.float().cpu().numpy(), groups)
        ranked = r > 0
        return (mse, 0, len(y), float((1.0 / r[ranked]).sum()), int((r == 1).sum()), int(((r > 0) & (r <= TOP_K)).sum()),
                int(ranked.sum()))

    per_batch = gather_shards([sums(s) for s in shard(starts)], len(starts)) if sharded else map(sums, starts)
    total, correct, n, rr, top1, topk, n_ranked = 0.0, 0, 0, 0.0, 0, 0, 0
    for t, c, k, a, b, d, m in per_batch:
        total, correct, n, rr, top1, topk, n_ranked = total + t, correct + c, n + k, rr + a, top1 + b, topk + d, \
            n_ranked + m
    model.train(was_training)
    if n == 0:
        return {}
    if net in CLASSIFIERS:
        return {"accuracy": correct / n, "loss": total / n}
    out = {"mse": total / n, "loss": total / n}
    if ranker is not None and n_ranked:
        out |= {"mrr": rr / n_ranked, "top1": top1 / n_ranked, f"top{TOP_K}": topk / n_ranked}
    return out


MONITOR = {"act": ("accuracy", "max"), "rxn": ("accuracy", "max"), "rt1": ("mrr", "max"), "rt2": ("mrr", "max")}
"""What selects each net's checkpoint and stops its training: the k-NN mean reciprocal rank for rt1/rt2 (MSE
only when no ranker is given, e.g. a library call without blocks), accuracy for act/rxn."""


def monitor_for(net: str, ranker: CandidateRanker | None) -> tuple[str, str]:
    if net in CLASSIFIERS or ranker is not None:
        return MONITOR[net]
    return "mse", "min"


def fit_network(net: str, model: nn.Module, train: NetworkData, valid: NetworkData | None, *,
                trainer_cfg: TrainerConfig, run_dir: str | os.PathLike, lr: float, logger_cfg=None,
                resume: str = "never", config: Mapping | None = None,
                ranker: CandidateRanker | None = None, min_epochs: int = 0) -> FitResult:
    """Train one net with ``common.trainer``: Adam, best checkpoint and early stopping on the net's
    validation metric (wired in, unlike the reference: :func:`monitor_for`), resumable with ``resume=auto``.

    ``min_epochs``: early stopping may not stop the net before this many epochs (the best checkpoint is
    tracked from the first). The k-NN rank of rt1 can stay at chance for tens of epochs while its MSE falls,
    then rise steeply; a patience counted from the first epoch stops it before it learns. Done as two legs
    of one resumable run: ``min_epochs`` without stopping, then the rest with the patience, which counts the
    evaluations without improvement of the first leg too (validation runs once per epoch)."""
    monitor, mode = monitor_for(net, ranker)
    cfg = dataclasses.replace(trainer_cfg, monitor=monitor if valid is not None else None, monitor_mode=mode)
    ds = SparseRowDataset(train)
    eval_fn = None
    if valid is not None and len(valid):
        eval_fn = lambda m: validate(m, valid, net, batch_size=cfg.eval_batch_size or 512, device=trainer.device,
                                     sharded=True, ranker=ranker)
    legs = [cfg]
    patience = cfg.early_stopping_patience
    if min_epochs and patience is not None and eval_fn is not None and (cfg.max_epochs or math.inf) > min_epochs:
        legs = [dataclasses.replace(cfg, max_epochs=min_epochs, early_stopping_patience=None), cfg]
    for i, leg in enumerate(legs):
        trainer = Trainer(leg, run_dir, logger_cfg=logger_cfg, resume=resume if i == 0 else "auto", config=config)
        result = trainer.fit(model, ds, loss_fn_for(net), optimizer_fn=lambda m: torch.optim.Adam(m.parameters(), lr=lr),
                             eval_fn=eval_fn, collate_fn=ds.collate, eval_sharded=True)
        if len(legs) == 2 and i == 0 and result.best_epoch is not None and result.epoch - result.best_epoch >= patience:
            result.stopped_reason = "early_stopping"  # the patience ran out within the first leg: stop here
            break
    barrier()  # under torchrun: rank 0 has written best.pt before any rank looks for it
    if trainer.ckpt.best_path.exists():
        trainer.load_best(model)
    model.to("cpu").eval()
    return result


# ---------------------------------------------------------------------------------------------------
# The bundle used by decoding: four nets + the featurization they were trained with

MODEL_FILE = "model.safetensors"
"""What a training run directory holds (+ ``model.json``); runs from before it hold ``model.pt``."""


def model_file(run_dir: str | os.PathLike) -> Path:
    """The model of a training run: ``model.safetensors``, else an older run's ``model.pt``; the
    ``model.safetensors`` path if neither exists (for the error message)."""
    run_dir = Path(run_dir)
    new, old = run_dir / MODEL_FILE, run_dir / "model.pt"
    return old if old.is_file() and not new.is_file() else new



@dataclass
class SynNetModel:
    nets: dict[str, MLP]
    feat: FeatureConfig
    n_templates: int
    net_cfg: NetConfig

    def eval(self) -> SynNetModel:
        for m in self.nets.values():
            m.eval()
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """``path`` (``.safetensors``, the nets' weights) + ``<stem>.json`` (feature config, template count,
        widths): no pickle, so a trained model can be shared and loaded without trusting its maker."""
        return save_safetensors(path, {"nets": {k: m.state_dict() for k, m in self.nets.items()},
                                       "feat": dataclasses.asdict(self.feat), "n_templates": self.n_templates,
                                       "net_cfg": dataclasses.asdict(self.net_cfg)})

    @classmethod
    def load(cls, path: str | os.PathLike, *, trust: bool | None = None) -> SynNetModel:
        """Load :meth:`save`'s files, a run directory holding them, or an older pickle ``model.pt`` (read as
        plain weights, never unpickled unless ``trust=True``)."""
        path = Path(path)
        if path.is_dir():
            path = model_file(path)
        ck = load_export(path, map_location="cpu", trust=trust)
        feat, net_cfg = FeatureConfig(**ck["feat"]), NetConfig(**ck["net_cfg"])
        nets = build_networks(feat, ck["n_templates"], net_cfg)
        for k, m in nets.items():
            m.load_state_dict(ck["nets"][k])
        return cls(nets, feat, ck["n_templates"], net_cfg).eval()

    def parameter_counts(self) -> dict[str, int]:
        return {k: n_parameters(m) for k, m in self.nets.items()}


def paper_parameter_counts(n_templates: int = 91) -> dict[str, int]:
    """Parameter counts of the paper-sized nets (4096-bit states, 256-bit embeddings), no allocation."""
    feat = FeatureConfig()
    out = {}
    for net, h in PAPER_HIDDEN.items():
        i, o = feat.input_dim(net, n_templates), feat.output_dim(net, n_templates)
        out[net] = (i * h + h) + 2 * h + 3 * (h * h + h + 2 * h) + (h * o + o)
    return out


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Released ICLR checkpoints (PyTorch Lightning files of SynNet's MLP, whose layers sit in `self.layers`)


def import_reference_checkpoint(path: str | os.PathLike, net: str, *, n_templates: int = 91,
                                num_layers: int = 5, trust: bool | None = None) -> MLP:
    """Load one released SynNet network (act/rt1/rxn/rt2 ``.ckpt``) into our MLP at the paper's widths.

    The reference stores no hyperparameters, so the widths come from the paper's dimension table and
    every tensor shape is checked against it. Keys ``layers.<i>.<param>`` map to our ``<i>.<param>``
    (same module order). Not verified against the released files in this repository (they are not in
    the shared data); verified on synthetic files of that layout.

    The file is read as plain weights, never unpickled (a released checkpoint is a third party's file by
    design); one that holds other objects (a Lightning version's hyperparameter classes) is refused with
    a message, unless ``trust=True``.
    """
    ck = load_checkpoint(path, map_location="cpu", trust=trust)
    if not isinstance(ck, dict):
        raise ValueError(f"{path}: holds a {type(ck).__name__}, not a checkpoint dict")
    state = ck.get("state_dict", ck)
    mapped = {k.removeprefix("layers."): v for k, v in state.items() if k.startswith("layers.")}
    if not mapped:
        raise ValueError(f"{path}: no 'layers.*' tensors; keys start with {sorted(state)[:5]}")
    feat = FeatureConfig()
    model = MLP(feat.input_dim(net, n_templates), PAPER_HIDDEN[net], feat.output_dim(net, n_templates),
                num_layers=num_layers)
    expected = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in mapped.items()
           if k in expected and v.shape != expected[k].shape]
    missing = sorted(set(expected) - set(mapped))
    if bad or missing:
        raise ValueError(f"{path} does not fit the paper's {net} network: shape mismatches {bad[:3]}, "
                         f"missing {missing[:3]}")
    model.load_state_dict(mapped)
    return model.eval()
