"""One baseline run, end to end and without Hydra: data and weak labels -> model -> ``common.trainer``
-> best checkpoint -> test scores (``final_metrics.json`` in the run directory).

The configuration is four small dataclasses (``DataConfig``, ``MethodConfig``, ``ModelConfig``,
``OptimConfig``, in ``label_efficient_seg.config``); the Hydra shell fills them from ``conf/`` and
``reproduce.py`` builds them directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.checkpoint import seed_everything
from common.config import ConfigError
from common.distributed import barrier, gather_shards, is_main_process, shard
from common.logging import get_logger

from . import data as D
from . import methods as Mth
from .config import DataConfig, MethodConfig, ModelConfig, OptimConfig
from .evaluate import adapt_bn_statistics, evaluate_label_maps, evaluate_model, predict_logits
from .losses import cam_pseudo_labels, class_activation_maps
from .metrics import IGNORE_INDEX
from .model import ClusterNet, DualNet, MeanTeacher, UNet, count_parameters
from .weak_labels import ANNOTATION_SECONDS, image_tags, labelled_subset

log = get_logger("label_efficient_seg")

METHODS = {
    # name: (supervision type of the survey, label kind used for training)
    "full": ("full (upper bound)", "full"),
    "subset": ("full on the labelled subset (lower bound)", "full"),
    "fixmatch": ("incomplete: semi-supervised", "full"),
    "mean_teacher": ("incomplete: semi-supervised", "full"),
    "cps": ("incomplete: semi-supervised", "full"),
    "cam": ("inexact: image tags", "tags"),
    "boxinst": ("inexact: boxes", "boxes"),
    "filled_boxes": ("inexact: boxes (box = mask)", "boxes"),
    "scribbles": ("inexact: scribbles", "scribbles"),
    "points": ("inexact: points", "points"),
    "noisy": ("inaccurate: noisy masks", "noisy"),
    "source_only": ("incomplete: domain adaptation (source only)", "full"),
    "minent": ("incomplete: domain adaptation (MinEnt)", "full"),
    "oracle": ("incomplete: domain adaptation (target oracle)", "full"),
    "iic": ("none: unsupervised (IIC)", "none"),
}
SEMI = ("fixmatch", "mean_teacher", "cps")
DA = ("source_only", "minent", "oracle")


def from_mapping(cls, node) -> Any:
    """A dataclass from a dict or OmegaConf node, ignoring unknown keys' absence (defaults fill in)."""
    if node is None:
        return cls()
    if isinstance(node, cls):
        return node
    get = node.get if hasattr(node, "get") else (lambda k, d=None: getattr(node, k, d))
    known = {f.name for f in fields(cls)}
    keys = list(node.keys()) if hasattr(node, "keys") else []
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(known)}")
    return cls(**{f.name: get(f.name) for f in fields(cls) if f.name in keys})


# ----------------------------------------------------------------------------- data assembly

@dataclass
class Splits:
    """The splits of one run. ``val`` selects checkpoints, ``test`` is reported; ``names`` says in words
    where each comes from (written to ``final_metrics.json`` and the README). Selection never touches a
    reported image: :func:`check_disjoint` is asserted by every run."""

    train: D.SegSet
    val: D.SegSet
    test: D.SegSet
    target_train: D.SegSet | None = None
    notes: list[str] = field(default_factory=list)
    target_val: D.SegSet | None = None
    """Labelled target validation images (domain adaptation), disjoint from target_train and test."""
    names: dict[str, str] = field(default_factory=dict)
    """Human-readable origin of each split: train, val, test, target_train, target_val."""


def _split_indices(n: int, seed: int, fractions=(0.7, 0.1, 0.2)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(round(n * fractions[0])), int(round(n * (fractions[0] + fractions[1])))
    return np.sort(perm[:a]), np.sort(perm[a:b]), np.sort(perm[b:])


def _keys(ds: D.SegSet) -> set[tuple[str, str]]:
    """Image identities of a split: (dataset, image id)."""
    base = ds.name.removesuffix("_shifted")
    return {(base, str(i)) for i in ds.ids}


def check_disjoint(selection: D.SegSet, *others: tuple[str, D.SegSet | None], what: str = "val") -> None:
    """Raise ``ValueError`` when the selection split shares an image with any of ``others``
    (name, split) pairs: checkpoints are chosen on images no reported number and no label used in
    training comes from."""
    keys = _keys(selection)
    if len(keys) != len(selection):
        raise ValueError(f"the {what} split has {len(selection)} images but {len(keys)} distinct ids")
    for name, other in others:
        if other is None:
            continue
        shared = keys & _keys(other)
        if shared:
            raise ValueError(f"the {what} split shares {len(shared)} image(s) with the {name} split, "
                             f"e.g. {sorted(shared)[:3]}: selection must not see reported or training images")


def load_splits(dc: DataConfig, data_dir=None, seed: int = 0) -> Splits:
    """Train / val / test (and, for domain adaptation, the unlabelled target training images and a
    labelled target validation split) for a data config. Every dataset gets a validation split disjoint
    from its test split: CamVid's own val; the polyp sets' seeded 70/10/20 split; for DSB2018 and the
    CamVid dusk target, a share of the training images (``dc.val_fraction``)."""
    def lim(s: D.SegSet, n: int | None) -> D.SegSet:
        """n images spread evenly over the split (CamVid lists are ordered by sequence: dusk 0001TP
        first), so a limited run still sees every sequence."""
        if n is None or n >= len(s):
            return s
        return s.subset(np.unique(np.linspace(0, len(s) - 1, n).round().astype(int)))

    if not 0 < dc.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {dc.val_fraction}")
    if dc.dataset == "shapes":
        mk = lambda n, s: D.synthetic_shapes(n, dc.shapes_size, dc.shapes_classes, seed=s)
        n_eval = max(8, dc.shapes_n // 4)
        splits = Splits(mk(dc.shapes_n, 1000 + seed), mk(n_eval, 2000), mk(n_eval, 3000),
                        names={"train": "synthetic shapes (seed 1000 + run seed)", "val": "synthetic shapes (seed 2000)",
                               "test": "synthetic shapes (seed 3000)"})
        if dc.target is not None:  # a synthetic domain shift: darker, lower-contrast images
            splits.target_train = D.shift_domain(mk(dc.shapes_n, 4000 + seed))
            splits.target_val = D.shift_domain(mk(n_eval, 5000))
            splits.test = D.shift_domain(splits.test)
            splits.names.update(target_train="shifted shapes (seed 4000 + run seed)",
                                target_val="shifted shapes (seed 5000)", test="shifted shapes (seed 3000)")
        return splits
    if dc.dataset == "camvid":
        if dc.target == "camvid_dusk":
            day = ["0006R0", "0016E5"]
            train = D.read_camvid("train", data_dir, sequences=day)
            dusk = D.read_camvid("train", data_dir, sequences=["0001TP"])
            order = np.argsort(dusk.ids)  # frame numbers: time order
            n_val = max(1, int(round(dc.val_fraction * len(dusk))))
            tgt, tgt_val = dusk.subset(np.sort(order[:-n_val])), dusk.subset(np.sort(order[-n_val:]))
            test = D.read_camvid("test", data_dir, sequences=["0001TP"])
            return Splits(lim(train, dc.train_limit), lim(D.read_camvid("val", data_dir), dc.eval_limit),
                          lim(test, dc.eval_limit), lim(tgt, dc.train_limit),
                          [f"target 0001TP (dusk): val = its last {n_val} training frames in time order"],
                          target_val=lim(tgt_val, dc.eval_limit),
                          names={"train": "CamVid train, day sequences 0006R0 + 0016E5",
                                 "val": "CamVid val (0016E5, day)",
                                 "target_train": f"CamVid train 0001TP (dusk) minus its last {n_val} frames",
                                 "target_val": f"CamVid train 0001TP, last {n_val} frames (dusk)",
                                 "test": "CamVid test 0001TP (dusk)"})
        return Splits(lim(D.read_camvid("train", data_dir), dc.train_limit),
                      lim(D.read_camvid("val", data_dir), dc.eval_limit),
                      lim(D.read_camvid("test", data_dir), dc.eval_limit),
                      names={"train": "CamVid train (367)", "val": "CamVid val (101)", "test": "CamVid test (233)"})
    if dc.dataset in ("kvasir", "cvc"):
        full = D.read_kvasir(data_dir, dc.size) if dc.dataset == "kvasir" else D.read_cvc(data_dir, dc.size)
        tr, va, te = _split_indices(len(full), dc.split_seed)
        label = "Kvasir-SEG" if dc.dataset == "kvasir" else "CVC-ClinicDB"
        splits = Splits(lim(full.subset(tr), dc.train_limit), lim(full.subset(va), dc.eval_limit),
                        lim(full.subset(te), dc.eval_limit),
                        notes=[f"{dc.dataset}: fixed 70/10/20 split, seed {dc.split_seed}"],
                        names={k: f"{label} {k} (70/10/20, seed {dc.split_seed})" for k in ("train", "val", "test")})
        if dc.target is not None:
            if dc.dataset != "kvasir" or dc.target != "cvc":
                raise ValueError(f"unsupported domain-adaptation pair {dc.dataset} -> {dc.target}")
            tgt = D.read_cvc(data_dir, dc.size)
            ttr, tva, tte = _split_indices(len(tgt), dc.split_seed)
            splits.target_train = lim(tgt.subset(ttr), dc.train_limit)
            splits.target_val = lim(tgt.subset(tva), dc.eval_limit)
            splits.test = lim(tgt.subset(tte), dc.eval_limit)
            splits.names.update({f"target_{k}": f"CVC-ClinicDB {k} (70/10/20, seed {dc.split_seed})"
                                 for k in ("train", "val")},
                                test=f"CVC-ClinicDB test (70/10/20, seed {dc.split_seed})")
            splits.notes.append("DA: test = CVC-ClinicDB test split")
        return splits
    if dc.dataset == "dsb":
        full = D.read_dsb(data_dir)
        k = dc.fold % 5
        folds = np.array_split(np.random.default_rng(dc.split_seed).permutation(len(full)), 5)
        test_idx = np.sort(folds[k])
        rest = np.concatenate([f for j, f in enumerate(folds) if j != k])
        rest = rest[np.random.default_rng([dc.split_seed, k]).permutation(len(rest))]
        n_val = max(1, int(round(dc.val_fraction * len(rest))))
        val_idx, train_idx = np.sort(rest[:n_val]), np.sort(rest[n_val:])
        return Splits(lim(full.subset(train_idx), dc.train_limit), lim(full.subset(val_idx), dc.eval_limit),
                      lim(full.subset(test_idx), dc.eval_limit),
                      notes=[f"DSB2018: 5-fold CV, fold {dc.fold}; val = {n_val} images of the training folds"],
                      names={"train": f"DSB2018 training folds minus val ({len(train_idx)})",
                             "val": f"DSB2018 val: {n_val} images carved from the training folds",
                             "test": f"DSB2018 fold {k} of 5 ({len(test_idx)})"})
    raise ValueError(f"unknown dataset {dc.dataset!r} (camvid | kvasir | cvc | dsb | shapes)")


# ----------------------------------------------------------------------------- the run

def build_model(mc: MethodConfig, model_cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    if mc.name == "iic":
        net = ClusterNet(num_classes, mc.overcluster_factor * num_classes, model_cfg.base, model_cfg.depth)
    elif mc.name == "mean_teacher":
        net = MeanTeacher(UNet(num_classes, model_cfg.base, model_cfg.depth))
    elif mc.name == "cps":
        net = DualNet(UNet(num_classes, model_cfg.base, model_cfg.depth),
                      UNet(num_classes, model_cfg.base, model_cfg.depth))
    else:
        net = UNet(num_classes, model_cfg.base, model_cfg.depth)
    return Mth.attach_step_counter(net)


def optimizer_factory(oc: OptimConfig) -> Callable:
    def make(model):
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=oc.lr, weight_decay=oc.weight_decay)
    return make


def poly_scheduler_factory(oc: OptimConfig) -> Callable:
    """Poly decay ``(1 - it / T)^power`` stepped per optimizer step."""
    def make(optimizer, total_steps):
        t = max(1, int(total_steps))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / t) ** oc.poly_power)
    return make


def _score_key(num_classes: int) -> str:
    return "mdice" if num_classes == 2 else "miou"


def _eval_metric_names(num_classes: int, clusters: bool, instances: bool) -> list[str]:
    """The names ``make_eval_fn``'s function returns (so the trainer checks ``trainer.monitor`` without an
    extra evaluation before the first step)."""
    names = {"miou", "pixel_acc", "mean_class_acc", "score"}  # metrics.SegScores.as_dict
    if num_classes == 2 and not clusters:
        names |= {"mdice", "miou_img", "dice_pooled"}
        if instances:
            names |= {"object_f1", "aji"}
    return sorted(names)


def make_eval_fn(ds: D.SegSet, device, num_clusters: int | None = None, prefix: str = "",
                 adapt_images: list[np.ndarray] | None = None) -> Callable:
    """The trainer's validation: sharded over the ranks of a torchrun job (``fit(eval_sharded=True)``).
    With ``adapt_images`` the model is scored with BatchNorm statistics re-estimated on those images
    (AdaBN on the target training images; ``test_bn=target``), on a copy: training is unaffected."""
    key = _score_key(ds.num_classes) if num_clusters is None else "miou"

    def eval_fn(model):
        if adapt_images is not None:
            model = adapt_bn_statistics(model, adapt_images, device)
        res = evaluate_model(model, ds, device, num_clusters=num_clusters, sharded=True)
        res.pop("predictions")
        return {f"{prefix}{k}": v for k, v in res.items()} | {f"{prefix}score": res[key]}
    return eval_fn


def _trainer_cls():
    from common.trainer import Trainer  # imported lazily: the core trainer is the only loop we use
    return Trainer


def _estimate_steps(n_items: int, tc) -> int:
    per_epoch = max(1, n_items // max(1, tc.batch_size * tc.grad_accum_steps))
    total = per_epoch * (tc.max_epochs or 10**9)
    return min(total, tc.max_steps) if tc.max_steps else total


# (start, length) as fractions of training and the shape of each method's ramp, when the config leaves
# them null. Semi-supervised consistency: a supervised warm-up, then Laine & Aila's sigmoid ramp (Mean
# Teacher's schedule; CPS code such as SSL4MIS uses the same ramp). BoxInst: its linear warm-up over the
# first 10 % of training. Scribbles / points: the pairwise term starts once partial CE has fitted the
# sparse labels (30 % of training) and ramps linearly to full weight by 50 %.
RAMP_DEFAULTS = {
    "mean_teacher": (0.1, 0.3, "sigmoid"),
    "cps": (0.1, 0.3, "sigmoid"),
    "boxinst": (0.0, 0.1, "linear"),
    "scribbles": (0.3, 0.2, "linear"),
    "points": (0.3, 0.2, "linear"),
}


def make_ramp(mc: MethodConfig, total_steps: int) -> Mth.Ramp:
    """The method's weight schedule in optimizer steps (config values override ``RAMP_DEFAULTS``)."""
    start, length, shape = RAMP_DEFAULTS.get(str(mc.name), (0.0, 0.0, "linear"))
    start = start if mc.ramp_start_fraction is None else mc.ramp_start_fraction
    length = length if mc.warmup_fraction is None else mc.warmup_fraction
    shape = shape if mc.ramp_shape is None else getattr(mc.ramp_shape, "value", mc.ramp_shape)
    for what, v in (("method.ramp_start_fraction", start), ("method.warmup_fraction", length)):
        if not 0 <= v <= 1:
            raise ConfigError(f"{what} must be in [0, 1], got {v}")
    return Mth.Ramp(int(round(start * total_steps)), int(round(length * total_steps)), shape)


def class_balance_weights(weak: list[np.ndarray], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights of the labelled pixels of a split, ``w_c = N / (K n_c)`` over the K
    classes that carry labels (0 for the others), so every labelled class weighs the same in partial CE."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for w in weak:
        lab = w[w != IGNORE_INDEX]
        counts += np.bincount(lab.ravel(), minlength=num_classes)[:num_classes]
    present = counts > 0
    out = np.zeros(num_classes)
    out[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(out, dtype=torch.float32)


def _objective(mc: MethodConfig, ramp: Mth.Ramp, class_weight: torch.Tensor | None = None):
    n = mc.name
    if n in ("full", "subset", "filled_boxes", "source_only", "oracle"):
        return Mth.Supervised("weak")
    if n == "noisy":
        return Mth.Supervised("weak", mc.loss, mc.gce_q, mc.sce_alpha, mc.sce_beta)
    if n in ("scribbles", "points"):
        return Mth.PartialCEPairwise(mc.pairwise_weight, mc.pairwise_threshold, ramp=ramp, class_weight=class_weight)
    if n == "boxinst":
        return Mth.BoxSupervision(mc.pairwise_weight, mc.pairwise_threshold, ramp=ramp)
    if n == "fixmatch":
        return Mth.FixMatch(mc.tau)
    if n == "mean_teacher":
        return Mth.MeanTeacherObjective(mc.consistency_weight, mc.ema_alpha, ramp=ramp)
    if n == "cps":
        return Mth.CrossPseudoSupervision(mc.cps_weight, ramp=ramp)
    if n == "minent":
        return Mth.EntropyMinimization(mc.entropy_weight)
    if n == "iic":
        return Mth.IIC(mc.iic_displacement)
    raise ValueError(f"unknown method {n!r}; choose one of {sorted(METHODS)}")


def _weak_for(mc: MethodConfig, train: D.SegSet, seed: int) -> tuple[list[np.ndarray], bool]:
    """The weak label maps of the training split and whether they are sparse."""
    kind = METHODS[mc.name][1]
    if kind in ("full", "tags"):
        return D.make_weak_labels(train, "full", seed), False
    if kind == "boxes":
        return D.make_weak_labels(train, "boxes", seed), False
    if kind == "scribbles":
        return D.make_weak_labels(train, "scribbles", seed, erosion_radius=mc.scribble_erosion,
                                  drop_fraction=mc.scribble_drop), True
    if kind == "points":
        expansion = getattr(mc.point_expansion, "value", mc.point_expansion)
        if expansion == "voronoi" and train.num_classes != 2:
            raise ConfigError("method.point_expansion=voronoi needs a binary dataset with objects (dsb, kvasir, "
                             f"shapes with 2 classes); {train.name} has {train.num_classes} classes: "
                             "use method.point_expansion=none")
        return D.make_weak_labels(train, "points", seed, mode=mc.click_mode, n_background=mc.n_background_clicks,
                                  background_ratio=mc.background_click_ratio, voronoi=expansion == "voronoi"), True
    if kind == "noisy":
        return D.make_weak_labels(train, "noisy", seed, level=mc.noise_level), False
    return D.make_weak_labels(train, "none", seed), False


def _annotation_cost(mc: MethodConfig, train: D.SegSet, weak) -> float:
    """Seconds of annotation for the training split under this supervision (``ANNOTATION_SECONDS``)."""
    kind = METHODS[mc.name][1]
    n = len(train)
    if mc.name in SEMI or mc.name == "subset":
        return ANNOTATION_SECONDS["full"] * max(1, round(n * mc.labelled_fraction))
    if kind == "boxes":
        if train.boxes is not None:
            n_obj = sum(len(b) for b in train.boxes)
        elif train.instances is not None:
            n_obj = sum(int(len(np.unique(i)) - 1) for i in train.instances)
        else:
            n_obj = sum(len(wl_boxes(m)) for m in train.masks)
        return ANNOTATION_SECONDS["boxes_per_object"] * n_obj
    if mc.name == "minent":
        return ANNOTATION_SECONDS["full"] * n  # labelled source only; the target images are free
    return ANNOTATION_SECONDS.get(kind, 0.0) * n


def wl_boxes(mask: np.ndarray) -> list:
    from .weak_labels import foreground_instances, tight_boxes

    return tight_boxes(foreground_instances(mask))


def eval_bn_mode(mc: MethodConfig) -> str:
    """``trained`` or ``target``: the config's value, else target for minent (its training normalises
    target batches with target statistics, so target statistics are its own at test time: domain-specific
    BN) and trained for every other method, source_only included (no target image in its training)."""
    if mc.test_bn is not None:
        return getattr(mc.test_bn, "value", mc.test_bn)
    return "target" if mc.name == "minent" else "trained"


def run_experiment(data_cfg, method_cfg, model_cfg, optim_cfg, trainer_cfg, run_dir, *, logger_cfg=None,
                   resume: str = "never", data_dir=None, keep_predictions: int = 0,
                   config: dict | None = None) -> dict:
    """Train one baseline and score it on the test split; returns (and writes) ``final_metrics.json``.

    Checkpoints are selected on the validation split only (for domain adaptation: the target validation
    split, or the source one with ``data.da_val=source``), which is checked to share no image with the
    test split or with the labelled training images. Resumable: the trainer continues from
    ``run_dir/checkpoints`` with ``resume="auto"``; the CAM baseline's two stages live in
    ``run_dir/classifier`` and ``run_dir/segmenter``.
    """
    dc, mc = from_mapping(DataConfig, data_cfg), from_mapping(MethodConfig, method_cfg)
    model_cfg, oc = from_mapping(ModelConfig, model_cfg), from_mapping(OptimConfig, optim_cfg)
    if mc.name not in METHODS:
        raise ValueError(f"unknown method {mc.name!r}; choose one of {sorted(METHODS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    full_config = config if config is not None else _cfg_dict(dc, mc, model_cfg, oc)
    seed = int(trainer_cfg.seed)
    seed_everything(seed)
    t0 = time.time()
    if mc.name in DA and dc.target is None:
        dc.target = "cvc" if dc.dataset == "kvasir" else "camvid_dusk"
    splits = load_splits(dc, data_dir, seed)
    train, val, names = splits.train, splits.val, dict(splits.names)
    val_name = names.get("val", "val")
    if mc.name in DA:
        if mc.name == "oracle":  # the target-supervised upper bound: trains on the labelled target images
            train = splits.target_train
            names["train"] = names.get("target_train", "target train")
        if mc.name == "oracle" or getattr(dc.da_val, "value", dc.da_val) == "target":
            val, val_name = splits.target_val, names.get("target_val", "target val")
    check_disjoint(val, ("test", splits.test), ("training", train))
    bn_mode = eval_bn_mode(mc)
    adapt_images = None
    if bn_mode == "target":
        if splits.target_train is None:
            raise ConfigError(f"method.test_bn=target needs a domain-adaptation target (data.target); "
                             f"{dc.dataset} has none")
        adapt_images = splits.target_train.images
    num_classes = train.num_classes
    weak, sparse = _weak_for(mc, train, seed)
    info: dict[str, Any] = {"method": mc.name, "supervision": METHODS[mc.name][0], "dataset": dc.dataset,
                            "num_classes": num_classes, "train_images": len(train), "notes": list(splits.notes),
                            "splits": {"train": names.get("train", "train"), "selection": val_name,
                                       "test": names.get("test", "test"), "selection_images": len(val),
                                       "test_images": len(splits.test)},
                            "test_bn": bn_mode}
    if sparse:
        info["labelled_pixel_share"] = D.labelled_share(weak)
        counts = np.bincount(np.concatenate([w[w != IGNORE_INDEX].ravel() for w in weak]), minlength=num_classes)
        info["labelled_pixels_per_class"] = counts[:num_classes].tolist()
    if METHODS[mc.name][1] in ("boxes", "noisy", "scribbles", "points"):
        q = evaluate_label_maps(weak, train)
        info["weak_label_quality"] = q

    augment = dict(crop=dc.crop, scale_range=(dc.scale_min, dc.scale_max))
    if mc.name == "subset" or mc.name in SEMI:
        lab_idx = labelled_subset(len(train), mc.labelled_fraction, dc.split_seed)
        if is_main_process():
            np.savetxt(run_dir / "labelled_split.txt", lab_idx, fmt="%d")  # the fixed split file
        info["labelled_images"] = len(lab_idx)
        info["_labelled_idx"] = set(int(i) for i in lab_idx)
        lab_ds = D.SegDataset(train.subset(lab_idx), [weak[i] for i in lab_idx], **augment)
        if mc.name == "subset":
            train_data = lab_ds
        else:
            train_data = D.PairedDataset(lab_ds, D.SegDataset(train, None, **augment))
    elif mc.name == "minent":
        train_data = D.PairedDataset(D.SegDataset(train, weak, **augment),
                                     D.SegDataset(splits.target_train, None, **augment))
    elif mc.name == "cam":
        splits.val = val
        return _run_cam(dc, mc, model_cfg, oc, trainer_cfg, run_dir, splits, info, logger_cfg, resume, t0,
                        keep_predictions, full_config)
    else:
        train_data = D.SegDataset(train, weak, weak_is_sparse=sparse, **augment)

    Trainer = _trainer_cls()
    trainer = Trainer(trainer_cfg, run_dir, logger_cfg=logger_cfg, resume=resume, config=full_config)
    model = build_model(mc, model_cfg, num_classes)
    ramp = make_ramp(mc, _estimate_steps(len(train_data), trainer_cfg))
    info["ramp"] = {"start_step": ramp.start, "length_steps": ramp.length, "shape": ramp.shape}
    cw = class_balance_weights(weak, num_classes) if sparse and mc.balance_classes else None
    if cw is not None:
        info["class_weights"] = cw.tolist()
    clusters = num_classes if mc.name == "iic" else None
    result = trainer.fit(model, train_data, _objective(mc, ramp, cw), optimizer_fn=optimizer_factory(oc),
                         scheduler_fn=poly_scheduler_factory(oc),
                         eval_fn=make_eval_fn(val, trainer.device, clusters, adapt_images=adapt_images),
                         eval_sharded=True,
                         eval_metrics=_eval_metric_names(num_classes, clusters is not None, val.instances is not None))
    if mc.name == "source_only" and bn_mode == "trained":
        info["_adabn_images"] = splits.target_train.images  # a second test score: same checkpoint, AdaBN
    return _finish(trainer, model, result, splits.test, clusters, info, run_dir, t0, keep_predictions, mc, train,
                   weak, adapt_images)


def _cfg_dict(*cfgs) -> dict:
    return {type(c).__name__: asdict(c) for c in cfgs}


def _finish(trainer, model, result, test, clusters, info, run_dir: Path, t0, keep_predictions, mc, train, weak,
            adapt_images=None) -> dict:
    labelled_idx = info.pop("_labelled_idx", None)
    barrier()  # under torchrun: rank 0 has written best.pt before any rank looks for it
    if trainer.ckpt.best_path.exists():
        trainer.load_best(model)
    scored = model if adapt_images is None else adapt_bn_statistics(model, adapt_images, trainer.device)
    # every rank scores its share of the test images; all get the same scores, rank 0 writes them
    res = evaluate_model(scored, test, trainer.device, num_clusters=clusters, keep_predictions=keep_predictions,
                         sharded=True)
    preds = res.pop("predictions")
    adabn_images = info.pop("_adabn_images", None)
    if adabn_images is not None:  # how much of a DA method's gain BatchNorm statistics alone give
        ada = evaluate_model(adapt_bn_statistics(model, adabn_images, trainer.device), test, trainer.device,
                             sharded=True)
        ada.pop("predictions")
        info["test_adabn"] = ada
    best = result.best_metrics or {}
    info.update({
        "test": res, "score_name": _score_key(test.num_classes) if clusters is None else "miou (Hungarian)",
        "score": res[_score_key(test.num_classes) if clusters is None else "miou"],
        "selection_score": best.get("score"), "best_step": result.best_step,
        "parameters": count_parameters(model), "steps": int(result.step), "epochs": int(result.epoch),
        "stopped_reason": str(result.stopped_reason), "wall_seconds": time.time() - t0,
        "train_wall_seconds": float(result.wall_seconds_total),
        "annotation_seconds": _annotation_cost(mc, train, weak),
    })
    # the example row of the report grid: first training image, its ground truth, weak label, prediction
    example_weak = weak[0] if weak is not None else None
    if labelled_idx is not None and 0 not in labelled_idx:
        example_weak = None  # an unlabelled image: no label at all
    example = {"image": train.images[0], "gt": train.masks[0], "weak": example_weak,
               "pred": predict_logits(scored, train.images[0], trainer.device).argmax(0).numpy(),
               "num_classes": train.num_classes}
    if is_main_process():
        (run_dir / "final_metrics.json").write_text(json.dumps(info, indent=2, default=float))
        np.savez_compressed(run_dir / "example.npz", **{k: v for k, v in example.items() if v is not None})
    info["predictions"] = preds
    info["example"] = example
    return info


# ----------------------------------------------------------------------------- CAM (two stages)

@torch.no_grad()
def cam_pseudo_masks(model: UNet, ds: D.SegSet, mc: MethodConfig, device, sharded: bool = False) -> list[np.ndarray]:
    """Pseudo-masks of a training split from the tag classifier's CAMs, restricted to each image's tags
    (whole-image tags with the same 1 % rule as the crop tags). ``sharded``: every rank of a torchrun job
    computes its share of the images and all get every mask, in image order."""
    model.eval()
    binary = ds.num_classes == 2
    order = list(range(len(ds.images)))

    def one(i: int) -> np.ndarray:
        x = D.to_tensor_image(ds.images[i])[None].to(device)
        feats = model.features(x)
        cams = class_activation_maps(feats, model.head.weight[:, :, 0, 0]).cpu()
        tags = torch.from_numpy(image_tags(ds.masks[i], ds.num_classes, mc.tag_min_fraction))[None]
        return cam_pseudo_labels(cams, tags, mc.cam_fg, mc.cam_bg, binary=binary)[0].numpy()

    if not sharded:
        return [one(i) for i in order]
    return gather_shards([one(i) for i in shard(order)], len(order))


def _run_cam(dc, mc, model_cfg, oc, trainer_cfg, run_dir: Path, splits: Splits, info, logger_cfg, resume, t0,
             keep_predictions, full_config) -> dict:
    train = splits.train
    Trainer = _trainer_cls()
    # stage 1: multi-label classifier on crop-level tags
    tc1 = _with(trainer_cfg, max_epochs=mc.cam_classifier_epochs or trainer_cfg.max_epochs, monitor=None,
                early_stopping_patience=None)
    t1 = Trainer(tc1, run_dir / "classifier", logger_cfg=logger_cfg, resume=resume,
                 config=full_config)
    clf = Mth.attach_step_counter(UNet(train.num_classes, model_cfg.base, model_cfg.depth))
    tag_ds = D.SegDataset(train, None, crop=mc.tag_crop, scale_range=(dc.scale_min, dc.scale_max), tags=True,
                          tag_min_fraction=mc.tag_min_fraction)
    t1.fit(clf, tag_ds, Mth.TagClassifier(), optimizer_fn=optimizer_factory(oc),
           scheduler_fn=poly_scheduler_factory(oc))
    pseudo_file = run_dir / "pseudo_masks.npz"
    if pseudo_file.is_file():
        z = np.load(pseudo_file)
        pseudo = [z[f"m{i}"] for i in range(len(train))]
    else:
        pseudo = cam_pseudo_masks(clf, train, mc, t1.device, sharded=True)
        if is_main_process():
            np.savez_compressed(pseudo_file, **{f"m{i}": m for i, m in enumerate(pseudo)})
    info["pseudo_mask_quality_train"] = evaluate_label_maps(pseudo, train)
    info["pseudo_mask_miou_all_pixels"] = evaluate_label_maps(
        [np.where(p == 255, 0 if train.num_classes == 2 else 255, p) for p in pseudo], train,
        ignore_unlabelled=False)["miou"]
    # stage 2: the segmenter trained on the pseudo-masks (unsure pixels ignored)
    t2 = Trainer(trainer_cfg, run_dir / "segmenter", logger_cfg=logger_cfg, resume=resume, config=full_config)
    seg = Mth.attach_step_counter(UNet(train.num_classes, model_cfg.base, model_cfg.depth))
    result = t2.fit(seg, D.SegDataset(train, pseudo, crop=dc.crop, scale_range=(dc.scale_min, dc.scale_max)),
                    Mth.Supervised("weak"), optimizer_fn=optimizer_factory(oc),
                    scheduler_fn=poly_scheduler_factory(oc), eval_fn=make_eval_fn(splits.val, t2.device),
                    eval_sharded=True, eval_metrics=_eval_metric_names(train.num_classes, False,
                                                                       splits.val.instances is not None))
    return _finish(t2, seg, result, splits.test, None, info, run_dir, t0, keep_predictions, mc, train, pseudo)


def _with(cfg, **changes):
    """A copy of a trainer config (dataclass or OmegaConf node) with some fields changed."""
    from dataclasses import is_dataclass, replace

    if is_dataclass(cfg):
        return replace(cfg, **changes)
    from omegaconf import OmegaConf

    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for k, v in changes.items():
        c[k] = v
    return c
