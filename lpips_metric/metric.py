"""LPIPS as a torchmetrics ``Metric``: accumulate over batches with ``update``, read with ``compute``.

    from lpips_metric.metric import LPIPSMetric
    metric = LPIPSMetric(net="alex", normalize=True)          # images in [0, 1]
    for fake, real in loader:
        metric.update(fake, real)
    metric.compute()                                           # mean LPIPS over every image pair seen
    metric.reset()

A subclass of ``torchmetrics.Metric`` (not a look-alike), so it syncs across processes under DDP, moves
with ``.to(device)``, logs in Lightning and sits in a ``MetricCollection``. The states are the running sum
of distances and the pair count (``dist_reduce_fx="sum"``), so ``compute`` is exact for any split of the
data into batches and processes. The distances are :class:`lpips_metric.model.LPIPS`'s, with its input
checks (range, finiteness, equal shapes, minimum size) and its trunk and head loading (never a download).
"""

from __future__ import annotations

import os

import torch
from torchmetrics import Metric

from .model import LPIPS, REDUCTIONS


class LPIPSMetric(Metric):
    """Mean (or sum) LPIPS over every image pair passed to :meth:`update`.

    Args:
        net, version, trunk, heads: as for :class:`~lpips_metric.model.LPIPS` (``trunk="random"`` for tests only).
        normalize: the images are in [0, 1] (else [-1, 1]).
        reduction: ``"mean"`` (default) or ``"sum"`` over all pairs.
        check_finite: reject NaN / infinite inputs (the default; torchmetrics' LPIPS does the same).
        **kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``dist_sync_fn``, ...).
    """

    higher_is_better = False
    is_differentiable = True
    full_state_update = False

    def __init__(self, net: str = "alex", version: str = "0.1", *, trunk: str | os.PathLike | torch.nn.Module = "imagenet",
                 heads: str | os.PathLike = "official", normalize: bool = False, reduction: str = "mean",
                 check_finite: bool = True, **kwargs):
        super().__init__(**kwargs)
        if reduction not in REDUCTIONS[1:]:
            raise ValueError(f"reduction={reduction!r}: expected 'mean' or 'sum' (per-pair values: use LPIPS itself)")
        self.lpips = LPIPS(net, version, trunk=trunk, heads=heads)
        self.normalize, self.reduction, self.check_finite = normalize, reduction, check_finite
        self.add_state("sum_scores", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, img1: torch.Tensor, img2: torch.Tensor) -> None:
        d = self.lpips(img1, img2, normalize=self.normalize, check_finite=self.check_finite)
        self.sum_scores += d.sum().to(self.sum_scores.dtype)
        self.total += d.shape[0]

    def compute(self) -> torch.Tensor:
        if self.reduction == "sum":
            return self.sum_scores.float()
        return (self.sum_scores / self.total.clamp(min=1)).float()
