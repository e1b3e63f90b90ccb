"""Learning tests on synthetic scikit-image shapes: each supervision family trains a tiny U-Net from its
weak labels only and must reach a score far above chance. The full-supervision and point tests run in the
fast suite; the other families take ~5-20 s each on shared cores and are marked slow."""

import numpy as np
import pytest
import torch

from label_efficient_seg import data as D
from label_efficient_seg import methods as Mth
from label_efficient_seg.evaluate import evaluate_label_maps, evaluate_model
from label_efficient_seg.experiment import MethodConfig, cam_pseudo_masks
from label_efficient_seg.model import ClusterNet, DualNet, MeanTeacher, UNet

S = 24


def fit(model, ds, objective, steps=60, batch_size=8, lr=1e-2, seed=0):
    """A plain loop over the library objective (the Trainer itself is exercised by the train smoke test)."""
    torch.manual_seed(seed)
    Mth.attach_step_counter(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True)
    step = 0
    model.train()
    while step < steps:
        for batch in loader:
            out = objective(model, batch)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return model


def net(c):
    torch.manual_seed(0)
    return UNet(c, base=8, depth=2)


@pytest.fixture(scope="module")
def shapes3():
    return D.synthetic_shapes(32, S, 3, seed=1), D.synthetic_shapes(12, S, 3, seed=2)


@pytest.fixture(scope="module")
def shapes2():
    return D.synthetic_shapes(32, S, 2, seed=1), D.synthetic_shapes(12, S, 2, seed=2)


def test_full_supervision_learns(shapes3):
    tr, te = shapes3
    m = fit(net(3), D.SegDataset(tr, D.make_weak_labels(tr, "full", 0), crop=S), Mth.Supervised(), steps=40)
    assert evaluate_model(m, te)["miou"] > 0.7


def test_points_learn_and_pairwise_term_helps(shapes2):
    tr, te = shapes2
    w = D.make_weak_labels(tr, "points", 0, min_background_distance=3)
    assert D.labelled_share(w) < 0.02
    ds = D.SegDataset(tr, w, crop=S, weak_is_sparse=True)
    with_pair = evaluate_model(fit(net(2), ds, Mth.PartialCEPairwise(1.0)), te)["mdice"]
    without = evaluate_model(fit(net(2), ds, Mth.PartialCEPairwise(0.0)), te)["mdice"]
    assert with_pair > 0.8 and with_pair > without + 0.05


@pytest.mark.slow
def test_scribbles_learn(shapes3):
    tr, te = shapes3
    w = D.make_weak_labels(tr, "scribbles", 0, erosion_radius=1)
    m = fit(net(3), D.SegDataset(tr, w, crop=S, weak_is_sparse=True), Mth.PartialCEPairwise(1.0))
    assert evaluate_model(m, te)["miou"] > 0.45


@pytest.mark.slow
def test_boxinst_learns_from_boxes(shapes2):
    tr, te = shapes2
    w = D.make_weak_labels(tr, "boxes", 0)
    m = fit(net(2), D.SegDataset(tr, w, crop=S), Mth.BoxSupervision(warmup_steps=10))
    assert evaluate_model(m, te)["mdice"] > 0.8


@pytest.mark.slow
def test_cam_pseudo_masks_beat_chance(shapes3):
    tr, _ = shapes3
    m = fit(net(3), D.SegDataset(tr, None, crop=16, tags=True), Mth.TagClassifier())
    quality = evaluate_label_maps(cam_pseudo_masks(m, tr, MethodConfig(name="cam"), "cpu"), tr)
    assert quality["miou"] > 0.4 and quality["coverage"] > 0.5


@pytest.mark.slow
def test_semi_supervised_methods_learn_from_few_labels(shapes3):
    """4 labelled + 32 unlabelled images. On this easy toy the 4 labelled images alone already reach ~0.95
    mIoU, so the test checks that each method learns, not that it beats the subset (see README)."""
    tr, te = shapes3
    idx = np.arange(4)
    lab = D.SegDataset(tr.subset(idx), D.make_weak_labels(tr.subset(idx), "full", 0), crop=S)
    sub = evaluate_model(fit(net(3), lab, Mth.Supervised(), batch_size=4), te)["miou"]
    paired = D.PairedDataset(lab, D.SegDataset(tr, None, crop=S))
    fix = evaluate_model(fit(net(3), paired, Mth.FixMatch(0.9)), te)["miou"]
    assert sub > 0.7 and fix > 0.7
    mt = fit(MeanTeacher(net(3)), paired, Mth.MeanTeacherObjective(weight=1.0))
    assert evaluate_model(mt, te)["miou"] > 0.4
    cps = fit(DualNet(net(3), UNet(3, base=8, depth=2)), paired, Mth.CrossPseudoSupervision())
    assert evaluate_model(cps, te)["miou"] > 0.4


@pytest.mark.slow
def test_gce_learns_from_noisy_masks(shapes3):
    tr, te = shapes3
    w = D.make_weak_labels(tr, "noisy", 0, level="low")
    assert evaluate_label_maps(w, tr)["miou"] < 0.95
    m = fit(net(3), D.SegDataset(tr, w, crop=S), Mth.Supervised(loss="gce"))
    assert evaluate_model(m, te)["miou"] > 0.5


@pytest.mark.slow
def test_minent_beats_source_only_on_a_shift_it_must_win(shapes2):
    """Target: the background turns light grey, objects keep their colour (data.brighten_background).
    Source-only, evaluated as it was trained, mistakes much of the light background for objects; MinEnt
    (separate target passes, target BN statistics at test: the defaults of the two methods) must beat it
    clearly. Calibration, seeds 0 / 1 / 2: source-only mDice 0.27 / 0.41 / 0.28, MinEnt 0.89 / 0.94 / 0.84."""
    from label_efficient_seg.evaluate import adapt_bn_statistics

    tr, te = shapes2
    src = D.SegDataset(tr, D.make_weak_labels(tr, "full", 0), crop=S)
    tgt_train = D.brighten_background(D.synthetic_shapes(32, S, 2, seed=4))
    tgt_test = D.brighten_background(te)
    so = fit(net(2), src, Mth.Supervised())
    me = fit(net(2), D.PairedDataset(src, D.SegDataset(tgt_train, None, crop=S)), Mth.EntropyMinimization(1.0))
    source_only = evaluate_model(so, tgt_test)["mdice"]
    minent = evaluate_model(adapt_bn_statistics(me, tgt_train.images), tgt_test)["mdice"]
    assert minent > 0.75 and minent > source_only + 0.2, (minent, source_only)


@pytest.mark.slow
def test_iic_clusters_match_classes():
    """IIC maximises mutual information, which favours balanced clusters: with the default small shapes
    (15 % foreground) it prefers a spatial split, so this test uses larger shapes (~27 % foreground)."""
    tr = D.synthetic_shapes(32, S, 2, seed=1, max_shapes=3, min_size=10)
    te = D.synthetic_shapes(12, S, 2, seed=2, max_shapes=3, min_size=10)
    torch.manual_seed(0)
    m = fit(ClusterNet(2, 8, base=8, depth=2), D.SegDataset(tr, None, crop=S), Mth.IIC(0), steps=120)
    # one cluster everywhere scores ~0.37 here; IIC learns slowly on this toy (0.54 at 120 steps)
    assert evaluate_model(m, te, num_clusters=2)["miou"] > 0.5
