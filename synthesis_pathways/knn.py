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
