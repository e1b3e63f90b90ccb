"""Chemistry core: canonical SMILES, reaction templates, Morgan fingerprints, molecular properties.

Everything here is plain RDKit. Two choices differ from the SynNet reference on purpose:

* A template is run in *both* reactant orders and every unique, sanitizable product is kept, sorted by
  canonical SMILES. The reference returns the first element of a Python ``set`` (hash-seed dependent);
  we return the sorted list and callers that need one product take ``products[0]`` (a canonical rule).
* Fingerprints use RDKit's generator API (``rdFingerprintGenerator``), whose bit layout equals the
  deprecated ``GetMorganFingerprintAsBitVect`` (pinned by a test), and are cached per SMILES.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from rdkit import Chem, DataStructs, RDConfig, RDLogger
from rdkit.Chem import QED as _QED
from rdkit.Chem import AllChem, Crippen, Descriptors, rdFingerprintGenerator

# ---------------------------------------------------------------------------------------------------
# Molecules


_QUIET_DEPTH = 0


@contextmanager
def quiet_rdkit():
    """Silence RDKit's stderr chatter (bad SMILES are reported by our readers with file and line).
    Re-entrant: an inner block (e.g. parsing a SMILES) does not switch the log back on for the outer one."""
    global _QUIET_DEPTH
    if _QUIET_DEPTH == 0:
        RDLogger.DisableLog("rdApp.*")
    _QUIET_DEPTH += 1
    try:
        yield
    finally:
        _QUIET_DEPTH -= 1
        if _QUIET_DEPTH == 0:
            RDLogger.EnableLog("rdApp.*")


@functools.lru_cache(maxsize=50_000)
def mol_from_smiles(smiles: str) -> Chem.Mol | None:
    """Parsed and sanitized molecule, or None. Cached: the same SMILES is parsed many times."""
    if not smiles:
        return None
    with quiet_rdkit():
        return Chem.MolFromSmiles(smiles)


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical (isomeric) SMILES, or None if the string does not parse."""
    mol = mol_from_smiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


# ---------------------------------------------------------------------------------------------------
# Reaction templates


class Template:
    """One reaction SMARTS with 1 or 2 reactant slots and a single product.

    ``matches(smiles, slot)`` tests a molecule against a reactant slot; ``run(a, b)`` applies the template
    in both reactant orders and returns every unique sanitizable product (canonical SMILES, sorted).
    """

    def __init__(self, smarts: str, index: int = -1):
        self.smarts = smarts.strip()
        self.index = index
        with quiet_rdkit():  # RDKit warns about unmapped atoms in several HB templates; they are fine
            rxn = AllChem.ReactionFromSmarts(self.smarts)
            if rxn is None:
                raise ValueError(f"unparsable reaction SMARTS: {smarts!r}")
            rxn.Initialize()
        if rxn.GetNumProductTemplates() != 1:
            raise ValueError(f"template must have one product, has {rxn.GetNumProductTemplates()}: {smarts!r}")
        if rxn.GetNumReactantTemplates() not in (1, 2):
            raise ValueError(f"template must have 1 or 2 reactants: {smarts!r}")
        self._rxn = rxn
        self.num_reactants = rxn.GetNumReactantTemplates()
        self._slots = [rxn.GetReactantTemplate(i) for i in range(self.num_reactants)]

    def __repr__(self) -> str:
        return f"Template({self.index}, {self.num_reactants} reactants)"

    def __reduce__(self):  # RDKit reaction objects pickle poorly across versions; rebuild from SMARTS
        return (Template, (self.smarts, self.index))

    @property
    def bimolecular(self) -> bool:
        return self.num_reactants == 2

    def matches(self, smiles_or_mol, slot: int) -> bool:
        mol = mol_from_smiles(smiles_or_mol) if isinstance(smiles_or_mol, str) else smiles_or_mol
        if mol is None or slot >= self.num_reactants:
            return False
        return mol.HasSubstructMatch(self._slots[slot])

    def slot_query(self, slot: int) -> Chem.Mol:
        return self._slots[slot]

    def slot_matches(self, smiles_or_mol) -> tuple[bool, bool]:
        """(matches slot 0, matches slot 1); slot 1 is False for unimolecular templates."""
        return self.matches(smiles_or_mol, 0), self.matches(smiles_or_mol, 1)

    def run(self, a: str, b: str | None = None) -> list[str]:
        """All unique products of this template on ``a`` (and ``b``), in both orders; [] if none."""
        ma = mol_from_smiles(a)
        if ma is None:
            return []
        if self.num_reactants == 1:
            if b is not None:
                return []
            orders = [(ma,)] if self.matches(ma, 0) else []
        else:
            mb = mol_from_smiles(b) if b is not None else None
            if mb is None:
                return []
            orders = []
            if self.matches(ma, 0) and self.matches(mb, 1):
                orders.append((ma, mb))
            if self.matches(mb, 0) and self.matches(ma, 1):
                orders.append((mb, ma))
        products: set[str] = set()
        with quiet_rdkit():
            for reactants in orders:
                for outcome in self._rxn.RunReactants(reactants):
                    smi = _sanitized_smiles(outcome[0])
                    if smi is not None:
                        products.add(smi)
        return sorted(products)

    def run_one(self, a: str, b: str | None = None) -> str | None:
        """One product by a fixed rule (the smallest canonical SMILES), or None."""
        products = self.run(a, b)
        return products[0] if products else None


def _sanitized_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES of a raw reaction product, or None if it does not survive sanitization."""
    try:
        smi = Chem.MolToSmiles(mol)
    except Exception:  # RDKit raises on some unsanitized products; those are not valid molecules
        return None
    canon = mol_from_smiles(smi)
    return None if canon is None else Chem.MolToSmiles(canon)


# ---------------------------------------------------------------------------------------------------
# Fingerprints


@functools.lru_cache(maxsize=16)
def _morgan_generator(radius: int, nbits: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=nbits)


@functools.lru_cache(maxsize=400_000)
def morgan_on_bits(smiles: str, radius: int = 2, nbits: int = 4096) -> tuple[int, ...]:
    """Sorted on-bit indices of the Morgan bit fingerprint (() for an unparsable or empty SMILES)."""
    mol = mol_from_smiles(smiles)
    if mol is None:
        return ()
    return tuple(_morgan_generator(radius, nbits).GetFingerprint(mol).GetOnBits())


def morgan_bits(smiles: str | None, radius: int = 2, nbits: int = 4096) -> np.ndarray:
    """Dense float32 Morgan bit vector; z(None) = 0 as in the paper."""
    out = np.zeros(nbits, dtype=np.float32)
    if smiles:
        out[list(morgan_on_bits(smiles, radius, nbits))] = 1.0
    return out


def morgan_bitvect(smiles: str, radius: int = 2, nbits: int = 4096):
    mol = mol_from_smiles(smiles)
    return None if mol is None else _morgan_generator(radius, nbits).GetFingerprint(mol)


def tanimoto(a: str, b: str, radius: int = 2, nbits: int = 4096) -> float:
    """Tanimoto similarity of two molecules' Morgan bit fingerprints (0 if either does not parse)."""
    fa, fb = morgan_bitvect(a, radius, nbits), morgan_bitvect(b, radius, nbits)
    if fa is None or fb is None:
        return 0.0
    return float(DataStructs.TanimotoSimilarity(fa, fb))


def tanimoto_bits(query: np.ndarray, smiles: Sequence[str], radius: int = 2) -> np.ndarray:
    """Tanimoto of a dense 0/1 query vector against each molecule's fingerprint of the same size."""
    nbits = query.shape[0]
    q = set(np.flatnonzero(query).tolist())
    out = np.zeros(len(smiles), dtype=np.float64)
    for i, s in enumerate(smiles):
        bits = set(morgan_on_bits(s, radius, nbits))
        union = len(q | bits)
        out[i] = len(q & bits) / union if union else 0.0
    return out


# ---------------------------------------------------------------------------------------------------
# Properties (offline oracles use these)


@functools.lru_cache(maxsize=1)
def _sascorer():
    """RDKit's bundled Contrib/SA_Score module (Ertl & Schuffenhauer), imported from RDConfig."""
    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # noqa: PLC0415  (a Contrib script, not an installed module)

    return sascorer


def qed(smiles: str) -> float:
    mol = mol_from_smiles(smiles)
    return 0.0 if mol is None else float(_QED.qed(mol))


def sa_score(smiles: str) -> float:
    """Synthetic accessibility, 1 (easy) .. 10 (hard); NaN for an unparsable SMILES."""
    mol = mol_from_smiles(smiles)
    return math.nan if mol is None else float(_sascorer().calculateScore(mol))


def logp(smiles: str) -> float:
    mol = mol_from_smiles(smiles)
    return math.nan if mol is None else float(Crippen.MolLogP(mol))


def mol_weight(smiles: str) -> float:
    mol = mol_from_smiles(smiles)
    return math.nan if mol is None else float(Descriptors.MolWt(mol))


def penalized_logp(smiles: str) -> float:
    """logP - SA - (number of atoms beyond 6 in the largest ring), unnormalized (TDC's "LogP" oracle).

    Unparsable molecules score -100, as in TDC.
    """
    mol = mol_from_smiles(smiles)
    if mol is None:
        return -100.0
    rings = mol.GetRingInfo().AtomRings()
    largest = max((len(r) for r in rings), default=0)
    cycle_penalty = max(largest - 6, 0)
    return float(Crippen.MolLogP(mol) - _sascorer().calculateScore(mol) - cycle_penalty)


@dataclass(frozen=True)
class Properties:
    qed: float
    logp: float
    mw: float
    sa: float


def properties(smiles: str) -> Properties:
    return Properties(qed(smiles), logp(smiles), mol_weight(smiles), sa_score(smiles))


def unique_canonical(smiles: Iterable[str]) -> list[str]:
    """Canonicalize, drop unparsable entries and duplicates, keep first-seen order."""
    seen: dict[str, None] = {}
    for s in smiles:
        c = canonical_smiles(s)
        if c is not None:
            seen.setdefault(c, None)
    return list(seen)
