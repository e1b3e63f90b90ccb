"""2AFC agreement and JND mAP, scored exactly as the reference computes them, and dataset-level evaluation.

Distance functions take two N x 3 x H x W batches in [0, 1] and return N distances (any shape with N
elements: N, N x 1 or N x 1 x 1 x 1 all score the same, since every scorer flattens first; the reference's JND
scorer does not, which makes its sort a no-op on N x 1 x 1 x 1 outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from common.distributed import gather_shards, shard

from . import classic
from .model import LPIPS

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _flat(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def score_2afc(d0, d1, judge) -> tuple[float, np.ndarray]:
    """Mean 2AFC agreement. ``judge`` h is the fraction of raters who judged p1 closer to the reference.

    Per triplet: h if d1 < d0, 1 - h if d0 < d1, 0.5 on a tie.
    """
    d0, d1, h = _flat(d0), _flat(d1), _flat(judge)
    if not (len(d0) == len(d1) == len(h)):
        raise ValueError(f"score_2afc: lengths differ (d0 {len(d0)}, d1 {len(d1)}, judge {len(h)})")
    if len(h) == 0:
        raise ValueError("score_2afc: no triplets")
    if ((h < 0) | (h > 1)).any():
        raise ValueError("score_2afc: judgments must be fractions in [0, 1]")
    scores = (d1 < d0) * h + (d0 < d1) * (1 - h) + (d0 == d1) * 0.5
    return float(scores.mean()), scores


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision/recall curve, VOC style (not the 11-point version)."""
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope: running max from the right
    changed = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[changed + 1] - r[changed]) * p[changed + 1]))


def score_jnd(distances, same) -> tuple[float, dict[str, np.ndarray]]:
    """JND mAP: pairs sorted by distance, "same" fractions as soft positives, VOC AP of the PR curve."""
    d, s = _flat(distances), _flat(same)
    if len(d) != len(s):
        raise ValueError(f"score_jnd: lengths differ (distances {len(d)}, same {len(s)})")
    if len(d) == 0 or s.sum() <= 0:
        raise ValueError("score_jnd: needs at least one pair judged 'same'")
    order = np.argsort(d, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(s_sorted)
    fp = np.cumsum(1 - s_sorted)
    fn = s_sorted.sum() - tp
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return voc_ap(recall, precision), {"precision": precision, "recall": recall}


# ----------------------------------------------------------------------------------------- distances


def lpips_distance(model: LPIPS) -> DistanceFn:
    """Distance function of an LPIPS model on [0, 1] batches."""

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dev = next(model.parameters()).device
        return model(a.to(dev), b.to(dev), normalize=True).flatten()

    return fn


def classic_distances() -> dict[str, DistanceFn]:
    """The classic baselines as distances: larger = more different."""
    return {
        "L2 (Lab)": lambda a, b: classic.l2(a, b, "lab"),
        "L2 (RGB)": lambda a, b: classic.l2(a, b, "rgb"),
        "PSNR": classic.neg_psnr,
        "SSIM (gray)": lambda a, b: 1 - classic.ssim(a, b, "gray"),
        "SSIM (Lab)": lambda a, b: classic.dssim(a, b, "lab"),
    }


# ------------------------------------------------------------------------------------ dataset scoring


def _loader(dataset: Dataset, batch_size: int) -> Iterable[dict]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _per_batch(dataset: Dataset, batch_size: int, score, sharded: bool) -> list:
    """``score(batch)`` for the consecutive batches of ``dataset``, in order. ``sharded`` (every rank of a
    torchrun job calls it): the same batches are dealt to the ranks and the results gathered, so every rank
    gets the single-process arrays exactly."""
    if not sharded:
        return [score(batch) for batch in _loader(dataset, batch_size)]
    starts = list(range(0, len(dataset), batch_size))
    mine = [score(default_collate([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))]))
            for s in shard(starts)]
    return gather_shards(mine, len(starts))


@torch.no_grad()
def evaluate_2afc(dataset: Dataset, distance: DistanceFn, batch_size: int = 50, sharded: bool = False) -> dict:
    """2AFC score of ``distance`` over a BAPPS-format 2AFC dataset (items with ref, p0, p1, judge);
    ``sharded``: see ``_per_batch``."""
    rows = _per_batch(dataset, batch_size, lambda b: (_flat(distance(b["ref"], b["p0"])),
                                                      _flat(distance(b["ref"], b["p1"])), _flat(b["judge"])),
                      sharded)
    d0, d1, h = (np.concatenate([r[k] for r in rows]) for k in range(3))
    score, per = score_2afc(d0, d1, h)
    return {"score": score, "d0": d0, "d1": d1, "judge": h, "per_triplet": per}


@torch.no_grad()
def evaluate_jnd(dataset: Dataset, distance: DistanceFn, batch_size: int = 50, sharded: bool = False) -> dict:
    """JND mAP of ``distance`` over a BAPPS-format JND dataset (items with p0, p1, same); ``sharded``: see
    ``_per_batch``."""
    rows = _per_batch(dataset, batch_size, lambda b: (_flat(distance(b["p0"], b["p1"])), _flat(b["same"])),
                      sharded)
    d, s = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    score, _ = score_jnd(d, s)
    return {"score": score, "distances": d, "same": s}
