"""Prediction rules and metrics: per-label thresholds, text-classification and entity-typing metrics.

Everything works on numpy arrays: ``probs`` (n, L) in [0, 1], ``Y`` / ``pred`` (n, L) in {0, 1}.
Conventions (fixed, and stated in the README):

* macro-F1 uses ``zero_division = 0`` (a label with no gold and no predicted positives scores 0, as
  scikit-learn's ``f1_score(..., zero_division=0)``);
* typing metrics follow Ling & Weld (2012): loose-macro precision averages over mentions with a
  non-empty prediction only, so the empty-prediction rate is always reported beside it;
* closing predictions under their parents is a flag (:func:`close_under_parents`), off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


# ---------------------------------------------------------------------------------- prediction


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """ŷ_ij = 1[p_ij > τ_j], with one threshold per label (or one for all)."""
    probs = np.asarray(probs)
    tau = np.broadcast_to(np.asarray(thresholds, dtype=probs.dtype), (probs.shape[1],))
    return (probs > tau[None, :]).astype(np.uint8)


def at_least_one(pred: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The 'at least one label per item' rule: rows with no prediction get their argmax label."""
    pred = pred.copy()
    empty = pred.sum(1) == 0
    pred[np.flatnonzero(empty), np.asarray(probs)[empty].argmax(1)] = 1
    return pred


def close_under_parents(pred: np.ndarray, parents: Sequence[int]) -> np.ndarray:
    """Add the ancestors of every predicted type (for ``/A/B`` predicted, predict ``/A`` too)."""
    pred = pred.copy()
    for j, p in enumerate(parents):
        k = p
        while k >= 0:
            pred[:, k] |= pred[:, j]
            k = parents[k]
    return pred


def tune_thresholds_per_label(probs: np.ndarray, Y: np.ndarray, grid: np.ndarray = THRESHOLD_GRID,
                              fallback: float = 0.5) -> np.ndarray:
    """B2: the grid threshold maximising each label's F1 on (probs, Y).

    A label keeps ``fallback`` (0.5, the untuned rule) when no grid threshold gives it a positive F1: when it
    has no positives, or when none of its positives scores above 0.05. Taking the argmax there would keep
    the grid's first threshold, 0.05, which predicts the label for every item above 0.05 for no measured gain
    (the bug of issue 28: 11 of 27 labels on a held-out typing set). Ties keep the smallest threshold.
    """
    Yb = np.asarray(Y, bool)
    pred = np.asarray(probs)[None, :, :] > np.asarray(grid)[:, None, None]  # (thresholds, n, L)
    tp = (pred & Yb[None]).sum(1)
    denom = pred.sum(1) + Yb.sum(0)[None]
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)  # (thresholds, L)
    best = f1.argmax(0)
    return np.where(f1.max(0) > 0, np.asarray(grid, dtype=np.float64)[best], float(fallback))


def tune_global_threshold(probs: np.ndarray, Y: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> float:
    """B3: the one grid threshold maximising micro-F1."""
    scores = [micro_f1(Y, apply_thresholds(probs, t)) for t in grid]
    return float(grid[int(np.argmax(scores))])


# ----------------------------------------------------------------------------- flat multi-label


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum((y == 1) & (pred == 1)))
    denom = float(np.sum(y == 1) + np.sum(pred == 1))
    return 2 * tp / denom if denom > 0 else 0.0


def per_label_f1(Y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of each label (zero_division = 0)."""
    Y, pred = np.asarray(Y, bool), np.asarray(pred, bool)
    tp = (Y & pred).sum(0).astype(np.float64)
    denom = Y.sum(0) + pred.sum(0)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def micro_f1(Y: np.ndarray, pred: np.ndarray) -> float:
    Y, pred = np.asarray(Y, bool), np.asarray(pred, bool)
    tp = float((Y & pred).sum())
    denom = float(Y.sum() + pred.sum())
    return 2 * tp / denom if denom > 0 else 0.0


def macro_f1(Y: np.ndarray, pred: np.ndarray) -> float:
    return float(per_label_f1(Y, pred).mean())


def hamming_loss(Y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(Y, bool) != np.asarray(pred, bool)))


def frequency_buckets(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Labels split into thirds by training frequency: head (most frequent), middle, tail."""
    order = np.argsort(-np.asarray(train_counts, dtype=np.int64), kind="stable")
    thirds = np.array_split(order, 3)
    return {"head": thirds[0], "middle": thirds[1], "tail": thirds[2]}


def text_metrics(Y: np.ndarray, pred: np.ndarray, train_counts: np.ndarray | None = None) -> dict[str, float]:
    """micro-F1, macro-F1 (zero_division 0), Hamming loss, its all-zero floor, empty rate, bucket F1."""
    out = {
        "micro_f1": micro_f1(Y, pred),
        "macro_f1": macro_f1(Y, pred),
        "hamming_loss": hamming_loss(Y, pred),
        "hamming_all_zero": float(np.mean(Y)),
        "empty_rate": float(np.mean(pred.sum(1) == 0)),
    }
    if train_counts is not None:
        f1 = per_label_f1(Y, pred)
        for name, idx in frequency_buckets(train_counts).items():
            out[f"macro_f1_{name}"] = float(f1[idx].mean()) if len(idx) else 0.0
    return out


# -------------------------------------------------------------------------------- entity typing


def typing_metrics(Y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Strict accuracy, loose macro and loose micro P/R/F1 (Ling & Weld 2012), and the empty rate."""
    Y, pred = np.asarray(Y, bool), np.asarray(pred, bool)
    n = Y.shape[0]
    inter = (Y & pred).sum(1).astype(np.float64)
    n_pred = pred.sum(1).astype(np.float64)
    n_gold = Y.sum(1).astype(np.float64)
    strict = float(np.mean(np.all(Y == pred, axis=1))) if n else 0.0
    nonempty = n_pred > 0
    p_ma = float(np.mean(inter[nonempty] / n_pred[nonempty])) if nonempty.any() else 0.0
    has_gold = n_gold > 0
    r_ma = float(np.sum(inter[has_gold] / n_gold[has_gold]) / n) if n else 0.0
    p_mi = float(inter.sum() / n_pred.sum()) if n_pred.sum() > 0 else 0.0
    r_mi = float(inter.sum() / n_gold.sum()) if n_gold.sum() > 0 else 0.0
    return {
        "strict_acc": strict,
        "loose_macro_p": p_ma, "loose_macro_r": r_ma, "loose_macro_f1": _harmonic(p_ma, r_ma),
        "loose_micro_p": p_mi, "loose_micro_r": r_mi, "loose_micro_f1": _harmonic(p_mi, r_mi),
        "empty_rate": float(np.mean(~nonempty)) if n else 0.0,
    }


def _harmonic(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def task_metrics(task: str, Y: np.ndarray, pred: np.ndarray, train_counts: np.ndarray | None = None
                 ) -> dict[str, float]:
    """All metrics of a task: ``text`` (Reuters) gets flat metrics, ``typing`` gets both families."""
    out = text_metrics(Y, pred, train_counts)
    if task == "typing":
        out.update(typing_metrics(Y, pred))
    return out


def headline_metric(task: str) -> str:
    return {"text": "micro_f1", "typing": "loose_micro_f1"}[task]
