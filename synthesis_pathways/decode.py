"""Synthesis planning: decode a synthetic tree conditioned on a target fingerprint.

The loop follows the reference decoder step by step (max 15 steps)::

    s = [z(r1), z(r2), z_target]
    a = argmax((softmax(act(s)) + 1e-10) * action_mask)            End -> stop
    m1 = k-th cosine-NN of rt1(s) among all blocks (Add; k only for the first Add), else r1
    template mask: m1 can enter the template and its partner list is non-empty;
                   for Merge: the template actually runs on both roots
    no legal template -> stop (a valid tree if one root, else a failure)
    t = argmax((softmax(rxn([s, z(m1)])) + 1e-10) * template_mask)
    m2 = the other root (Merge), or the cosine-NN of rt2([s, z(m1), onehot(t)]) in t's partner list
    run t on (m1, m2); no product -> stop as above

The answer is the tree node most similar to the target (Tanimoto, Morgan r=2, 4096 bits); a tree
that does not end with End is a failure with similarity 0. ``plan`` is the reference "beam": decode
with k = 1..beam for the first reactant and keep the best tree. When a template gives several
products we take the first in canonical-SMILES order (the reference takes an arbitrary set element).

A :class:`RandomPolicy` makes the same masked choices uniformly at random: the baseline decoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .chem import canonical_smiles, morgan_bits, tanimoto, tanimoto_bits
from .featurize import Featurizer
from .knn import CosineKNN
from .model import SynNetModel
from .space import ReactionSpace
from .syntree import ADD, END, MERGE, SyntheticTree

SIM_RADIUS, SIM_BITS = 2, 4096  # the paper's similarity / recovery fingerprint


class ModelPolicy:
    """The four trained networks + k-NN over block embeddings."""

    def __init__(self, model: SynNetModel, knn: CosineKNN):
        self.model = model.eval()
        self.knn = knn
        self.n_templates = model.n_templates

    @torch.no_grad()
    def _run(self, net: str, x: np.ndarray) -> np.ndarray:
        return self.model.nets[net](torch.from_numpy(x[None, :])).numpy()[0]

    def action_probs(self, state: np.ndarray) -> np.ndarray:
        return _softmax(self._run("act", state))

    def first_reactant(self, state: np.ndarray, k: int) -> int:
        return int(self.knn.query(self._run("rt1", state), k=k)[k - 1])

    def template_probs(self, state: np.ndarray, z_m1: np.ndarray) -> np.ndarray:
        return _softmax(self._run("rxn", np.concatenate([state, z_m1])))

    def second_reactant(self, state: np.ndarray, z_m1: np.ndarray, template: int, candidates: np.ndarray) -> int:
        onehot = np.zeros(self.n_templates, dtype=np.float32)
        onehot[template] = 1.0
        z = self._run("rt2", np.concatenate([state, z_m1, onehot]))
        return int(self.knn.query(z, k=1, subset=candidates)[0])


class RandomPolicy:
    """Uniform choices under the same masks (the random-policy baseline)."""

    def __init__(self, n_blocks: int, n_templates: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.n_blocks, self.n_templates = n_blocks, n_templates

    def action_probs(self, state):
        return self.rng.random(4)

    def first_reactant(self, state, k):
        return int(self.rng.integers(self.n_blocks))

    def template_probs(self, state, z_m1):
        return self.rng.random(self.n_templates)

    def second_reactant(self, state, z_m1, template, candidates):
        return int(self.rng.choice(candidates))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


@dataclass
class DecodeResult:
    tree: SyntheticTree | None  # the (possibly truncated) tree; None for a failure
    finished: bool
    best: str | None  # the node most similar to the target
    similarity: float  # Tanimoto of best vs target; 0 for a failure
    k: int = 1
    seconds: float = 0.0


class Decoder:
    def __init__(self, space: ReactionSpace, featurizer: Featurizer, policy, *, max_steps: int = 15):
        self.space = space
        self.featurizer = featurizer
        self.policy = policy
        self.max_steps = max_steps

    def action_mask(self, roots: list[str]) -> np.ndarray:
        if len(roots) == 0:
            return np.array([1, 0, 0, 0], dtype=np.float64)
        if len(roots) == 1:
            return np.array([1, 1, 0, 1], dtype=np.float64)
        can_merge = bool(self.space.merge_run_mask(roots[0], roots[1]).any())
        return np.array([0, 1, can_merge, 0], dtype=np.float64)

    def decode_tree(self, target_bits: np.ndarray, k: int = 1) -> tuple[SyntheticTree, bool]:
        """One decoding rollout; returns the tree and whether it ended with End (a valid tree)."""
        tree = SyntheticTree()
        feat = self.featurizer
        for _ in range(self.max_steps):
            roots = tree.roots
            state = feat.state_vector(roots, target_bits)
            action = int(np.argmax((self.policy.action_probs(state) + 1e-10) * self.action_mask(roots)))
            if action == END:
                tree.update(END)
                return tree, True
            if action == ADD:
                kk = k if not tree.reactions else 1  # k applies to the first Add only
                m1 = self.space.blocks[self.policy.first_reactant(state, kk)]
            else:
                m1 = roots[0]
            z_m1 = np.zeros(feat.cfg.nbits, dtype=np.float32)
            z_m1[list(feat.fp(m1))] = 1.0
            if action == MERGE:
                mask = self.space.merge_run_mask(roots[0], roots[1])
            else:
                mask = self.space.reaction_mask(m1)
            if not mask.any():
                return self._stop(tree, roots)
            t = int(np.argmax((self.policy.template_probs(state, z_m1) + 1e-10) * mask))
            template = self.space.templates[t]
            m2 = None
            if template.bimolecular:
                if action == MERGE:
                    m2 = roots[1]
                else:
                    candidates = self.space.partner_candidates(t, m1)
                    m2 = self.space.blocks[self.policy.second_reactant(state, z_m1, t, candidates)]
            product = template.run_one(m1, m2)
            if product is None:
                return self._stop(tree, roots)
            tree.update(action, t, m1, m2, product)
        return tree, False

    @staticmethod
    def _stop(tree: SyntheticTree, roots: list[str]) -> tuple[SyntheticTree, bool]:
        # the reference counts the tree as finished when exactly one root is left
        if len(roots) == 1:
            tree.update(END)
            return tree, True
        return tree, False

    def best_node(self, tree: SyntheticTree, target: str | None, target_bits: np.ndarray) -> tuple[str, float]:
        nodes = tree.nodes()
        if target is not None:
            sims = np.array([tanimoto(n, target, SIM_RADIUS, SIM_BITS) for n in nodes])
        else:  # a genome (GA): similarity in the genome's own bit space
            sims = tanimoto_bits(target_bits, nodes, radius=self.featurizer.cfg.radius)
        i = int(np.argmax(sims))
        return nodes[i], float(sims[i])

    def decode(self, target_bits: np.ndarray, *, target: str | None = None, k: int = 1) -> DecodeResult:
        t0 = time.perf_counter()
        tree, finished = self.decode_tree(target_bits, k)
        if not finished or not tree.reactions:
            return DecodeResult(None, False, None, 0.0, k, time.perf_counter() - t0)
        best, sim = self.best_node(tree, target, target_bits)
        if best in tree.products() and best != tree.root:
            tree = tree.truncated_at(best)
        return DecodeResult(tree, True, best, sim, k, time.perf_counter() - t0)

    def plan(self, target: str, *, beam: int = 3) -> DecodeResult:
        """Best of ``beam`` rollouts (k = 1..beam for the first reactant) for a target SMILES."""
        t0 = time.perf_counter()
        smiles = canonical_smiles(target)
        if smiles is None:
            return DecodeResult(None, False, None, 0.0, 0, 0.0)
        bits = morgan_bits(smiles, self.featurizer.cfg.radius, self.featurizer.cfg.nbits)
        results = [self.decode(bits, target=smiles, k=k) for k in range(1, beam + 1)]
        best = max(results, key=lambda r: r.similarity)  # first (smallest k) wins ties
        best.seconds = time.perf_counter() - t0
        return best


def build_decoder(space: ReactionSpace, model: SynNetModel | None, *, policy: str = "model", seed: int = 0,
                  max_steps: int = 15) -> Decoder:
    """Decoder over ``space``'s blocks with the trained model (policy="model") or uniform choices."""
    if model is None and policy == "model":
        raise ValueError("policy='model' needs a trained SynNetModel")
    feat_cfg = model.feat if model is not None else None
    if feat_cfg is None:
        from .featurize import FeatureConfig

        feat_cfg = FeatureConfig()
    featurizer = Featurizer(feat_cfg, space.bimolecular_mask())
    if policy == "model":
        emb = np.stack([morgan_bits(b, feat_cfg.emb_radius, feat_cfg.emb_bits) for b in space.blocks])
        pol = ModelPolicy(model, CosineKNN(emb))
    elif policy == "random":
        pol = RandomPolicy(len(space.blocks), space.n_templates, seed)
    else:
        raise ValueError(f"policy must be 'model' or 'random', not {policy!r}")
    return Decoder(space, featurizer, pol, max_steps=max_steps)
