import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from label_efficient_seg import losses as L
from label_efficient_seg.metrics import IGNORE_INDEX as IG


def _logits(seed=0, b=2, c=3, h=6, w=7):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_partial_ce_ignores_unlabelled_pixels():
    logits = _logits()
    target = torch.full((2, 6, 7), IG)
    target[0, 1, 2], target[1, 4, 4], target[1, 0, 6] = 2, 0, 1
    loss = L.partial_cross_entropy(logits, target)
    keep = target != IG
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], target[keep])
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    changed = logits.clone()
    changed[:, :, 3, :] += 100 * torch.randn(2, 3, 7)  # row 3 holds no label
    assert float(L.partial_cross_entropy(changed, target)) == pytest.approx(float(loss), rel=1e-6)


def test_partial_ce_all_ignored_is_zero_not_nan():
    logits = _logits().requires_grad_()
    loss = L.partial_cross_entropy(logits, torch.full((2, 6, 7), IG))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_gce_golden_value_and_limits():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    y = torch.tensor([[[1]]])
    assert float(L.generalized_ce(logits, y, q=0.5)) == pytest.approx((1 - 0.75 ** 0.5) / 0.5, rel=1e-6)
    assert float(L.generalized_ce(logits, y, q=1.0)) == pytest.approx(0.25, rel=1e-6)  # MAE: 1 - p_y
    logits = _logits()
    t = torch.randint(0, 3, (2, 6, 7), generator=torch.Generator().manual_seed(2))
    ce = F.cross_entropy(logits, t)
    assert float(L.generalized_ce(logits, t, q=1e-4)) == pytest.approx(float(ce), rel=1e-3)
    with pytest.raises(ValueError):
        L.generalized_ce(logits, t, q=0.0)


def test_sce_golden_value():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)
    y = torch.tensor([[[1]]])
    expect = 0.1 * -math.log(0.75) + 1.0 * 4 * 0.25
    assert float(L.symmetric_ce(logits, y, alpha=0.1, beta=1.0)) == pytest.approx(expect, rel=1e-6)


def test_supervised_binary_adds_dice():
    logits = _logits(c=2)
    t = torch.randint(0, 2, (2, 6, 7), generator=torch.Generator().manual_seed(3))
    full = L.supervised_loss(logits, t)
    assert float(full) == pytest.approx(float(F.cross_entropy(logits, t) + L.soft_dice_loss(logits, t)), rel=1e-6)


def test_normalized_entropy_bounds():
    assert float(L.normalized_entropy(torch.zeros(1, 4, 3, 3))) == pytest.approx(1.0)
    sharp = torch.zeros(1, 4, 3, 3)
    sharp[:, 0] = 50
    assert float(L.normalized_entropy(sharp)) < 1e-12


def test_rgb_to_lab_matches_skimage():
    from skimage.color import rgb2lab

    img = np.random.default_rng(0).random((5, 6, 3))
    ours = L.rgb_to_lab(torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    assert np.abs(ours.numpy() - rgb2lab(img)).max() < 1e-3


def test_unfold_neighbours_matches_explicit_shifts():
    x = torch.arange(2 * 1 * 7 * 8, dtype=torch.float32).view(2, 1, 7, 8)
    nb = L.unfold_neighbours(x, 3, 2)
    offsets = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    for k, (dy, dx) in enumerate(offsets):
        for y in range(7):
            for xx in range(8):
                yy, xj = y + dy, xx + dx
                expect = x[:, 0, yy, xj] if 0 <= yy < 7 and 0 <= xj < 8 else torch.zeros(2)
                assert torch.equal(nb[:, 0, k, y, xx], expect)


def test_color_similarity_is_one_on_uniform_image_inside_bounds():
    img = torch.full((1, 3, 6, 6), 0.4)
    sim = L.color_similarity(img)
    valid = L.neighbour_validity((6, 6))
    assert torch.allclose(sim, valid)


def test_pairwise_loss_equals_boxinst_formula_for_two_classes():
    logits = _logits(c=2, b=1, h=5, w=5)
    sim = torch.rand(1, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    inside = torch.zeros(1, 5, 5, dtype=torch.bool)
    inside[0, 1:4, 1:4] = True
    loss, count = L.pairwise_affinity_loss(logits, sim, 0.3, inside)
    m = logits.softmax(1)[0, 1]
    nb = L.unfold_neighbours(m[None, None], 3, 2)[0, 0]
    valid = L.neighbour_validity((5, 5))[0]
    sel = (sim[0] >= 0.3) & inside[0] & (valid > 0)  # pairs leaving the image never count
    terms = -torch.log(m * nb + (1 - m) * (1 - nb))
    assert count == sel.sum() < ((sim[0] >= 0.3) & inside[0]).sum()
    assert float(loss) == pytest.approx(float(terms[sel].mean()), rel=1e-5)
    zero, n0 = L.pairwise_affinity_loss(logits, torch.zeros_like(sim), 0.3)
    assert float(zero) == 0.0 and int(n0) == 0


def test_box_projection_zero_for_tight_mask_positive_for_loose():
    box = torch.zeros(1, 8, 8)
    box[0, 2:6, 1:7] = 1
    assert float(L.box_projection_loss(box, box)) == pytest.approx(0.0, abs=1e-5)
    cross = torch.zeros(1, 8, 8)  # a plus shape touching every row and column of the box is also tight
    cross[0, 2:6, 3] = 1
    cross[0, 4, 1:7] = 1
    assert float(L.box_projection_loss(cross, box)) == pytest.approx(0.0, abs=1e-5)
    small = torch.zeros(1, 8, 8)
    small[0, 3:5, 3:5] = 1
    assert float(L.box_projection_loss(small, box)) > 0.3


def test_boxinst_loss_terms_and_padding():
    logits = _logits(c=2, b=2, h=8, w=8).requires_grad_()
    box = torch.zeros(2, 8, 8, dtype=torch.long)
    box[0, 2:6, 2:6] = 1
    sim = L.color_similarity(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    out = L.boxinst_loss(logits, box, sim, warmup_factor=0.5)
    assert {"loss", "loss_bg", "loss_proj", "loss_pair", "pairs", "warmup"} <= set(out)
    expect = out["loss_bg"] + out["loss_proj"] + 0.5 * out["loss_pair"]
    assert float(out["loss"].detach()) == pytest.approx(float(expect), rel=1e-6)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError):
        L.boxinst_loss(_logits(c=3), box[:, :6, :7], sim)


def test_fixmatch_loss_divides_by_valid_not_confident_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    pseudo = torch.zeros(1, 1, 4, dtype=torch.long)
    conf = torch.tensor([[[0.99, 0.99, 0.5, 0.5]]])
    valid = torch.tensor([[[True, True, True, False]]])
    loss, ratio = L.confident_pseudo_label_loss(logits, pseudo, conf, 0.95, valid)
    assert float(loss) == pytest.approx(2 * math.log(2) / 3, rel=1e-6)
    assert float(ratio) == pytest.approx(2 / 3)


def test_iic_mutual_information_golden_values():
    k = 4
    lab = torch.arange(16).view(1, 4, 4) % k
    onehot = F.one_hot(lab, k).permute(0, 3, 1, 2).float()
    assert float(L.iic_loss(onehot, onehot)) == pytest.approx(-math.log(k), rel=1e-4)
    uniform = torch.full_like(onehot, 1 / k)
    assert float(L.iic_loss(onehot, uniform)) == pytest.approx(0.0, abs=1e-6)


def test_iic_joint_with_displacement_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    p1 = torch.rand(2, 3, 5, 6, generator=g).softmax(1)
    p2 = torch.rand(2, 3, 5, 6, generator=g).softmax(1)
    d = 1
    joint = torch.zeros(3, 3)
    for dy in range(-d, d + 1):
        for dx in range(-d, d + 1):
            for y in range(5):
                for x in range(6):
                    if 0 <= y + dy < 5 and 0 <= x + dx < 6:
                        joint += torch.einsum("bi,bj->ij", p1[:, :, y, x], p2[:, :, y + dy, x + dx])
    joint = joint / joint.sum()
    assert torch.allclose(L.iic_joint(p1, p2, d), (joint + joint.t()) / 2, atol=1e-6)


def test_cam_normalisation_and_pseudo_labels():
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, 0, 0, 0], feats[0, 1, 1, 1] = 2.0, 1.0
    w = torch.eye(2)
    cams = L.class_activation_maps(feats, w)
    assert cams.flatten(2).amax(2).tolist() == [[1.0, 1.0]]
    pl = L.cam_pseudo_labels(cams, torch.tensor([[1.0, 1.0]]), fg_threshold=0.3)
    assert pl[0].tolist() == [[0, IG], [IG, 1]]
    pl = L.cam_pseudo_labels(cams, torch.tensor([[1.0, 0.0]]))  # untagged class has no map
    assert pl[0].tolist() == [[0, IG], [IG, IG]]
    binary = L.cam_pseudo_labels(cams * torch.tensor([1.0, 0.2]).view(1, 2, 1, 1), torch.tensor([[1.0, 1.0]]),
                                 fg_threshold=0.3, bg_threshold=0.05, binary=True)
    assert binary[0].tolist() == [[0, 0], [0, IG]]


def test_cps_and_mean_teacher_losses():
    a, b = _logits(1), _logits(2)
    expect = F.cross_entropy(a, b.argmax(1)) + F.cross_entropy(b, a.argmax(1))
    assert float(L.cross_pseudo_supervision(a, b)) == pytest.approx(float(expect))
    assert float(L.softmax_mse(a, a)) == 0.0


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="logits"):
        L.partial_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target shape"):
        L.partial_cross_entropy(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.long))
