"""Classic full-reference baselines: L2 (RGB or Lab), PSNR and SSIM, batched, as distances or scores.

All functions take N x 3 x H x W float tensors in [0, 1] (grayscale N x 1 x H x W is accepted) and return a
length-N tensor. Written here rather than taken from torchmetrics because the golden values we test
against (TID2013, ``../shared/data/perceptual/tid2013_calibration``) follow MATLAB's conventions:

* PSNR: over all RGB values of the 8-bit images, peak 1 (= 255 on 8-bit), as pyiqa's ``psnr``.
* SSIM (``colorspace="gray"``, the default): MATLAB's ``rgb2gray`` luminance rounded to 8 bits, an 11 x 11
  Gaussian window with sigma 1.5, 'valid' filtering, C1 = (0.01 L)^2, C2 = (0.03 L)^2, no downsampling.
  This reproduces the published SSIM of the five TID2013 pairs within 6e-5.

The LPIPS reference's own baselines are L2 and DSSIM in Lab (range 100) by default; ``l2(colorspace="lab")``
and ``ssim(colorspace="lab")`` give the same orderings (batched, without the reference's batch-size-1 limit).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

_GRAY = (0.2989, 0.5870, 0.1140)  # MATLAB rgb2gray


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected N x 3 x H x W (or N x 1 x H x W) in [0, 1]; got {tuple(x.shape)}")
    return x


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_batch(x, "x"), _as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"images must have equal shapes; got {tuple(x.shape)} and {tuple(y.shape)}")
    lo, hi = float(torch.minimum(x.min(), y.min())), float(torch.maximum(x.max(), y.max()))
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ValueError(f"classic metrics take [0, 1] images; got values in [{lo:.4g}, {hi:.4g}]")
    return x, y


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) of an N x 3 x H x W [0, 1] sRGB batch, via scikit-image."""
    from skimage.color import rgb2lab

    arr = x.detach().double().permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(rgb2lab(arr, channel_axis=-1)).permute(0, 3, 1, 2).to(x.device)


def _to_space(x: torch.Tensor, colorspace: str) -> tuple[torch.Tensor, float]:
    """The batch in the given colour space, with its dynamic range."""
    if colorspace == "rgb":
        return x.double(), 1.0
    if colorspace == "lab":
        return rgb_to_lab(x if x.shape[1] == 3 else x.expand(-1, 3, -1, -1)), 100.0
    if colorspace == "gray":
        if x.shape[1] == 1:
            g = x.double() * 255
        else:
            w = torch.tensor(_GRAY, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
            g = (torch.round(x.double() * 255) * w).sum(1, keepdim=True)
        return torch.round(g) / 255, 1.0  # rgb2gray on uint8 returns uint8
    raise ValueError(f"colorspace={colorspace!r}: expected rgb, lab or gray")


def l2(x: torch.Tensor, y: torch.Tensor, colorspace: str = "lab") -> torch.Tensor:
    """Mean squared difference per image (a distance), in [0, 1] RGB or Lab scaled by its range 100."""
    x, y = _pair(x, y)
    a, r = _to_space(x, colorspace)
    b, _ = _to_space(y, colorspace)
    return ((a - b) / r).pow(2).mean(dim=(1, 2, 3)).float()


def psnr(x: torch.Tensor, y: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
    """PSNR in dB over all RGB values, peak 1. ``quantize`` rounds to 8 bits first (as image files are)."""
    x, y = _pair(x, y)
    a, b = x.double(), y.double()
    if quantize:
        a, b = torch.round(a * 255) / 255, torch.round(b * 255) / 255
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(1.0 / mse)).float()  # inf for identical images


@functools.lru_cache(maxsize=4)
def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _blur_valid(t: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """'valid' filtering with the separable size x size Gaussian (rows, then columns)."""
    c = t.shape[1]
    g = _gaussian_1d(size, sigma).to(t)
    t = F.conv2d(t, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(t, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, colorspace: str = "gray", *, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004), channels averaged; see the module doc for the convention."""
    x, y = _pair(x, y)
    a, rng = _to_space(x, colorspace)
    b, _ = _to_space(y, colorspace)
    # float32 filtering: 5-10x faster than float64 on CPU, and within 1e-5 of it (golden test: 2e-4)
    a, b = a.float(), b.float()
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window} x {window}; got {tuple(a.shape[-2:])}")
    blur = lambda t: _blur_valid(t, window, sigma)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return smap.mean(dim=(1, 2, 3)).float()


def dssim(x: torch.Tensor, y: torch.Tensor, colorspace: str = "lab") -> torch.Tensor:
    """(1 - SSIM) / 2: SSIM as a distance (the reference's DSSIM baseline, Lab by default)."""
    return (1 - ssim(x, y, colorspace)) / 2


def neg_psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-PSNR: PSNR as a distance (larger = more different); identical images give -inf."""
    return -psnr(x, y, quantize=False)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().reshape(-1)
