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
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from rdkit import DataStructs

from common.checkpoint import resumable_map

from .chem import canonical_smiles, morgan_bits, morgan_bitvect, properties
from .decode import Decoder, DecodeResult, PlanOptions


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
    source: str = ""  # which rollout answered: rt1 k=.., target_nn j=.., beam
    answer_is_block: bool = False  # the answer is a purchasable block (no reaction)

    def to_dict(self) -> dict:
        return asdict(self)


def target_result(target: str, r: DecodeResult) -> TargetResult:
    return TargetResult(
        target=target, best=r.best, similarity=r.similarity, finished=r.finished,
        recovered_fp=r.finished and r.similarity >= 1.0 - 1e-9, recovered_smiles=r.finished and r.best == target,
        depth=r.tree.depth if r.tree is not None else 0, seconds=r.seconds,
        route=r.tree.to_json() if r.tree is not None else "",
        source=f"{r.source} {'j' if r.source == 'target_nn' else 'k'}={r.k}" if r.source != "beam" else "beam",
        answer_is_block=r.answer_is_block)


def plan_variants(decoder: Decoder, targets: Sequence[str], variants: dict[str, PlanOptions], *,
                  progress_bar: bool = True, desc: str = "planning", cache_path: str | os.PathLike | None = None,
                  cache_params: dict | None = None) -> dict[str, list[TargetResult]]:
    """Plan every target under several :class:`PlanOptions` at once. The greedy-rollout variants share one
    set of rollouts per target (k = 1..max beam from rt1, j = 1..max target_nn from the target's nearest
    blocks): each variant chooses among its own subset with its own protocol, and its time is the sum of
    that subset's rollouts. Beam-search variants run on their own.

    With ``cache_path`` (JSONL, :func:`common.checkpoint.resumable_map`) each finished target is kept as it
    completes and read back by a rerun with the same targets, variants and ``cache_params`` (name the model
    there), so a long evaluation resumes where it was killed."""
    greedy = {n: o for n, o in variants.items() if o.search == "rollouts"}
    need_k = max((o.beam for o in greedy.values()), default=0)
    need_nn = max((o.target_nn for o in greedy.values()), default=0)

    def plan_one(target: str) -> dict:
        canon = canonical_smiles(target)
        if canon is None:  # an invalid target counts as a failure; it does not abort the set
            return {n: TargetResult(target, None, 0.0, False, False, False, 0, 0.0).to_dict() for n in variants}
        out = {}
        if greedy:
            bits = morgan_bits(canon, decoder.featurizer.cfg.radius, decoder.featurizer.cfg.nbits)
            rolls = decoder.rollouts(bits, canon, need_k, need_nn)
            for name, o in greedy.items():
                subset = [r for r in rolls if r.k <= (o.beam if r.source == "rt1" else o.target_nn)]
                chosen = decoder.choose(subset, o.protocol)
                chosen.seconds = sum(r.seconds for r in subset)
                out[name] = target_result(canon, chosen).to_dict()
        for name, o in variants.items():
            if o.search == "beam":
                out[name] = target_result(canon, decoder.plan(canon, options=o)).to_dict()
        return out

    params = {"targets_sha1": hashlib.sha1("\n".join(targets).encode()).hexdigest(),
              "variants": {n: asdict(o) for n, o in variants.items()}, **(cache_params or {})}
    rows = resumable_map(plan_one, list(targets), cache_path, params, desc=desc, show_progress=progress_bar,
                         unit="target")
    return {n: [TargetResult(**r[n]) for r in rows] for n in variants}


def plan_targets(decoder: Decoder, targets: Sequence[str], *, beam: int = 3, options: PlanOptions | None = None,
                 progress_bar: bool = True, desc: str = "planning", cache_path: str | os.PathLike | None = None,
                 cache_params: dict | None = None) -> list[TargetResult]:
    """Plan every target with one :class:`PlanOptions` (default: k = 1..``beam`` rollouts, our protocol);
    resumable as :func:`plan_variants`."""
    return plan_variants(decoder, targets, {"plan": options or PlanOptions(beam=beam)}, progress_bar=progress_bar,
                         desc=desc, cache_path=cache_path, cache_params=cache_params)["plan"]


def deduplicate_targets(targets: Sequence[str], seen: Collection[str]) -> tuple[list[str], dict]:
    """Canonical, unique targets (first occurrence kept) that are not in ``seen`` (canonical SMILES of every
    node of every training tree): a held-out target the networks saw during training, as a root or as an
    intermediate, measures memory, not planning. Returns the kept targets and the counts, with
    ``overlap_rate`` = seen / unique valid targets."""
    seen = set(seen)
    unique: dict[str, None] = {}
    invalid = 0
    for t in targets:
        c = canonical_smiles(t)
        if c is None:
            invalid += 1
        else:
            unique.setdefault(c, None)
    kept = [t for t in unique if t not in seen]
    n_seen = len(unique) - len(kept)
    return kept, {"n_input": len(targets), "n_invalid": invalid, "n_unique": len(unique), "n_seen": n_seen,
                  "n_kept": len(kept), "overlap_rate": n_seen / len(unique) if unique else 0.0}


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
    on targets far from the pool it is also a ceiling-like reference for what the pool allows. Invalid
    targets score 0. (RDKit's bulk Tanimoto: a dense [blocks, 4096] matrix of pool B would take 0.5 GB.)"""
    out = np.zeros(len(targets))
    fps = [f for f in (morgan_bitvect(b) for b in blocks) if f is not None]
    if not fps:
        return out
    for i, t in enumerate(targets):
        canon = canonical_smiles(t)
        fp = morgan_bitvect(canon) if canon else None
        if fp is not None:
            out[i] = max(DataStructs.BulkTanimotoSimilarity(fp, fps))
    return out


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
