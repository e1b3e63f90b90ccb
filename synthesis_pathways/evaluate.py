"""Planning metrics: recovery (fingerprint and canonical SMILES), similarity, properties, rt1 MRR.

* recovery (paper): the best node's Tanimoto to the target (Morgan r=2, 4096 bits) equals 1.
* recovery (SMILES): the best node's canonical SMILES equals the target's (stricter).
* mean similarity over all targets, failures counted as 0 (comparable to the paper's 0.759 / 0.423);
  and over unrecovered, finished targets only (what the reference's script prints, e.g. 0.581).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from common.checkpoint import resumable_map

from .chem import canonical_smiles, morgan_bits, properties
from .decode import Decoder


@dataclass
class TargetResult:
    target: str
    best: str | None
    similarity: float
    finished: bool
    recovered_fp: bool
    recovered_smiles: bool
    depth: int
    seconds: float
    route: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def plan_targets(decoder: Decoder, targets: Sequence[str], *, beam: int = 3, progress_bar: bool = True,
                 desc: str = "planning", cache_path: str | os.PathLike | None = None,
                 cache_params: dict | None = None) -> list[TargetResult]:
    """Plan every target. With ``cache_path`` (JSONL, :func:`common.checkpoint.resumable_map`) each
    finished target is kept as it completes and read back by a rerun with the same targets, beam and
    ``cache_params`` (name the model there), so a long evaluation resumes where it was killed."""

    def plan_one(target: str) -> dict:
        canon = canonical_smiles(target)
        if canon is None:  # an invalid target counts as a failure; it does not abort the set
            return TargetResult(target, None, 0.0, False, False, False, 0, 0.0).to_dict()
        r = decoder.plan(canon, beam=beam)
        return TargetResult(
            target=canon, best=r.best, similarity=r.similarity, finished=r.finished,
            recovered_fp=r.finished and r.similarity >= 1.0 - 1e-9,
            recovered_smiles=r.finished and r.best == canon,
            depth=r.tree.depth if r.tree is not None else 0, seconds=r.seconds,
            route=r.tree.to_json() if r.tree is not None else "").to_dict()

    params = {"targets_sha1": hashlib.sha1("\n".join(targets).encode()).hexdigest(), "beam": beam,
              **(cache_params or {})}
    rows = resumable_map(plan_one, list(targets), cache_path, params, desc=desc, show_progress=progress_bar,
                         unit="target")
    return [TargetResult(**r) for r in rows]


def summarize(results: Sequence[TargetResult]) -> dict[str, float]:
    n = len(results)
    if n == 0:
        return {"n": 0}
    sim = np.array([r.similarity for r in results])
    rec = np.array([r.recovered_fp for r in results])
    fin = np.array([r.finished for r in results])
    unrec_fin = fin & ~rec
    return {
        "n": n,
        "recovery_fp": float(rec.mean()),
        "recovery_smiles": float(np.mean([r.recovered_smiles for r in results])),
        "similarity_all": float(sim.mean()),
        "similarity_unrecovered_finished": float(sim[unrec_fin].mean()) if unrec_fin.any() else math.nan,
        "unfinished": float(1 - fin.mean()),
        "seconds_per_target": float(np.mean([r.seconds for r in results])),
    }


def nearest_block_similarity(targets: Sequence[str], blocks: Sequence[str]) -> np.ndarray:
    """Per target, the best Tanimoto (Morgan r=2, 4096 bits) of any single building block: the score of
    answering with a block and no reaction. A planner that ends below it has not used the pool well;
    on targets far from the pool it is also a ceiling-like reference for what the pool allows."""
    if not len(targets) or not len(blocks):
        return np.zeros(len(targets))
    b = np.stack([morgan_bits(s) for s in blocks])  # [n_blocks, 4096]
    t = np.stack([morgan_bits(canonical_smiles(s)) for s in targets])  # [n_targets, 4096]; invalid -> zeros
    inter = t @ b.T
    union = t.sum(1, keepdims=True) + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).max(axis=1)


def property_correlations(results: Sequence[TargetResult]) -> dict[str, float]:
    """Pearson correlation of target vs answer properties (QED, logP, MW, SA), finished targets only."""
    pairs = [(properties(r.target), properties(r.best)) for r in results if r.finished and r.best]
    out = {}
    for name in ("qed", "logp", "mw", "sa"):
        a = np.array([getattr(p[0], name) for p in pairs])
        b = np.array([getattr(p[1], name) for p in pairs])
        ok = np.isfinite(a) & np.isfinite(b)
        out[name] = float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 and a[ok].std() > 0 and b[ok].std() > 0 \
            else math.nan
    return out


def recovery_by_depth(results: Sequence[TargetResult], depths: Sequence[int]) -> dict[int, float]:
    out: dict[int, list[bool]] = {}
    for r, d in zip(results, depths):
        out.setdefault(int(d), []).append(r.recovered_fp)
    return {d: float(np.mean(v)) for d, v in sorted(out.items())}


def mean_reciprocal_rank(pred: np.ndarray, true_idx: np.ndarray, knn) -> float:
    """MRR of the true first reactant among all blocks ranked by cosine similarity to rt1's output."""
    sims = knn.similarities(pred)  # [m, n_blocks]
    true_sim = sims[np.arange(len(true_idx)), true_idx]
    ranks = 1 + (sims > true_sim[:, None]).sum(axis=1)
    return float(np.mean(1.0 / ranks))
