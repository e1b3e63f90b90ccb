"""Calibration: schedule, clamp, the one-pass distances, and a learning test on a small synthetic set."""

from __future__ import annotations

import pytest
import torch

from lpips_metric.data import twoafc_splits
from lpips_metric.evaluate import score_2afc
from lpips_metric.model import LPIPS
from lpips_metric.training import (
    MetricTrainConfig,
    RankedLPIPS,
    build_metric,
    loss_fn,
    lr_factor,
    make_optimizer,
)


def test_reference_lr_schedule():
    # 10 epochs: 6 at the base rate, then 0.8, 0.6, 0.4, 0.2 (the reference decays after each epoch > nepoch)
    assert [lr_factor(e, 5, 5) for e in range(10)] == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])


def test_one_pass_distances_equal_the_metric():
    torch.manual_seed(0)
    model = RankedLPIPS(build_metric(MetricTrainConfig(trunk="random", dropout=0.0))).eval()
    g = torch.Generator().manual_seed(1)
    ref, p0, p1 = (torch.rand(3, 3, 64, 64, generator=g) for _ in range(3))
    with torch.no_grad():
        d0, d1 = model.distances(ref, p0, p1)
        assert torch.allclose(d0, model.metric(ref, p0, normalize=True), atol=1e-6)
        assert torch.allclose(d1, model.metric(ref, p1, normalize=True), atol=1e-6)


def test_clamp_touches_only_the_heads():
    torch.manual_seed(0)
    cfg = MetricTrainConfig(net="squeeze", variant="scratch", lr=0.1, dropout=0.0)
    model = RankedLPIPS(build_metric(cfg))
    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(2)
    batch = {k: torch.rand(4, 3, 64, 64, generator=g) for k in ("ref", "p0", "p1")}
    batch["judge"] = torch.tensor([[0.0], [1.0], [0.5], [1.0]])
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model, batch)["loss"].backward()
        opt.step()
    assert all((h.weight >= 0).all() for h in model.metric.heads)
    fire_1x1 = [m.weight for m in model.metric.trunk.modules()
                if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)]
    assert any((w < 0).any() for w in fire_1x1)  # SqueezeNet's own 1x1 kernels stay unconstrained


def _stack(ds):
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_lin_training_raises_2afc(tiny_bapps):
    """From all-zero heads (every triplet a tie: 2AFC = 0.5) lin training on SYNTHETIC judgments must find
    head weights that agree with them, through the real loss, optimizer, clamp and one-pass distances."""
    data = _stack(twoafc_splits(tiny_bapps, "train", ["traditional"], preload=True)["traditional"])
    torch.manual_seed(0)
    cfg = MetricTrainConfig(trunk="random", lr=1e-2, dropout=0.0)
    model = RankedLPIPS(build_metric(cfg))
    with torch.no_grad():
        for head in model.metric.heads:
            head.weight.zero_()

    def agreement() -> float:
        model.eval()
        with torch.no_grad():
            d0, d1 = model.distances(data["ref"], data["p0"], data["p1"])
        return score_2afc(d0, d1, data["judge"])[0]

    before = agreement()
    opt = make_optimizer(model, cfg)
    n = len(data["judge"])
    for epoch in range(2):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, n, 16):
            batch = {k: v[perm[i:i + 16]] for k, v in data.items()}
            opt.zero_grad()
            loss_fn(model, batch)["loss"].backward()
            opt.step()
    after = agreement()
    assert before == pytest.approx(0.5)
    assert after > 0.7
    assert all((h.weight >= 0).all() for h in model.metric.heads)
    # the trained heads work in the plain metric
    metric = LPIPS("alex", trunk=model.metric.trunk, heads="random")
    metric.heads.load_state_dict(model.metric.heads.state_dict())
    with torch.no_grad():
        d0 = metric(data["ref"], data["p0"], normalize=True)
        d1 = metric(data["ref"], data["p1"], normalize=True)
    assert score_2afc(d0, d1, data["judge"])[0] == pytest.approx(after)


def test_variant_errors():
    with pytest.raises(ValueError, match="variant"):
        build_metric(MetricTrainConfig(variant="finetune"))
    with pytest.raises(ValueError, match="scratch"):
        build_metric(MetricTrainConfig(variant="tune", trunk="random"))
