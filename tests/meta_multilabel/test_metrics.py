"""Golden values for the prediction rules and metrics, and equality with scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, hamming_loss

from meta_multilabel.evaluate import (
    apply_thresholds,
    at_least_one,
    close_under_parents,
    frequency_buckets,
    macro_f1,
    micro_f1,
    per_label_f1,
    text_metrics,
    tune_global_threshold,
    tune_thresholds_per_label,
    typing_metrics,
)


def test_thresholds_are_applied_per_label_and_strictly():
    probs = np.array([[0.2, 0.6, 0.5], [0.05, 0.4, 0.51]])
    tau = np.array([0.1, 0.5, 0.5])
    assert apply_thresholds(probs, tau).tolist() == [[1, 1, 0], [0, 0, 1]]  # p == τ is not positive
    assert apply_thresholds(probs, 0.3).tolist() == [[0, 1, 1], [0, 1, 1]]


def test_at_least_one_fills_only_empty_rows():
    probs = np.array([[0.1, 0.3], [0.9, 0.2]])
    pred = np.array([[0, 0], [1, 0]], dtype=np.uint8)
    assert at_least_one(pred, probs).tolist() == [[0, 1], [1, 0]]


def test_close_under_parents_adds_ancestors():
    parents = [-1, 0, 1, -1]  # /A, /A/B, /A/B/C, /D
    pred = np.array([[0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.uint8)
    assert close_under_parents(pred, parents).tolist() == [[1, 1, 1, 0], [0, 0, 0, 1]]


def test_typing_metrics_hand_computed():
    # labels: /A, /A/B, /C, /D
    gold = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    pred = np.array([[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 1]])
    m = typing_metrics(gold, pred)
    assert m["strict_acc"] == pytest.approx(0.25)
    assert m["loose_macro_p"] == pytest.approx(5 / 6)  # averaged over the 3 non-empty predictions only
    assert m["loose_macro_r"] == pytest.approx(5 / 8)
    assert m["loose_macro_f1"] == pytest.approx(5 / 7)
    assert m["loose_micro_p"] == pytest.approx(3 / 4)
    assert m["loose_micro_r"] == pytest.approx(3 / 5)
    assert m["loose_micro_f1"] == pytest.approx(2 / 3)
    assert m["empty_rate"] == pytest.approx(0.25)


def test_typing_metrics_all_empty_prediction():
    gold = np.array([[1, 0], [0, 1]])
    m = typing_metrics(gold, np.zeros_like(gold))
    assert m["loose_macro_p"] == 0.0 and m["loose_micro_f1"] == 0.0 and m["empty_rate"] == 1.0


def test_flat_metrics_equal_sklearn_with_zero_division_0():
    rng = np.random.default_rng(0)
    Y = (rng.random((40, 7)) < 0.2).astype(int)
    P = (rng.random((40, 7)) < 0.25).astype(int)
    Y[:, 3] = 0
    P[:, 3] = 0  # a label with no gold and no predicted positive: scores 0 under zero_division=0
    assert micro_f1(Y, P) == pytest.approx(f1_score(Y, P, average="micro", zero_division=0))
    assert macro_f1(Y, P) == pytest.approx(f1_score(Y, P, average="macro", zero_division=0))
    np.testing.assert_allclose(per_label_f1(Y, P), f1_score(Y, P, average=None, zero_division=0))
    m = text_metrics(Y, P, train_counts=np.arange(7))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(Y, P))
    assert m["hamming_all_zero"] == pytest.approx(Y.mean())
    assert {"macro_f1_head", "macro_f1_middle", "macro_f1_tail"} <= set(m)


def test_frequency_buckets_are_thirds_by_count():
    b = frequency_buckets(np.array([5, 1, 9, 3, 7, 0]))
    assert b["head"].tolist() == [2, 4] and b["middle"].tolist() == [0, 3] and b["tail"].tolist() == [1, 5]


def test_threshold_tuning_baselines():
    Y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    probs = np.array([[0.32, 0.9], [0.31, 0.1], [0.12, 0.2], [0.08, 0.3]])
    tau = tune_thresholds_per_label(probs, Y)
    assert tau[0] == pytest.approx(0.15)  # smallest grid value that separates 0.31 from 0.12
    assert tau[1] == 0.5  # no positives: fallback
    assert tune_global_threshold(probs, Y) == pytest.approx(0.30)  # 0.9 of label 1 is then the only FP


def test_per_label_tuning_falls_back_to_half_when_f1_is_zero_at_every_threshold():
    """Issue 28: a label with positives whose F1 is 0 at every grid threshold (its positives all score below
    0.05) keeps 0.5, not the grid's first value 0.05, which would predict it for every negative above 0.05."""
    Y = np.array([[1, 1], [0, 1], [0, 0], [0, 0]])
    probs = np.array([[0.01, 0.9], [0.30, 0.8], [0.40, 0.2], [0.20, 0.1]])
    tau = tune_thresholds_per_label(probs, Y)
    assert tau[0] == 0.5  # the old argmax kept 0.05: three false positives, no true one
    assert tau[1] == pytest.approx(0.2)  # a label with a positive F1 is tuned as before (first maximum)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    for j in range(2):  # the tuned value equals the brute-force first maximum of F1 over the grid
        f1 = [f1_score(Y[:, j], probs[:, j] > t, zero_division=0) for t in grid]
        if max(f1) > 0:
            assert tau[j] == grid[int(np.argmax(f1))]
