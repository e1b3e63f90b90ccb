"""Fast lin calibration and scoring on a frozen trunk, through cached per-layer channel means.

With the trunk frozen, the distance is linear in the head weights:

    d(x, x0) = sum_l mean_{h,w} sum_c v_{l,c} D^l_{c,h,w} = m(x, x0) . v,   m = [mean_{h,w} D^l_c]_{l,c}

so one trunk pass per image gives m for every pair, after which training the heads (with G and the same
BCE ranking loss, Adam, schedule and clamp) and scoring ANY head vector (official, trained, all-ones
baseline) costs a matrix product. This is exact for the forward pass; the one change from the reference's
lin training is that there is no dropout in front of the heads (dropout acts per location and channel, and
does not commute with the spatial mean). Used by ``reproduce``; ``train.py`` runs the reference loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from .evaluate import score_2afc, score_jnd
from .model import LPIPS, RankingHead, ranking_loss
from .training import MetricTrainConfig, lr_factor


@torch.no_grad()
def channel_means(metric: LPIPS, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """N x sum(C_l): spatial means of D^l for each pair (layers concatenated in order)."""
    return torch.cat([d.mean(dim=(2, 3)) for d in metric.layer_diffs(feats_a, feats_b)], dim=1)


@dataclass
class TripletFeatures:
    m0: torch.Tensor  # N x D, (ref, p0)
    m1: torch.Tensor  # N x D, (ref, p1)
    judge: torch.Tensor  # N


@dataclass
class PairFeatures:
    m: torch.Tensor  # N x D, (p0, p1)
    same: torch.Tensor  # N


@torch.no_grad()
def cache_2afc(metric: LPIPS, dataset: Dataset, batch_size: int = 50) -> TripletFeatures:
    metric.eval()
    m0s, m1s, hs = [], [], []
    for b in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        n = b["ref"].shape[0]
        f = metric.features(torch.cat([b["ref"], b["p0"], b["p1"]]) * 2 - 1)
        fr, f0, f1 = [x[:n] for x in f], [x[n:2 * n] for x in f], [x[2 * n:] for x in f]
        m0s.append(channel_means(metric, fr, f0))
        m1s.append(channel_means(metric, fr, f1))
        hs.append(b["judge"].reshape(-1))
    return TripletFeatures(torch.cat(m0s), torch.cat(m1s), torch.cat(hs))


@torch.no_grad()
def cache_jnd(metric: LPIPS, dataset: Dataset, batch_size: int = 50) -> PairFeatures:
    metric.eval()
    ms, ss = [], []
    for b in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        n = b["p0"].shape[0]
        f = metric.features(torch.cat([b["p0"], b["p1"]]) * 2 - 1)
        ms.append(channel_means(metric, [x[:n] for x in f], [x[n:] for x in f]))
        ss.append(b["same"].reshape(-1))
    return PairFeatures(torch.cat(ms), torch.cat(ss))


def head_vector(metric: LPIPS) -> torch.Tensor:
    """The heads as one vector v (all ones for an lpips=False baseline)."""
    if metric.heads is None:
        return torch.ones(sum(metric.channels))
    return torch.cat([h.weight.detach().reshape(-1) for h in metric.heads]).cpu()


def set_head_vector(metric: LPIPS, v: torch.Tensor) -> LPIPS:
    offset = 0
    with torch.no_grad():
        for head in metric.heads:
            c = head.weight.numel()
            head.weight.copy_(v[offset:offset + c].view_as(head.weight))
            offset += c
    return metric


def score_cached(feats: TripletFeatures | PairFeatures, v: torch.Tensor) -> float:
    if isinstance(feats, TripletFeatures):
        return score_2afc(feats.m0 @ v, feats.m1 @ v, feats.judge)[0]
    return score_jnd(feats.m @ v, feats.same)[0]


def fit_lin_cached(feats: TripletFeatures, v0: torch.Tensor, cfg: MetricTrainConfig, *, epochs: int,
                   batch_size: int = 50, seed: int = 0, log=None) -> tuple[torch.Tensor, list[dict]]:
    """Train v (from v0, clamped >= 0 after every step) and G with BCE(G(m0.v, m1.v), h).

    Adam(lr, (beta1, 0.999)), the reference's constant-then-linear-decay schedule over ``epochs`` epochs
    (cfg.nepoch at full rate when epochs = nepoch + nepoch_decay). Returns v and per-epoch history.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    v = v0.clone().clamp_(min=0).requires_grad_(True)
    rank = RankingHead(cfg.rank_hidden)
    opt = torch.optim.Adam([v, *rank.parameters()], lr=cfg.lr, betas=(cfg.beta1, 0.999))
    n = len(feats.judge)
    history = []
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(epoch, cfg.nepoch, cfg.nepoch_decay)
        perm = torch.randperm(n, generator=g)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            d0 = (feats.m0[idx] @ v).view(-1, 1, 1, 1)
            d1 = (feats.m1[idx] @ v).view(-1, 1, 1, 1)
            loss = ranking_loss(rank, d0, d1, feats.judge[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                v.clamp_(min=0)
            total += loss.item() * len(idx)
            count += len(idx)
        with torch.no_grad():
            row = {"epoch": epoch + 1, "loss": total / count, "train_2afc": score_cached(feats, v.detach())}
        history.append(row)
        if log is not None:
            log(row)
    return v.detach(), history
