"""The protocol fixes of issue 25: domain adaptation never mixes domains in a BatchNorm batch, the weight
schedules of consistency / pairwise terms (golden values), class-balanced partial CE, background clicks at
a stated ratio, Voronoi edges, and selection only on validation splits disjoint from the reported ones."""

import math

import numpy as np
import pytest
import torch

from label_efficient_seg import data as D
from label_efficient_seg import methods as Mth
from label_efficient_seg import weak_labels as wl
from label_efficient_seg.config import DataConfig, MethodConfig
from label_efficient_seg.evaluate import adapt_bn_statistics
from label_efficient_seg.experiment import (
    RAMP_DEFAULTS,
    check_disjoint,
    class_balance_weights,
    load_splits,
    make_ramp,
)
from label_efficient_seg.metrics import IGNORE_INDEX as IG
from label_efficient_seg.model import UNet


def _da_batch(b=4, s=16):
    """Source images all 0.2, target images all 0.8: every row says which domain it comes from."""
    torch.manual_seed(0)
    x = 0.2 + 0.01 * torch.rand(b, 3, s, s)
    t = 0.8 + 0.01 * torch.rand(b, 3, s, s)
    y = torch.randint(0, 2, (b, s, s))
    return {"image": x, "weak": y, "u_image": t, "u_valid": torch.ones(b, s, s, dtype=torch.long)}


# ----------------------------------------------------------------------------- domain adaptation

def test_minent_source_and_target_never_share_a_batchnorm_batch():
    """Every forward of the network (hence every BatchNorm batch in train mode) holds images of one domain
    only. The old objective ran model(cat([x, t])): one batch mixing both."""
    net = Mth.attach_step_counter(UNet(2, base=4, depth=2))
    domains = []

    def record(_module, args):
        rows = args[0].flatten(1).mean(1)
        domains.append({"source" if r < 0.5 else "target" for r in rows.tolist()})

    net.register_forward_pre_hook(record)
    out = Mth.EntropyMinimization(0.5)(net, _da_batch())
    out["loss"].backward()
    assert len(domains) == 2 and all(len(d) == 1 for d in domains), domains
    assert {next(iter(d)) for d in domains} == {"source", "target"}


def test_minent_running_statistics_are_the_source_statistics():
    """The target pass normalises with its own batch statistics but leaves the running statistics alone:
    after one MinEnt step they equal those of a source-only step on the same source batch."""
    batch = _da_batch()
    stats = []
    for objective in (Mth.Supervised(), Mth.EntropyMinimization(0.5)):
        torch.manual_seed(1)
        net = Mth.attach_step_counter(UNet(2, base=4, depth=2))
        objective(net, batch)
        stats.append({k: v.clone() for k, v in net.state_dict().items() if "running" in k})
    assert stats[0].keys() == stats[1].keys() and stats[0]
    assert all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])


def test_adabn_estimates_statistics_on_the_given_images_only():
    torch.manual_seed(0)
    net = UNet(2, base=4, depth=2)
    net.train()
    net(torch.rand(4, 3, 16, 16))  # some source statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    imgs = [np.full((16, 16, 3), v, np.uint8) for v in (200, 210, 220)]
    adapted = adapt_bn_statistics(net, imgs)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is untouched
    # first BatchNorm: the mean of the first convolution's outputs over the target images
    x = torch.stack([D.to_tensor_image(i) for i in imgs])
    conv_out = net.inc[0]((x - 0.5) / 0.25)
    assert torch.allclose(adapted.inc[1].running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    assert not adapted.training


# ----------------------------------------------------------------------------- ramps

@pytest.mark.parametrize("step, linear, sigmoid", [
    (0, 0.0, 0.0), (99, 0.0, 0.0), (100, 0.0, math.exp(-5)), (200, 0.5, math.exp(-1.25)),
    (250, 0.75, math.exp(-0.3125)), (300, 1.0, 1.0), (10_000, 1.0, 1.0)])
def test_ramp_schedules_golden_values(step, linear, sigmoid):
    """Off before the start (100), then t or exp(-5 (1 - t)^2) over 200 steps, then 1."""
    assert Mth.ramp_weight(step, 100, 200, "linear") == pytest.approx(linear, abs=1e-12)
    assert Mth.ramp_weight(step, 100, 200, "sigmoid") == pytest.approx(sigmoid, abs=1e-12)


def test_method_ramps_default_to_their_schedules():
    cps = make_ramp(MethodConfig(name="cps"), 1000)
    assert (cps.start, cps.length, cps.shape) == (100, 300, "sigmoid")
    pts = make_ramp(MethodConfig(name="points"), 1000)
    assert (pts.start, pts.length, pts.shape) == (300, 200, "linear") and RAMP_DEFAULTS["boxinst"][0] == 0
    custom = make_ramp(MethodConfig(name="cps", ramp_start_fraction=0.0, warmup_fraction=0.5, ramp_shape="linear"),
                       100)
    assert (custom.start, custom.length, custom.shape) == (0, 50, "linear")


def test_cps_weight_is_zero_before_its_ramp_starts():
    """CPS at step 0 is supervised only (the old objective applied weight 1.5 from step 0)."""
    from label_efficient_seg.model import DualNet

    torch.manual_seed(0)
    net = Mth.attach_step_counter(DualNet(UNet(3, base=4, depth=2), UNet(3, base=4, depth=2)))
    b = {"image": torch.rand(2, 3, 16, 16), "weak": torch.randint(0, 3, (2, 16, 16)), "u_image": torch.rand(2, 3, 16, 16)}
    obj = Mth.CrossPseudoSupervision(1.5, ramp=Mth.Ramp(2, 4, "sigmoid"))
    first = obj(net, b)
    assert first["warmup"] == 0.0 and torch.equal(first["loss"], first["loss_x"])
    obj(net, b)
    third = obj(net, b)  # step 2: the ramp starts at exp(-5)
    assert third["warmup"] == pytest.approx(math.exp(-5))


def test_pairwise_term_is_off_until_its_start():
    torch.manual_seed(0)
    net = Mth.attach_step_counter(UNet(2, base=4, depth=2))
    w = torch.full((2, 16, 16), IG)
    w[:, 3, 3], w[:, 10, 10] = 1, 0
    b = {"image": 0.5 + 0.01 * torch.rand(2, 3, 16, 16), "weak": w}  # near-uniform: every pair is selected
    obj = Mth.PartialCEPairwise(1.0, ramp=Mth.Ramp(1, 0, "linear"))  # off at step 0, full from 1
    first = obj(net, b)
    assert first["warmup"] == 0.0 and "loss_pair" not in first and torch.equal(first["loss"], first["loss_pce"])
    second = obj(net, b)
    assert second["warmup"] == 1.0 and second["loss"] > second["loss_pce"]


# ----------------------------------------------------------------------------- sparse labels

def test_class_balanced_partial_ce_weighs_every_class_equally():
    """21 foreground clicks and 1 background click: weights N / (K n_c) = (22/42, 11), and the weighted
    partial CE is the mean of the two per-class mean losses."""
    w = np.full((4, 8), IG)
    w.flat[:21] = 1
    w[3, 7] = 0
    cw = class_balance_weights([w], 3)
    assert cw.tolist() == pytest.approx([11.0, 22 / 42, 0.0])
    from label_efficient_seg.losses import partial_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 8)
    target = torch.from_numpy(w)[None]
    per_pixel = torch.nn.functional.cross_entropy(logits, target.clamp(max=2), reduction="none")
    expected = (per_pixel[target == 0].mean() + per_pixel[target == 1].mean()) / 2
    assert partial_cross_entropy(logits, target, weight=cw) == pytest.approx(float(expected), rel=1e-5)


def _many_objects(n=20, size=64):
    inst = np.zeros((size, size), np.int64)
    k = 0
    for y in range(4, size - 4, 12):
        for x in range(4, size - 4, 12):
            if k < n:
                k += 1
                inst[y:y + 3, x:x + 3] = k
    return inst


@pytest.mark.parametrize("ratio, expected", [(1.0, 20), (0.5, 10), (0.0, 1)])
def test_background_clicks_follow_the_stated_ratio(ratio, expected):
    inst = _many_objects(20)
    mask = (inst > 0).astype(np.int64)
    lab = wl.point_labels(mask, np.random.default_rng(0), instances=inst, background_ratio=ratio,
                          min_background_distance=2)
    assert (lab == 1).sum() == 20 and (lab == 0).sum() == expected
    fixed = wl.point_labels(mask, np.random.default_rng(0), instances=inst, n_background=3, min_background_distance=2)
    assert (fixed == 0).sum() == 3


def test_points_on_a_split_have_one_background_click_per_object_click():
    ds = D.synthetic_shapes(12, 32, 2, seed=3)
    weak = D.make_weak_labels(ds, "points", 0, min_background_distance=2)
    fg = sum(int((w == 1).sum()) for w in weak)
    bg = sum(int((w == 0).sum()) for w in weak)
    n_obj = sum(int(i.max()) for i in ds.instances)
    assert fg == n_obj and bg == fg


def test_voronoi_edges_run_between_the_clicks():
    edges = wl.voronoi_edges([(5, 2), (5, 12)], (11, 15))
    cols = np.nonzero(edges.any(0))[0]
    assert cols.tolist() == [7, 8] and edges[:, 7].all()  # one pixel each side of the bisector x = 7
    inst = np.zeros((11, 15), np.int64)
    inst[4:7, 1:4], inst[4:7, 11:14] = 1, 2
    lab = wl.point_labels((inst > 0).astype(np.int64), np.random.default_rng(0), instances=inst, n_background=0,
                          voronoi=True)
    assert lab[5, 2] == 1 and lab[5, 12] == 1 and (lab[:, 7] == 0).all() and (lab[:, 0] == IG).all()


# ----------------------------------------------------------------------------- selection splits

def test_check_disjoint_refuses_a_shared_image():
    a = D.synthetic_shapes(4, 16, 2, seed=1)
    with pytest.raises(ValueError, match="shares 4 image"):
        check_disjoint(a, ("test", a))
    check_disjoint(a, ("test", D.synthetic_shapes(4, 16, 2, seed=2)))


def test_synthetic_selection_splits_are_disjoint_from_the_reported_ones():
    s = load_splits(DataConfig("shapes", shapes_n=8, shapes_size=16, target="shifted"))
    check_disjoint(s.val, ("test", s.test), ("train", s.train))
    check_disjoint(s.target_val, ("test", s.test), ("target train", s.target_train))


def test_dsb_and_dusk_select_on_carved_validation_splits():
    """The old splits validated on the test fold (DSB) and on the dusk test frames (CamVid day -> dusk)."""
    dsb = load_splits(DataConfig("dsb"))
    check_disjoint(dsb.val, ("test", dsb.test), ("train", dsb.train))
    assert len(dsb.val) == 8 and len(dsb.train) + len(dsb.val) + len(dsb.test) == 65
    dusk = load_splits(DataConfig("camvid", target="camvid_dusk"))
    check_disjoint(dusk.target_val, ("test", dusk.test), ("target train", dusk.target_train))
    check_disjoint(dusk.val, ("test", dusk.test), ("train", dusk.train))
    assert len(dusk.target_val) == 9 and max(dusk.target_train.ids) < min(dusk.target_val.ids) < min(dusk.test.ids)


@pytest.mark.slow  # reads all of Kvasir-SEG and CVC-ClinicDB (~1,600 JPEGs)
def test_polyp_selection_splits_are_disjoint_from_the_reported_ones():
    s = load_splits(DataConfig("kvasir", target="cvc"))
    check_disjoint(s.val, ("test", s.test), ("train", s.train))
    check_disjoint(s.target_val, ("test", s.test), ("target train", s.target_train))


def test_a_run_refuses_to_select_on_its_test_split(tmp_path, monkeypatch):
    """run_experiment asserts the selection split shares no image with the reported one."""
    from common.config import TrainerConfig
    from label_efficient_seg import experiment

    real = experiment.load_splits

    def leaky(*a, **k):
        s = real(*a, **k)
        s.val = s.test
        return s

    monkeypatch.setattr(experiment, "load_splits", leaky)
    with pytest.raises(ValueError, match="val split shares"):
        experiment.run_experiment(DataConfig("shapes", crop=16, shapes_n=8, shapes_size=16), {"name": "full"},
                                  {"base": 4, "depth": 2}, None, TrainerConfig(max_epochs=1, batch_size=4,
                                                                              progress_bar=False), tmp_path / "r")


def test_domain_adaptation_runs_select_on_the_target_validation_split(tmp_path):
    """source_only / minent pick checkpoints on the target val split (data.da_val=target) and score with
    target BatchNorm statistics; final_metrics.json says which split each number comes from."""
    import json

    from common.config import LoggerConfig, TrainerConfig
    from label_efficient_seg.experiment import run_experiment

    run_experiment(DataConfig("shapes", crop=16, shapes_n=8, shapes_size=16, shapes_classes=2, target="shifted"),
                   {"name": "minent", "entropy_weight": 0.1}, {"base": 4, "depth": 2}, None,
                   TrainerConfig(max_epochs=1, batch_size=4, progress_bar=False), tmp_path / "r",
                   logger_cfg=LoggerConfig(tensorboard=False))
    final = json.loads((tmp_path / "r" / "final_metrics.json").read_text())
    assert final["splits"]["selection"] == "shifted shapes (seed 5000)"
    assert final["splits"]["test"] == "shifted shapes (seed 3000)" and final["test_bn"] == "target"


def test_voronoi_on_a_multiclass_dataset_is_a_config_error(tmp_path):
    from common.config import ConfigError, TrainerConfig
    from label_efficient_seg.experiment import run_experiment

    with pytest.raises(ConfigError, match="point_expansion=none"):
        run_experiment(DataConfig("shapes", crop=16, shapes_n=8, shapes_size=16), {"name": "points"},
                       {"base": 4, "depth": 2}, None, TrainerConfig(max_epochs=1, batch_size=4, progress_bar=False),
                       tmp_path / "r")
