"""Featurization of synthetic trees into the per-step arrays of the reference, stored sparse.

For every step of a tree (End included) with roots (r1, r2) *before* the step and the tree's root as
the target, the state is ``[z(r1), z(r2), z(target)]`` (``3 * nbits``, z = Morgan bits, z(None) = 0)
and the step record is ``action, emb(reactant 1), template, emb(reactant 2), z(reactant 1)`` with
``emb`` the ``emb_bits`` Morgan fingerprint used by the k-NN search. All matrices are CSR (0/1 bits);
rows are densified per batch, never as a whole (the reference densified everything up front).

Per-network rows (see the paper note):

=====  =====================================  =======================================  ===========
net    rows                                   input                                    target
=====  =====================================  =======================================  ===========
act    all steps                              state                                    action
rt1    Add steps                              state                                    emb(r1)
rxn    all but End                            state + z(r1)                            template
rt2    Add/Expand with bimolecular template   state + z(r1) + one-hot(template)        emb(r2)
=====  =====================================  =======================================  ===========

The reference also trains rt2 on unimolecular steps with an all-zero target although decoding never
queries rt2 for them; ``rt2_keep_unimolecular=True`` restores that behaviour.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .chem import morgan_on_bits
from .syntree import ADD, END, EXPAND, SyntheticTree

NETWORKS = ("act", "rt1", "rxn", "rt2")


@dataclass(frozen=True)
class FeatureConfig:
    nbits: int = 4096
    radius: int = 2
    emb_bits: int = 256
    emb_radius: int = 2

    def input_dim(self, net: str, n_templates: int) -> int:
        return {"act": 3, "rt1": 3, "rxn": 4, "rt2": 4}[net] * self.nbits + (n_templates if net == "rt2" else 0)

    def output_dim(self, net: str, n_templates: int) -> int:
        return {"act": 4, "rt1": self.emb_bits, "rxn": n_templates, "rt2": self.emb_bits}[net]


@dataclass
class StepData:
    state: sp.csr_matrix  # [n, 3 * nbits]
    r1_fp: sp.csr_matrix  # [n, nbits]
    r1_emb: sp.csr_matrix  # [n, emb_bits]
    r2_emb: sp.csr_matrix  # [n, emb_bits]
    action: np.ndarray  # int8
    template: np.ndarray  # int16, -1 for End
    bimolecular: np.ndarray  # bool: the step's template has two reactants
    tree: np.ndarray  # int32 index of the tree within the featurized list
    partner_slot: np.ndarray | None = None
    """int8: the template slot the second reactant fills (its k-NN candidates are that slot's partner list);
    -1 where there is none or it was not recorded (features written before it: candidates = all blocks)."""

    def __post_init__(self):
        if self.partner_slot is None:
            self.partner_slot = np.full(len(self.action), -1, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.action)

    _MATRICES = ("state", "r1_fp", "r1_emb", "r2_emb")
    _ARRAYS = ("action", "template", "bimolecular", "tree", "partner_slot")

    def save(self, path: str | os.PathLike) -> None:
        arrays = {}
        for name in self._MATRICES:
            m = getattr(self, name)
            arrays |= {f"{name}.indices": m.indices.astype(np.int32), f"{name}.indptr": m.indptr.astype(np.int64),
                       f"{name}.shape": np.array(m.shape)}
        arrays |= {name: getattr(self, name) for name in self._ARRAYS}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StepData:
        with np.load(path) as z:
            mats = {}
            for name in cls._MATRICES:
                indices, indptr = z[f"{name}.indices"], z[f"{name}.indptr"]
                mats[name] = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                                           shape=tuple(z[f"{name}.shape"]))
            arrays = {name: z[name] for name in cls._ARRAYS if name in z}
        if arrays.get("partner_slot") is None:  # written before the slot was recorded
            arrays["partner_slot"] = np.full(len(arrays["action"]), -1, dtype=np.int8)
        return cls(**mats, **arrays)


class Featurizer:
    def __init__(self, cfg: FeatureConfig, bimolecular: np.ndarray,
                 partner_slot: Callable[[int, str], int | None] | None = None):
        """``partner_slot(template, reactant1)`` (``ReactionSpace.partner_slot``) records which partner list
        the second reactant came from, so validation ranks it among the candidates decoding searches."""
        self.cfg = cfg
        self.bimolecular = np.asarray(bimolecular, dtype=bool)
        self.partner_slot = partner_slot

    def fp(self, smiles: str | None) -> tuple[int, ...]:
        return morgan_on_bits(smiles, self.cfg.radius, self.cfg.nbits) if smiles else ()

    def emb(self, smiles: str | None) -> tuple[int, ...]:
        return morgan_on_bits(smiles, self.cfg.emb_radius, self.cfg.emb_bits) if smiles else ()

    def state_bits(self, roots: list[str], target: str) -> list[int]:
        """On-bits of [z(r1), z(r2), z(target)]."""
        n = self.cfg.nbits
        r1 = roots[0] if roots else None
        r2 = roots[1] if len(roots) > 1 else None
        return [*self.fp(r1), *(b + n for b in self.fp(r2)), *(b + 2 * n for b in self.fp(target))]

    def state_vector(self, roots: list[str], target_bits: np.ndarray) -> np.ndarray:
        """Dense state for decoding, with the target given as a (possibly non-molecular) bit vector."""
        n = self.cfg.nbits
        out = np.zeros(3 * n, dtype=np.float32)
        if roots:
            out[list(self.fp(roots[0]))] = 1.0
        if len(roots) > 1:
            out[[b + n for b in self.fp(roots[1])]] = 1.0
        out[2 * n:] = target_bits
        return out

    def featurize(self, trees: Iterable[SyntheticTree]) -> StepData:
        cols: dict[str, list[list[int]]] = {k: [] for k in StepData._MATRICES}
        action, template, bimol, tree_idx, slot = [], [], [], [], []
        for i, tree in enumerate(trees):
            target = tree.root
            replay = SyntheticTree()
            for s in tree.steps:
                roots = replay.roots
                cols["state"].append(self.state_bits(roots, target))
                cols["r1_fp"].append(list(self.fp(s.reactant1)))
                cols["r1_emb"].append(list(self.emb(s.reactant1)))
                cols["r2_emb"].append(list(self.emb(s.reactant2)))
                action.append(s.action)
                template.append(-1 if s.template is None else s.template)
                two = s.template is not None and bool(self.bimolecular[s.template])
                bimol.append(two)
                tree_idx.append(i)
                ps = self.partner_slot(s.template, s.reactant1) if two and s.action in (ADD, EXPAND) and \
                    self.partner_slot is not None else None
                slot.append(-1 if ps is None else ps)
                replay.steps.append(s)
        widths = {"state": 3 * self.cfg.nbits, "r1_fp": self.cfg.nbits, "r1_emb": self.cfg.emb_bits,
                  "r2_emb": self.cfg.emb_bits}
        return StepData(**{k: _csr(v, widths[k]) for k, v in cols.items()},
                        action=np.array(action, dtype=np.int8), template=np.array(template, dtype=np.int16),
                        bimolecular=np.array(bimol, dtype=bool), tree=np.array(tree_idx, dtype=np.int32),
                        partner_slot=np.array(slot, dtype=np.int8))


def _csr(rows: list[list[int]], width: int) -> sp.csr_matrix:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    indices = np.fromiter((b for r in rows for b in sorted(r)), dtype=np.int32, count=int(indptr[-1]))
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(rows), width))


def featurize_with_rate(featurizer: Featurizer, trees: list[SyntheticTree]) -> tuple[StepData, float]:
    t0 = time.perf_counter()
    data = featurizer.featurize(trees)
    return data, len(trees) / max(time.perf_counter() - t0, 1e-9)


# ---------------------------------------------------------------------------------------------------
# Per-network training data


@dataclass
class NetworkData:
    """Sparse inputs and dense targets of one network: ``y`` is class ids (act, rxn) or 0/1 bits."""

    x: sp.csr_matrix
    y: np.ndarray
    candidates: np.ndarray | None = None
    """rt2 only: per row, ``template * 2 + slot`` of the partner list decoding searches (-1: all blocks)."""

    def __len__(self) -> int:
        return self.x.shape[0]


def network_data(steps: StepData, net: str, n_templates: int, *, rt2_keep_unimolecular: bool = False
                 ) -> NetworkData:
    a = steps.action
    if net == "act":
        return NetworkData(steps.state, a.astype(np.int64))
    if net == "rt1":
        rows = np.flatnonzero(a == ADD)
        return NetworkData(steps.state[rows], steps.r1_emb[rows].toarray())
    if net == "rxn":
        rows = np.flatnonzero(a != END)
        return NetworkData(sp.hstack([steps.state[rows], steps.r1_fp[rows]], format="csr"),
                           steps.template[rows].astype(np.int64))
    if net == "rt2":
        keep = (a == ADD) | (a == EXPAND)
        if not rt2_keep_unimolecular:
            keep &= steps.bimolecular
        rows = np.flatnonzero(keep)
        onehot = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), steps.template[rows].astype(np.int32),
                                np.arange(len(rows) + 1)), shape=(len(rows), n_templates))
        slot = steps.partner_slot[rows].astype(np.int64)
        groups = np.where(slot >= 0, steps.template[rows].astype(np.int64) * 2 + slot, -1)
        return NetworkData(sp.hstack([steps.state[rows], steps.r1_fp[rows], onehot], format="csr"),
                           steps.r2_emb[rows].toarray(), groups)
    raise ValueError(f"unknown network {net!r}; expected one of {NETWORKS}")


class SparseRowDataset(torch.utils.data.Dataset):
    """Index dataset: items are row numbers; ``collate`` densifies only the rows of one batch."""

    def __init__(self, data: NetworkData):
        self.data = data
        self.y = torch.from_numpy(data.y if data.y.dtype == np.int64 else data.y.astype(np.float32))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices)
        return {"x": torch.from_numpy(self.data.x[idx].toarray()), "y": self.y[idx]}
