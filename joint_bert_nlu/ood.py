"""Out-of-domain scores of the intent head and their threshold, chosen on dev splits only.

Two scores, both "higher = more in-domain", from the intent logits with the UNK class masked:

* ``msp``: the maximum softmax probability (Hendrycks & Gimpel 2017); sigmoid in the multi-label mode;
* ``energy``: the negative energy logsumexp(logits) (Liu et al. 2020), which does not saturate at 1.

:func:`calibrate` takes in-domain and out-of-domain dev scores (for ATIS and SNIPS, each is the other's
out-of-domain set), keeps the score with the larger dev AUROC and the threshold with the largest Youden's
J = TPR - FPR (ties: the lower threshold). :func:`evaluate` reports both scores on test at that threshold;
it chooses nothing. README "Protocol" item 6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SCORES = ("msp", "energy")
OTHER_DATASET = {"atis": "snips", "snips": "atis"}
"""The out-of-domain examples of each built-in data set (``data.ood_dataset=auto``)."""


def ood_scores(intent_logits: torch.Tensor, intent_mode: str = "atomic") -> dict[str, list[float]]:
    """Both scores per sentence; the UNK intent (index 0) never counts."""
    logits = intent_logits.float()[:, 1:]
    if intent_mode == "multi_label":
        msp = logits.sigmoid().max(-1).values
    else:
        msp = logits.softmax(-1).max(-1).values
    return {"msp": msp.tolist(), "energy": torch.logsumexp(logits, -1).tolist()}


def auroc(in_scores: Sequence[float], out_scores: Sequence[float]) -> float:
    """Area under the ROC curve, in-domain as the positive class (ties count one half)."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(roc_auc_score(y, np.r_[np.asarray(in_scores, float), np.asarray(out_scores, float)]))


def rates(in_scores: Sequence[float], out_scores: Sequence[float], threshold: float) -> tuple[float, float]:
    """(TPR, FPR) of "in-domain iff score >= threshold": in-domain kept, out-of-domain let through."""
    return (float(np.mean(np.asarray(in_scores) >= threshold)), float(np.mean(np.asarray(out_scores) >= threshold)))


def youden_threshold(in_scores: Sequence[float], out_scores: Sequence[float]) -> tuple[float, float, float]:
    """The threshold with the largest TPR - FPR over every observed score (ties: the lowest), with its
    (TPR, FPR)."""
    a, b = np.sort(np.asarray(in_scores, float)), np.sort(np.asarray(out_scores, float))
    if a.size == 0 or b.size == 0:
        raise ValueError("youden_threshold needs in-domain and out-of-domain scores")
    cand = np.unique(np.r_[a, b])
    tpr = 1 - np.searchsorted(a, cand, side="left") / a.size  # share of a >= t
    fpr = 1 - np.searchsorted(b, cand, side="left") / b.size
    best = int(np.argmax(tpr - fpr))  # argmax returns the first maximum: the lowest threshold
    return float(cand[best]), float(tpr[best]), float(fpr[best])


def calibrate(in_dev: dict[str, list[float]], out_dev: dict[str, list[float]], ood_dataset: str) -> dict:
    """Score and threshold chosen on dev (stored in the model's config.json as ``ood``)."""
    aurocs = {k: auroc(in_dev[k], out_dev[k]) for k in SCORES}
    score = max(SCORES, key=lambda k: (aurocs[k], k == "msp"))  # a tie keeps the maximum softmax probability
    threshold, tpr, fpr = youden_threshold(in_dev[score], out_dev[score])
    return {"score": score, "threshold": threshold, "ood_dataset": ood_dataset,
            "dev": {"auroc": aurocs, "tpr": tpr, "fpr": fpr, "n_in": len(in_dev[score]),
                    "n_out": len(out_dev[score])}}


def evaluate(calibration: dict, in_test: dict[str, list[float]], out_test: dict[str, list[float]]) -> dict:
    """Test AUROC of both scores and the rates at the dev-chosen threshold."""
    tpr, fpr = rates(in_test[calibration["score"]], out_test[calibration["score"]], calibration["threshold"])
    return {"auroc": {k: auroc(in_test[k], out_test[k]) for k in SCORES}, "tpr": tpr, "fpr": fpr,
            "n_in": len(in_test[calibration["score"]]), "n_out": len(out_test[calibration["score"]])}
