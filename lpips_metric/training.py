"""Calibrating LPIPS on 2AFC judgments, as the reference does: heads (and optionally the trunk) plus the
ranking network G, trained with BCE(G(d0, d1), h); heads projected onto v >= 0 after every step.

Variants (the paper's):
    lin      trunk frozen (ImageNet, or random with trunk="random"), heads + G trained
    tune     trunk initialised from ImageNet and trained with the heads
    scratch  trunk randomly initialised and trained with the heads

Differences from the reference, all deliberate: the reference patch goes through the trunk once per
triplet (3 passes, not 4); only the heads are clamped (the reference also clamps SqueezeNet's Fire 1x1
kernels in tune/scratch); training data are [0, 1] tensors mapped to [-1, 1] inside.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .config import DataConfig, MetricTrainConfig
from .evaluate import evaluate_2afc, evaluate_jnd, lpips_distance
from .model import (
    LPIPS,
    RankingHead,
    clamp_heads_,
    imagenet_trunk_available,
    ranking_loss,
    trunk_cache_path,
)

VARIANTS = ("lin", "tune", "scratch")


def build_metric(cfg: MetricTrainConfig) -> LPIPS:
    """The LPIPS model to be trained: heads at PyTorch's default init clamped to >= 0."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"model.variant={cfg.variant!r}: expected one of {VARIANTS}")
    trunk = "random" if cfg.variant == "scratch" else resolve_trunk(cfg.trunk, cfg.net)
    if cfg.variant == "tune" and trunk == "random":
        raise ValueError("variant=tune starts from trained trunk weights; use variant=scratch for a random trunk")
    return LPIPS(cfg.net, cfg.version, trunk=trunk, heads="random", dropout=cfg.dropout,
                 tune_trunk=cfg.variant != "lin")


def resolve_trunk(trunk: str, net: str) -> str:
    """``auto`` -> imagenet when torchvision's cache holds the weights, else random (with a warning)."""
    if trunk != "auto":
        return trunk
    if imagenet_trunk_available(net):
        return "imagenet"
    warnings.warn(f"trunk=auto: no cached ImageNet weights for {net} ({trunk_cache_path(net)}); using a RANDOM "
                  "trunk. Set model.trunk=imagenet to require them.", stacklevel=2)
    return "random"


class RankedLPIPS(nn.Module):
    """The training-time network: the metric plus the ranking head G."""

    def __init__(self, metric: LPIPS, rank_hidden: int = 32):
        super().__init__()
        self.metric = metric
        self.rank = RankingHead(rank_hidden)

    def distances(self, ref: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor):
        """(d0, d1), each N x 1 x 1 x 1, from ONE trunk pass over [ref; p0; p1] (inputs in [0, 1])."""
        n = ref.shape[0]
        feats = self.metric.features(torch.cat([ref, p0, p1], dim=0) * 2 - 1)
        fr, f0, f1 = [f[:n] for f in feats], [f[n:2 * n] for f in feats], [f[2 * n:] for f in feats]

        def dist(fa, fb):
            terms = [m.mean(dim=(2, 3), keepdim=True) for m in self.metric.weigh(self.metric.layer_diffs(fa, fb))]
            return torch.stack(terms, 0).sum(0)

        return dist(fr, f0), dist(fr, f1)

    def forward(self, ref, p0, p1):
        return self.distances(ref, p0, p1)


def loss_fn(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """BCE ranking loss and the reference's training accuracy (ties count as 1 - h)."""
    core = model.module if hasattr(model, "module") else model
    d0, d1 = model(batch["ref"], batch["p0"], batch["p1"])
    h = batch["judge"].view_as(d0).float()
    loss = ranking_loss(core.rank, d0.float(), d1.float(), h)
    closer1 = (d1 < d0).float()
    acc = (closer1 * h + (1 - closer1) * (1 - h)).mean()
    return {"loss": loss, "acc": acc.detach()}


def make_optimizer(model: RankedLPIPS, cfg: MetricTrainConfig) -> torch.optim.Optimizer:
    """Adam(lr, betas=(beta1, 0.999)) over heads, G and (tune/scratch) the trunk; heads clamped after each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, 0.999))
    opt.register_step_post_hook(lambda *_: clamp_heads_(model.metric))
    return opt


def lr_factor(epoch: int, nepoch: int, nepoch_decay: int) -> float:
    """The reference's schedule as a multiplier for 0-based epoch ``epoch``.

    Its loop runs epochs 1..nepoch+nepoch_decay and, after every epoch e > nepoch, subtracts lr/nepoch_decay:
    so epochs 1..nepoch+1 run at the base rate and epoch nepoch+1+j at (1 - j/nepoch_decay).
    """
    j = epoch - nepoch  # 0-based epoch index nepoch is the reference's epoch nepoch+1
    return 1.0 if j <= 0 else max(0.0, 1.0 - j / nepoch_decay)


def make_scheduler(optimizer, steps_per_epoch: int, cfg: MetricTrainConfig):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step // max(1, steps_per_epoch), cfg.nepoch, cfg.nepoch_decay))


def evaluate_metric(metric: LPIPS, val_sets: dict, jnd_sets: dict | None = None, batch_size: int = 50,
                    sharded: bool = False) -> dict:
    """2AFC per val split (+ mean) and JND mAP per JND split (+ mean), with the metric in eval mode
    (``sharded``: every rank of a torchrun job scores a share of the batches, see ``evaluate._per_batch``)."""
    was_training = metric.training
    metric.eval()
    fn = lpips_distance(metric)
    out = {f"2afc_{k}": evaluate_2afc(ds, fn, batch_size, sharded)["score"] for k, ds in val_sets.items()}
    if out:
        out["2afc_mean"] = sum(out.values()) / len(out)
    if jnd_sets:
        jnd = {f"jnd_{k}": evaluate_jnd(ds, fn, batch_size, sharded)["score"] for k, ds in jnd_sets.items()}
        jnd["jnd_mean"] = sum(jnd.values()) / len(jnd)
        out.update(jnd)
    metric.train(was_training)
    return out


def export_metric(metric: LPIPS, path: str | os.PathLike, variant: str) -> Path:
    """Write the heads as ``path`` (safetensors) + ``<stem>.json`` (net, version, variant), which
    ``LPIPS(heads=path)`` loads; tune/scratch also write the trunk to ``<stem>.trunk.safetensors`` for
    ``LPIPS(trunk=...)``. No pickle: the files can be shared and loaded without trusting their maker."""
    from common.checkpoint import save_safetensors

    from .model import save_heads

    path = Path(path)
    # str(): a config's closed choices are str enums; the file's JSON holds builtin types
    extra = {"variant": str(variant)}
    if variant != "lin":
        trunk_path = path.with_name(f"{path.name.removesuffix('.safetensors')}.trunk.safetensors")
        save_safetensors(trunk_path, {k: v.cpu() for k, v in metric.trunk.state_dict().items()})
        extra["trunk_file"] = trunk_path.name
    return save_heads(metric, path, **extra)


def steps_per_epoch(n_items: int, batch_size: int, grad_accum: int = 1) -> int:
    return math.ceil(math.ceil(n_items / batch_size) / grad_accum)


def resolve_data_root(cfg: DataConfig, data_dir: str | None = None) -> Path:
    """The BAPPS-format root: cfg.root, or the synthetic set (written on first use; under torchrun by rank 0,
    which the other ranks wait for: they then find it finished and reuse it)."""
    if cfg.root:
        return Path(cfg.root)
    from common.distributed import barrier, is_main_process

    from .synthetic import generate

    def make() -> Path:
        return generate(cfg.synthetic_dir, n_train=cfg.n_train, n_val=cfg.n_val, n_jnd=cfg.n_jnd,
                        seed=cfg.synthetic_seed, data_dir=data_dir, train_splits=tuple(cfg.train_splits),
                        val_splits=tuple(cfg.val_splits), jnd_splits=tuple(cfg.jnd_splits))

    if is_main_process():
        make()
    barrier()
    return make()


def load_sets(cfg: DataConfig, data_dir: str | None = None, *, splits_train: Sequence[str] | None = None):
    from .data import jnd_splits, twoafc_splits, twoafc_train_set

    root = resolve_data_root(cfg, data_dir)
    train = twoafc_train_set(root, splits_train or cfg.train_splits, cfg.load_size, cfg.preload)
    val = twoafc_splits(root, "val", cfg.val_splits, cfg.load_size, cfg.preload)
    jnd = jnd_splits(root, cfg.jnd_splits, cfg.load_size, cfg.preload) if cfg.jnd_splits else {}
    return root, train, val, jnd


def train_metric(trainer_cfg, run_dir, model_cfg: MetricTrainConfig, data_cfg: DataConfig, *, logger_cfg=None,
                 resume: str = "never", config=None, data_dir: str | None = None):
    """Train with the common Trainer; returns (metric, FitResult, path of the exported heads). Under torchrun
    every rank trains, evaluates its share and loads the best weights; rank 0 alone exports them."""
    from common.distributed import barrier
    from common.trainer import Trainer

    _, train, val, jnd = load_sets(data_cfg, data_dir)
    torch.manual_seed(trainer_cfg.seed)
    model = RankedLPIPS(build_metric(model_cfg), model_cfg.rank_hidden)
    spe = steps_per_epoch(len(train), trainer_cfg.batch_size, trainer_cfg.grad_accum_steps)
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=config)
    eval_bs = trainer_cfg.eval_batch_size or 50
    result = trainer.fit(
        model, train, loss_fn,
        optimizer_fn=lambda m: make_optimizer(m, model_cfg),
        scheduler_fn=lambda opt, total: make_scheduler(opt, spe, model_cfg),
        eval_fn=lambda m: evaluate_metric(m.metric, val, jnd, eval_bs, sharded=True), eval_sharded=True,
    )
    barrier()  # rank 0 has written best.pt before any rank looks for it
    if trainer_cfg.monitor and trainer.ckpt.best_path.exists():
        trainer.load_best(model)
    heads = Path(run_dir) / "lpips_heads.safetensors"
    if trainer.is_main:
        export_metric(model.metric, heads, model_cfg.variant)
    return model.metric, result, heads
