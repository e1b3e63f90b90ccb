"""2AFC and JND scorers on hand-worked cases, and agreement with the reference's voc_ap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lpips_metric.evaluate import score_2afc, score_jnd, voc_ap


def test_2afc_hand_cases():
    d0, d1, h = [1.0, 2.0, 3.0], [2.0, 1.0, 3.0], [0.2, 0.7, 0.9]
    score, per = score_2afc(d0, d1, h)
    # d0 < d1 -> 1 - h = 0.8; d1 < d0 -> h = 0.7; tie -> 0.5
    assert per.tolist() == pytest.approx([0.8, 0.7, 0.5])
    assert score == pytest.approx(2.0 / 3.0)


def test_2afc_hard_labels_and_shapes():
    d0 = torch.tensor([0.1, 0.5, 0.2, 0.9])
    d1 = torch.tensor([0.3, 0.1, 0.2, 0.2])
    h = torch.tensor([0.0, 1.0, 1.0, 1.0])
    flat, _ = score_2afc(d0, d1, h)
    shaped, _ = score_2afc(d0.view(4, 1, 1, 1), d1.view(4, 1, 1, 1), h.view(4, 1))
    assert flat == shaped == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_jnd_hand_worked_ap():
    # sorted by distance: same = 1, 0, 1, 0 -> precision 1, 1/2, 2/3, 1/2; recall 1/2, 1/2, 1, 1
    # envelope: 1 up to recall 1/2, then 2/3 -> AP = 0.5 * 1 + 0.5 * 2/3
    d = [0.1, 0.2, 0.3, 0.4]
    s = [1.0, 0.0, 1.0, 0.0]
    ap, curve = score_jnd(d, s)
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert curve["precision"].tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    # order of input does not matter, only of distances; N x 1 x 1 x 1 scores as N
    perm = [2, 0, 3, 1]
    ap2, _ = score_jnd(torch.tensor(d)[perm].view(4, 1, 1, 1), torch.tensor(s)[perm])
    assert ap2 == pytest.approx(ap)


def test_jnd_perfect_and_soft():
    assert score_jnd([0.1, 0.2, 0.3], [1, 1, 0])[0] == pytest.approx(1.0)
    soft, _ = score_jnd([0.1, 0.2, 0.3], [2 / 3, 1 / 3, 0.0])
    assert 0 < soft <= 1


def test_voc_ap_matches_reference():
    import lpips

    rng = np.random.default_rng(0)
    for _ in range(5):
        rec = np.sort(rng.uniform(0, 1, 20))
        prec = rng.uniform(0, 1, 20)
        assert voc_ap(rec, prec) == pytest.approx(lpips.voc_ap(rec, prec), abs=1e-12)


def test_scorer_errors():
    with pytest.raises(ValueError, match="lengths differ"):
        score_2afc([1, 2], [1], [0.5, 0.5])
    with pytest.raises(ValueError, match="fractions"):
        score_2afc([1], [2], [1.5])
    with pytest.raises(ValueError, match="same"):
        score_jnd([0.1, 0.2], [0, 0])
