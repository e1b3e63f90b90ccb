"""Cosine k-nearest-neighbour search over building-block embeddings by normalized matrix products.

The reference builds a scikit-learn BallTree with a Python-callable cosine metric (and a new tree for
every rt2 query over a template's partner list). Cosine similarity of unit vectors is one matrix-vector
product, so brute force over a few thousand 256-bit embeddings is exact and fast; a partner list is an
index array into the same normalized matrix. Ties are broken by the lower block index.
"""

from __future__ import annotations

import numpy as np


def normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


class CosineKNN:
    def __init__(self, embeddings: np.ndarray):
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D [n, d], got shape {embeddings.shape}")
        self.unit = normalize_rows(embeddings)

    def __len__(self) -> int:
        return self.unit.shape[0]

    def similarities(self, query: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarities [m, n_candidates] of each query row to the (subset of) embeddings."""
        q = normalize_rows(np.atleast_2d(query))
        base = self.unit if subset is None else self.unit[subset]
        return q @ base.T

    def query(self, query: np.ndarray, k: int = 1, subset: np.ndarray | None = None) -> np.ndarray:
        """Indices (into the full set) of the k most similar embeddings, best first; [m, k] for a 2-D
        query, [k] for a 1-D one. ``subset`` restricts the search to those indices (a partner list)."""
        single = np.ndim(query) == 1
        sims = self.similarities(query, subset)
        n = sims.shape[1]
        if n == 0:
            raise ValueError("k-NN over an empty candidate set")
        k = min(k, n)
        # negate for descending order; the stable sort keeps lower indices first among ties
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        idx = order if subset is None else np.asarray(subset)[order]
        return idx[0] if single else idx


class CandidateRanker:
    """Rank of the true block among the candidates decoding's k-NN search would see: every block (rt1), or
    the partner list of one template slot (rt2). This is the validation metric of rt1/rt2: the MSE of the
    embedding barely moves while the ranking goes from random to useful, and decoding only uses the ranking.

    ``partners[t][s]`` are block indices (``ReactionSpace.partners``); a row's group ``2 * t + s`` names its
    list, -1 all blocks. The rank is 1 + the number of candidates strictly more similar to the prediction
    than the true embedding (blocks with the true block's very embedding tie with it and do not count).
    """

    TOL = 1e-5  # float32 dot products of the same vectors in different orders differ by ~1e-7

    def __init__(self, embeddings: np.ndarray, partners: list[list[np.ndarray]] | None = None):
        self.knn = CosineKNN(embeddings)
        self.partners = partners

    def ranks(self, pred: np.ndarray, true: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """Rank (1 = best) of each row's true embedding; 0 for rows with an all-zero target (not ranked)."""
        p, t = normalize_rows(pred), normalize_rows(true)
        true_sim = (p * t).sum(axis=1)
        groups = np.full(len(p), -1) if groups is None or self.partners is None else np.asarray(groups)
        out = np.zeros(len(p), dtype=np.int64)
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            base = self.knn.unit if g < 0 else self.knn.unit[self.partners[g // 2][g % 2]]
            sims = p[rows] @ base.T
            out[rows] = 1 + (sims > true_sim[rows, None] + self.TOL).sum(axis=1)
        out[~t.any(axis=1)] = 0
        return out
