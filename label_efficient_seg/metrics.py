"""Segmentation metrics: dataset-level confusion matrix (mIoU, pixel and class-average accuracy),
binary Dice/IoU per image and pooled, Hungarian cluster matching, and nuclei object F1 / AJI.

Conventions (see the package README):
- multi-class scores come from ONE confusion matrix accumulated over the whole split, never from a mean
  of per-image mIoUs; pixels whose label is ``ignore_index`` are dropped;
- means are nan-aware: a class absent from both labels and predictions has an undefined IoU and is left
  out of the mean (and listed in ``absent_classes``) instead of turning the mean into NaN, which is the
  defect of torchvision's reference ``ConfusionMatrix``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX, num_pred_classes: int | None = None) -> torch.Tensor:
    """Counts ``M[t, p]`` of pixels with label t predicted as p (int64, ``num_classes x num_pred``).

    ``num_pred_classes`` lets predictions range over clusters (unsupervised) instead of classes.
    Labels outside ``[0, num_classes)`` other than ``ignore_index`` are an error, not silently dropped.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    k_pred = num_pred_classes or num_classes
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target has labels outside [0, {num_classes}) that are not ignore_index={ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= k_pred):
        raise ValueError(f"prediction has labels outside [0, {k_pred})")
    idx = target * k_pred + pred
    return torch.bincount(idx, minlength=num_classes * k_pred).reshape(num_classes, k_pred)


@dataclass
class SegScores:
    miou: float
    pixel_acc: float
    mean_class_acc: float
    iou: list[float]
    absent_classes: list[int] = field(default_factory=list)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}miou": self.miou, f"{prefix}pixel_acc": self.pixel_acc,
                f"{prefix}mean_class_acc": self.mean_class_acc}


def scores_from_confusion(conf: torch.Tensor | np.ndarray) -> SegScores:
    """mIoU, global pixel accuracy and class-average accuracy of a square confusion matrix (rows = labels).

    IoU_c = TP / (TP + FP + FN); a class with TP + FP + FN = 0 (absent from labels and predictions) is NaN
    and excluded from the mean. Class accuracy is TP / (TP + FN), NaN for classes absent from the labels.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    tp = np.diag(conf)
    gt = conf.sum(1)
    pr = conf.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        cls_acc = np.where(gt > 0, tp / gt, np.nan)
    total = conf.sum()
    absent = [int(c) for c in np.flatnonzero(union == 0)]
    return SegScores(
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        pixel_acc=float(tp.sum() / total) if total > 0 else float("nan"),
        mean_class_acc=float(np.nanmean(cls_acc)) if np.isfinite(cls_acc).any() else float("nan"),
        iou=[float(v) for v in iou],
        absent_classes=absent,
    )


def hungarian_match(conf: torch.Tensor | np.ndarray) -> np.ndarray:
    """One-to-one map cluster -> class maximising matched pixels, from a ``classes x clusters`` matrix.

    Returns ``mapping`` with ``mapping[cluster] = class`` (or -1 for clusters left unmatched when there are
    more clusters than classes).
    """
    conf = np.asarray(conf, dtype=np.float64)
    rows, cols = linear_sum_assignment(-conf)
    mapping = np.full(conf.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def hungarian_scores(conf_cluster: torch.Tensor | np.ndarray) -> tuple[SegScores, np.ndarray]:
    """Scores after Hungarian matching of clusters to classes (unmatched clusters count as errors)."""
    conf = np.asarray(conf_cluster, dtype=np.float64)
    n_cls, n_clu = conf.shape
    mapping = hungarian_match(conf)
    matched = np.zeros((n_cls, n_cls), dtype=np.float64)
    for cluster, cls in enumerate(mapping):
        if cls >= 0:
            matched[:, cls] += conf[:, cluster]
    # pixels predicted as an unmatched cluster are wrong for every class: they lower recall (and mIoU)
    unmatched = conf[:, mapping < 0].sum(1)
    scores = scores_from_confusion(matched)
    if unmatched.sum() > 0:
        tp = np.diag(matched)
        gt = matched.sum(1) + unmatched
        union = gt + matched.sum(0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        scores = SegScores(float(np.nanmean(iou)), float(tp.sum() / gt.sum()), float(np.nanmean(acc)),
                           [float(v) for v in iou], [int(c) for c in np.flatnonzero(union == 0)])
    return scores, mapping


def binary_dice_iou(pred: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                    eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image foreground Dice and IoU of ``[B, H, W]`` {0,1} maps (ignored pixels dropped).

    An image where both prediction and target are empty scores 1 (a correct "no polyp" answer).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = (target != ignore_index).float()
    p = (pred == 1).float() * valid
    t = (target == 1).float() * valid
    inter = (p * t).flatten(1).sum(1)
    ps, ts = p.flatten(1).sum(1), t.flatten(1).sum(1)
    empty = (ps + ts) == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / (ps + ts + eps))
    iou = torch.where(empty, torch.ones_like(inter), inter / (ps + ts - inter + eps))
    return dice, iou


class SegMeter:
    """Accumulates what every task reports over a split: the dataset confusion matrix and, for binary
    tasks, per-image Dice/IoU (averaged over images: ``mdice``, ``miou_img``) and pooled Dice."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.dice: list[float] = []
        self.iou_img: list[float] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.detach().cpu(), target.detach().cpu()
        self.conf += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.num_classes == 2:
            d, i = binary_dice_iou(pred, target, self.ignore_index)
            self.dice += d.tolist()
            self.iou_img += i.tolist()

    def compute(self) -> dict[str, float]:
        s = scores_from_confusion(self.conf)
        out = s.as_dict()
        if self.num_classes == 2:
            tp = float(self.conf[1, 1])
            fp, fn = float(self.conf[0, 1]), float(self.conf[1, 0])
            out["mdice"] = float(np.mean(self.dice)) if self.dice else float("nan")
            out["miou_img"] = float(np.mean(self.iou_img)) if self.iou_img else float("nan")
            out["dice_pooled"] = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) > 0 else float("nan")
        return out


# ----------------------------------------------------------------------------- nuclei (instances)

def instance_iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (gt instance, predicted instance) pair of two label maps (0 = background).

    Returns ``(iou, inter, union)``, each ``[n_gt, n_pred]`` over the ids present (sorted, 0 excluded).
    """
    gt_ids = np.unique(gt)
    gt_ids = gt_ids[gt_ids != 0]
    pr_ids = np.unique(pred)
    pr_ids = pr_ids[pr_ids != 0]
    g = np.searchsorted(gt_ids, gt.ravel())
    p = np.searchsorted(pr_ids, pred.ravel())
    fg = (gt.ravel() != 0) & (pred.ravel() != 0)
    inter = np.zeros((len(gt_ids), len(pr_ids)), dtype=np.int64)
    np.add.at(inter, (g[fg], p[fg]), 1)
    area_g = np.array([(gt == i).sum() for i in gt_ids], dtype=np.int64)
    area_p = np.array([(pred == i).sum() for i in pr_ids], dtype=np.int64)
    union = area_g[:, None] + area_p[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou, inter, union


def object_f1(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object precision/recall/F1 with one-to-one Hungarian matching, a match counting at IoU >= threshold."""
    iou, _, _ = instance_iou_matrix(gt, pred)
    n_gt, n_pred = iou.shape
    if n_gt == 0 and n_pred == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "n_gt": 0, "n_pred": 0}
    tp = 0
    if n_gt and n_pred:
        r, c = linear_sum_assignment(-iou)
        tp = int((iou[r, c] >= iou_threshold).sum())
    prec = tp / n_pred if n_pred else 0.0
    rec = tp / n_gt if n_gt else 0.0
    f1 = 2 * tp / (n_gt + n_pred)
    return {"precision": prec, "recall": rec, "f1": f1, "tp": tp, "n_gt": n_gt, "n_pred": n_pred}


def aggregated_jaccard_index(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI (Kumar et al. 2017): each gt nucleus takes the predicted one of highest IoU; the sum of their
    intersections over the sum of their unions plus the areas of predicted nuclei never used."""
    iou, inter, union = instance_iou_matrix(gt, pred)
    n_gt, n_pred = iou.shape
    if n_gt == 0:
        return 1.0 if n_pred == 0 else 0.0
    area_p = np.array([(pred == i).sum() for i in np.unique(pred) if i != 0], dtype=np.int64)
    area_g = np.array([(gt == i).sum() for i in np.unique(gt) if i != 0], dtype=np.int64)
    if n_pred == 0:
        return 0.0
    best = iou.argmax(1)
    c = 0
    u = 0
    used = np.zeros(n_pred, dtype=bool)
    for g in range(n_gt):
        j = best[g]
        if iou[g, j] > 0:
            c += inter[g, j]
            u += union[g, j]
            used[j] = True
        else:
            u += area_g[g]
    u += area_p[~used].sum()
    return float(c / u) if u > 0 else 0.0
