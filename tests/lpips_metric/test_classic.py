"""Classic baselines: golden PSNR/SSIM on the five TID2013 pairs, and basic properties."""

from __future__ import annotations

import pytest
import torch

from lpips_metric import classic
from lpips_metric.data import load_image

TID_PSNR = {"I03": 21.11, "I04": 20.99, "I06": 27.01, "I08": 23.30, "I19": 21.62}
TID_SSIM = {"I03": 0.6993, "I04": 0.9978, "I06": 0.9989, "I08": 0.9669, "I19": 0.6519}


@pytest.fixture(scope="module")
def tid_pairs():
    from common.data import dataset_path

    root = dataset_path("TID2013 calibration", "perceptual/tid2013_calibration", source="../shared/data/SOURCES.md")
    ref = torch.stack([load_image(root / "ref_dir" / f"{k}.bmp", None) for k in TID_PSNR])
    dist = torch.stack([load_image(root / "dist_dir" / f"{k}.bmp", None) for k in TID_PSNR])
    return ref, dist


def test_psnr_golden_tid2013(tid_pairs):
    got = classic.psnr(*tid_pairs)
    for value, (name, want) in zip(got.tolist(), TID_PSNR.items()):
        assert round(value, 2) == pytest.approx(want, abs=1e-9), name


def test_ssim_golden_tid2013(tid_pairs):
    got = classic.ssim(*tid_pairs)  # MATLAB convention (rgb2gray, 8-bit), see classic.py
    for value, (name, want) in zip(got.tolist(), TID_SSIM.items()):
        assert value == pytest.approx(want, abs=2e-4), name


def test_properties_and_errors():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    for space in ("rgb", "lab"):
        assert torch.all(classic.l2(x, x, space) == 0)
        assert torch.all(classic.l2(x, y, space) > 0)
    assert classic.ssim(x, x).tolist() == pytest.approx([1.0, 1.0])
    assert torch.all(classic.ssim(x, y, "rgb") < 1)
    assert torch.isinf(classic.psnr(x, x)).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classic.psnr(x * 255, y * 255)
    with pytest.raises(ValueError, match="equal shapes"):
        classic.ssim(x, y[..., :16])
    with pytest.raises(ValueError, match="at least 11"):
        classic.ssim(x[..., :8, :8], y[..., :8, :8])
