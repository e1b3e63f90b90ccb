import numpy as np
import pytest
import torch

from label_efficient_seg import metrics as M

IG = M.IGNORE_INDEX


def test_confusion_matrix_hand_counts_and_ignore():
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    target = torch.tensor([0, 1, 2, IG, 0, 2])
    conf = M.confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[2, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_confusion_matrix_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        M.confusion_matrix(torch.tensor([0]), torch.tensor([5]), 3)
    with pytest.raises(ValueError, match="shape"):
        M.confusion_matrix(torch.zeros(2), torch.zeros(3), 3)


def test_scores_from_hand_computed_confusion():
    s = M.scores_from_confusion(np.array([[3, 1], [2, 4]]))
    assert s.iou == pytest.approx([3 / 6, 4 / 7])
    assert s.miou == pytest.approx((0.5 + 4 / 7) / 2)
    assert s.pixel_acc == pytest.approx(0.7)
    assert s.mean_class_acc == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert s.absent_classes == []


def test_absent_class_is_excluded_not_nan():
    s = M.scores_from_confusion(np.array([[2, 0, 0], [1, 1, 0], [0, 0, 0]]))
    assert s.absent_classes == [2]
    assert np.isnan(s.iou[2])
    assert s.miou == pytest.approx((2 / 3 + 1 / 2) / 2)


def _random_pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (3, 16, 16), generator=g)
    target[0, :2] = IG
    pred = torch.where(torch.rand(3, 16, 16, generator=g) < 0.6, target.clamp(max=3),
                       torch.randint(0, 4, (3, 16, 16), generator=g))
    return pred, target


def test_miou_equals_brute_force_per_class_sets():
    pred, target = _random_pair()
    keep = target != IG
    ious = []
    for c in range(4):
        p, t = (pred == c) & keep, (target == c) & keep
        ious.append(float((p & t).sum()) / float((p | t).sum()))
    ours = M.scores_from_confusion(M.confusion_matrix(pred, target, 4))
    assert ours.iou == pytest.approx(ious)
    assert ours.miou == pytest.approx(np.mean(ious))
    assert ours.pixel_acc == pytest.approx(float((pred[keep] == target[keep]).float().mean()))


@pytest.mark.slow  # importing torchmetrics alone takes ~7 s on the shared cores
def test_miou_equals_torchmetrics_jaccard():
    from torchmetrics.functional.classification import multiclass_jaccard_index

    pred, target = _random_pair()
    ours = M.scores_from_confusion(M.confusion_matrix(pred, target, 4)).miou
    ref = multiclass_jaccard_index(pred, target, num_classes=4, ignore_index=IG, average="macro")
    assert ours == pytest.approx(float(ref), abs=1e-6)


def test_hungarian_on_permuted_labelling_gives_miou_one():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (4, 12, 12), generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    clusters = perm[target]
    conf = M.confusion_matrix(clusters, target, 5)
    scores, mapping = M.hungarian_scores(conf)
    assert scores.miou == pytest.approx(1.0)
    assert scores.pixel_acc == pytest.approx(1.0)
    assert (mapping[perm] == np.arange(5)).all()


def test_hungarian_with_extra_clusters_counts_unmatched_as_errors():
    target = torch.tensor([0, 0, 1, 1])
    clusters = torch.tensor([0, 2, 1, 1])  # cluster 2 cannot be matched (2 classes)
    conf = M.confusion_matrix(clusters, target, 2, num_pred_classes=3)
    scores, mapping = M.hungarian_scores(conf)
    assert mapping.tolist() == [0, 1, -1]
    assert scores.pixel_acc == pytest.approx(0.75)
    assert scores.miou == pytest.approx((1 / 2 + 1) / 2)


def test_binary_dice_iou_hand_values_and_empty_case():
    target = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 1, 0]], [[0, 0, 0, 0]]])
    dice, iou = M.binary_dice_iou(pred, target)
    assert dice.tolist() == pytest.approx([0.5, 1.0])
    assert iou.tolist() == pytest.approx([1 / 3, 1.0])


def test_seg_meter_binary_pooled_vs_mean_dice():
    m = M.SegMeter(2)
    m.update(torch.tensor([[[1, 1, 0, 0]]]), torch.tensor([[[1, 1, 0, 0]]]))
    m.update(torch.tensor([[[1, 0, 0, 0]]]), torch.tensor([[[0, 0, 0, 1]]]))
    out = m.compute()
    assert out["mdice"] == pytest.approx(0.5)
    assert out["dice_pooled"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_object_f1_and_aji():
    gt = np.zeros((8, 8), int)
    gt[0:3, 0:3] = 1
    gt[5:8, 5:8] = 2
    pred = np.zeros((8, 8), int)
    pred[0:3, 0:3] = 7  # perfect match with gt 1
    pred[0:2, 5:7] = 3  # spurious
    f = M.object_f1(gt, pred)
    assert (f["tp"], f["n_gt"], f["n_pred"]) == (1, 2, 2)
    assert f["f1"] == pytest.approx(0.5)
    assert M.aggregated_jaccard_index(gt, gt) == pytest.approx(1.0)
    # gt 1 matched exactly (9/9); gt 2 unmatched adds its 9 pixels; unused prediction adds 4
    assert M.aggregated_jaccard_index(gt, pred) == pytest.approx(9 / (9 + 9 + 4))
