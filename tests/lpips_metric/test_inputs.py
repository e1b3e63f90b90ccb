"""Input checks, reduction and the torchmetrics wrapper (issue #27, item 4)."""

from __future__ import annotations

import pytest
import torch

from lpips_metric.model import (
    LPIPS,
    NETS,
    TRUNK_MIN_SIZE,
    InputSizeError,
    NonFiniteInputError,
    lpips,
    min_input_size,
)


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(1)
    return LPIPS("alex", trunk="random")


def _pair(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    return x, (x + 0.2 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_is_rejected_unless_the_check_is_off(alex, bad):
    x, y = _pair()
    y[1, 0, 3, 4] = bad
    with pytest.raises(NonFiniteInputError, match="in1 holds .* of 17280: its LPIPS would be NaN"):
        alex(x, y, normalize=True)
    with pytest.raises(NonFiniteInputError, match="in0"):
        alex(y, x, normalize=True, check_range=False)  # the finite check does not hide behind check_range
    with pytest.raises(NonFiniteInputError):
        lpips(x, y, normalize=True, trunk="random")
    with torch.no_grad():  # opt-out (a training loss): the value is what the arithmetic gives, no error
        d = alex(x, y, normalize=True, check_finite=False, check_range=False)
    assert torch.isfinite(d[0]).all() and torch.isfinite(d[2]).all()


def test_min_size_matches_torch_and_fails_in_one_clear_line(reference_models):
    for net in NETS:  # the reference package's trunks (shared with the parity tests: VGG16 is slow to build)
        ref = reference_models(net)
        trunk = torch.nn.Sequential(*[m for k in range(1, ref.net.N_slices + 1) for m in getattr(ref.net, f"slice{k}")])
        limit = min_input_size(trunk)
        assert limit == TRUNK_MIN_SIZE[net]
        with torch.no_grad():
            trunk(torch.zeros(1, 3, limit, limit))  # works at the limit ...
            with pytest.raises(RuntimeError):
                trunk(torch.zeros(1, 3, limit - 1, limit))  # ... and torch itself fails one pixel below
    metric = LPIPS("squeeze", trunk="random")
    x = torch.rand(1, 3, 16, 64)
    with pytest.raises(InputSizeError, match=r"LPIPS\(net='squeeze'\) needs images of at least 17 x 17 pixels.*"
                                             r"got 16 x 64 \(H x W\).*alex: 31, vgg: 16, squeeze: 17"):
        metric(x, x, normalize=True)
    with torch.no_grad():
        assert metric(torch.rand(1, 3, 17, 17), torch.rand(1, 3, 17, 17), normalize=True).shape == (1, 1, 1, 1)


def test_reduction(alex):
    x, y = _pair(n=4)
    with torch.no_grad():
        d, layers = alex(x, y, normalize=True, ret_per_layer=True)
        m, m_layers = alex(x, y, normalize=True, ret_per_layer=True, reduction="mean")
        s = alex(x, y, normalize=True, reduction="sum")
        spatial = alex(x, y, normalize=True, spatial=True)
        spatial_mean = alex(x, y, normalize=True, spatial=True, reduction="mean")
    assert d.shape == (4, 1, 1, 1) and m.shape == () and s.shape == ()
    torch.testing.assert_close(m, d.mean())
    torch.testing.assert_close(s, d.sum())
    for a, b in zip(m_layers, layers):
        torch.testing.assert_close(a, b.mean())
    assert spatial_mean.shape == (40, 48)
    torch.testing.assert_close(spatial_mean, spatial.mean(dim=0)[0])
    assert torch.equal(alex(x, y, normalize=True, reduction="none"), d)
    with pytest.raises(ValueError, match="reduction='avg'"):
        alex(x, y, normalize=True, reduction="avg")
    torch.testing.assert_close(lpips(x, y, normalize=True, trunk="random", reduction="sum").shape, torch.Size([]))


def test_update_compute_wrapper_accumulates_exactly(alex):
    from torchmetrics import Metric

    from lpips_metric.metric import LPIPSMetric

    metric = LPIPSMetric(trunk=alex.trunk, normalize=True)
    assert isinstance(metric, Metric) and metric.higher_is_better is False
    x, y = _pair(n=5, seed=3)
    with torch.no_grad():
        d = alex(x, y, normalize=True).flatten()
        metric.update(x[:2], y[:2])
        metric.update(x[2:], y[2:])
        torch.testing.assert_close(metric.compute(), d.mean())
        metric.reset()
        metric.update(x[:1], y[:1])
        torch.testing.assert_close(metric.compute(), d[0])
    summed = LPIPSMetric(trunk=alex.trunk, normalize=True, reduction="sum")
    with torch.no_grad():
        summed.update(x, y)
    torch.testing.assert_close(summed.compute(), d.sum())
    bad = y.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteInputError):
        metric.update(x, bad)
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        LPIPSMetric(trunk=alex.trunk, reduction="none")
