"""Offline objectives for the genetic algorithm (no downloads): QED, penalized logP, GuacaMol-style MPOs.

TDC's GSK3B/JNK3/DRD2 oracles download model files at run time and are not available here. The
GuacaMol-style objectives below are RDKit-only re-statements (similarity to a drug, a drug-likeness
MPO), *not* the benchmark's exact scoring functions; their names say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rdkit import DataStructs

from .chem import logp, morgan_bitvect, penalized_logp, qed, sa_score

CELECOXIB = "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1"
TROGLITAZONE = "Cc1c(C)c2c(c(C)c1O)CCC(C)(COc1ccc(CC3SC(=O)NC3=O)cc1)O2"


@dataclass(frozen=True)
class Oracle:
    name: str
    fn: Callable[[str], float]
    failure_score: float
    """Score of a failed decode (no molecule)."""

    def __call__(self, smiles: str | None) -> float:
        if smiles is None:
            return self.failure_score
        value = self.fn(smiles)
        return self.failure_score if value is None or math.isnan(value) else float(value)


def _similarity_to(reference: str) -> Callable[[str], float]:
    ref = morgan_bitvect(reference, 2, 2048)

    def score(smiles: str) -> float:
        fp = morgan_bitvect(smiles, 2, 2048)
        return 0.0 if fp is None else float(DataStructs.TanimotoSimilarity(ref, fp))
    return score


def _druglike_mpo(smiles: str) -> float:
    """Geometric mean of QED, a Gaussian desirability of logP around 2.5 (sd 1.5) and (10 - SA) / 9."""
    q, lp, sa = qed(smiles), logp(smiles), sa_score(smiles)
    if math.isnan(lp) or math.isnan(sa):
        return 0.0
    parts = [q, math.exp(-0.5 * ((lp - 2.5) / 1.5) ** 2), (10.0 - sa) / 9.0]
    return float(math.prod(max(p, 1e-12) for p in parts) ** (1 / 3))


ORACLES: dict[str, Oracle] = {
    "qed": Oracle("qed", qed, 0.0),
    "plogp": Oracle("plogp", penalized_logp, -100.0),
    "celecoxib_similarity": Oracle("celecoxib_similarity", _similarity_to(CELECOXIB), 0.0),
    "troglitazone_similarity": Oracle("troglitazone_similarity", _similarity_to(TROGLITAZONE), 0.0),
    "druglike_mpo": Oracle("druglike_mpo", _druglike_mpo, 0.0),
}


def get_oracle(name: str) -> Oracle:
    try:
        return ORACLES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; offline objectives: {sorted(ORACLES)}") from None
