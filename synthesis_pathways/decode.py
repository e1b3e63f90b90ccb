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
that does not end with End is a failure with similarity 0. When a template gives several products we
take the first in canonical-SMILES order (the reference takes an arbitrary set element).

:meth:`Decoder.plan` searches in one of these ways (:class:`PlanOptions`):

* ``search="rollouts"`` (the reference's "beam"): greedy rollouts with k = 1..beam for the first reactant,
  and, beyond the paper, ``target_nn`` more rollouts whose first reactant is the j-th block most similar
  to the target. Which rollout answers is the ``protocol``: ``"ours"`` scores an unfinished rollout 0
  *before* choosing, so a finished one wins whenever there is one; ``"reference"`` chooses the rollout
  whose best node is most similar to the target, finished or not, and scores the target 0 afterwards
  when that rollout did not finish (SynNet's ``synthetic_tree_decoder_greedy_search`` + its evaluation).
* ``search="beam"``: a beam search over all four decisions (the top actions, first reactants, templates
  and second reactants at every step), keeping the ``width`` partial trees whose best node is most
  similar to the target; the answer is the best node over every tree that ended.

A :class:`RandomPolicy` makes the same masked choices uniformly at random: the baseline decoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from rdkit import DataStructs

from .chem import canonical_smiles, morgan_bits, morgan_bitvect, tanimoto, tanimoto_bits
from .featurize import Featurizer
from .knn import CosineKNN
from .model import SynNetModel
from .space import ReactionSpace
from .syntree import ADD, END, MERGE, Step, SyntheticTree

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

    def first_reactants(self, state: np.ndarray, n: int) -> list[int]:
        """The n nearest blocks to rt1's output, best first (the beam search's candidates)."""
        return [int(i) for i in self.knn.query(self._run("rt1", state), k=n)]

    def template_probs(self, state: np.ndarray, z_m1: np.ndarray) -> np.ndarray:
        return _softmax(self._run("rxn", np.concatenate([state, z_m1])))

    def _rt2(self, state: np.ndarray, z_m1: np.ndarray, template: int) -> np.ndarray:
        onehot = np.zeros(self.n_templates, dtype=np.float32)
        onehot[template] = 1.0
        return self._run("rt2", np.concatenate([state, z_m1, onehot]))

    def second_reactant(self, state: np.ndarray, z_m1: np.ndarray, template: int, candidates: np.ndarray) -> int:
        return int(self.knn.query(self._rt2(state, z_m1, template), k=1, subset=candidates)[0])

    def second_reactants(self, state: np.ndarray, z_m1: np.ndarray, template: int, candidates: np.ndarray,
                         n: int) -> list[int]:
        return [int(i) for i in self.knn.query(self._rt2(state, z_m1, template), k=n, subset=candidates)]


class RandomPolicy:
    """Uniform choices under the same masks (the random-policy baseline)."""

    def __init__(self, n_blocks: int, n_templates: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.n_blocks, self.n_templates = n_blocks, n_templates

    def action_probs(self, state):
        return self.rng.random(4)

    def first_reactant(self, state, k):
        return int(self.rng.integers(self.n_blocks))

    def first_reactants(self, state, n):
        return self.rng.choice(self.n_blocks, min(n, self.n_blocks), replace=False).tolist()

    def template_probs(self, state, z_m1):
        return self.rng.random(self.n_templates)

    def second_reactant(self, state, z_m1, template, candidates):
        return int(self.rng.choice(candidates))

    def second_reactants(self, state, z_m1, template, candidates, n):
        return [int(i) for i in self.rng.choice(candidates, min(n, len(candidates)), replace=False)]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


PROTOCOLS = ("ours", "reference")
SEARCHES = ("rollouts", "beam")


@dataclass(frozen=True)
class PlanOptions:
    """How :meth:`Decoder.plan` searches (see the module docstring)."""

    beam: int = 3
    """Greedy rollouts with k = 1..beam for the first reactant (the reference's "beam")."""
    protocol: str = "ours"
    """ours: an unfinished rollout scores 0 before the choice; reference: choose first, then score 0 if it
    did not finish."""
    target_nn: int = 0
    """Extra rollouts whose first reactant is the j-th block most similar to the target (j = 1..target_nn)."""
    search: str = "rollouts"
    """rollouts, or beam (a beam search over all four decisions)."""
    width: int = 3
    """Beam search: partial trees kept per step."""
    n_actions: int = 2
    """Beam search: most probable legal actions expanded per partial tree."""
    n_first: int = 3
    """Beam search: nearest blocks to rt1's output tried as first reactant (plus ``target_nn`` blocks most
    similar to the target, at the first Add)."""
    n_templates: int = 2
    """Beam search: most probable legal templates tried per first reactant."""
    n_second: int = 2
    """Beam search: nearest partners to rt2's output tried per template."""

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, not {self.search!r}")
        if min(self.beam, self.width, self.n_actions, self.n_first, self.n_templates, self.n_second) < 1 \
                or self.target_nn < 0:
            raise ValueError(f"beam, width and the n_* counts must be >= 1 and target_nn >= 0: {self}")


@dataclass
class DecodeResult:
    tree: SyntheticTree | None
    """The route that makes ``best``: the decoded tree, cut after the step that made ``best`` when that is
    an intermediate, and a tree with no reaction when ``best`` is a building block; None for a failure."""
    finished: bool
    best: str | None  # the node most similar to the target (the answer)
    similarity: float  # Tanimoto of best vs target; 0 for a failure
    k: int = 1
    seconds: float = 0.0
    source: str = "rt1"
    """Where the first reactant came from: rt1 (k-th neighbour of rt1's output), target_nn (j-th block most
    similar to the target, in ``k``), beam (the beam search)."""
    rollout: SyntheticTree | None = None
    """The whole decoded tree, finished or not."""
    raw_similarity: float = 0.0
    """Best-node similarity over the rollout's nodes even when it did not finish (the reference chooses on it)."""
    raw_best: str | None = None
    candidates: list[DecodeResult] = field(default_factory=list, repr=False)
    """The rollouts a :meth:`Decoder.plan` chose from."""

    @property
    def answer_is_block(self) -> bool:
        return self.tree is not None and not self.tree.reactions


class Decoder:
    def __init__(self, space: ReactionSpace, featurizer: Featurizer, policy, *, max_steps: int = 15):
        self.space = space
        self.featurizer = featurizer
        self.policy = policy
        self.max_steps = max_steps
        self._block_fps = None

    def action_mask(self, roots: list[str]) -> np.ndarray:
        if len(roots) == 0:
            return np.array([1, 0, 0, 0], dtype=np.float64)
        if len(roots) == 1:
            return np.array([1, 1, 0, 1], dtype=np.float64)
        can_merge = bool(self.space.merge_run_mask(roots[0], roots[1]).any())
        return np.array([0, 1, can_merge, 0], dtype=np.float64)

    def nearest_blocks(self, target: str, n: int) -> list[int]:
        """Indices of the n blocks most similar to ``target`` (Tanimoto, Morgan r=2, 4096 bits), best first,
        ties to the lower index."""
        if self._block_fps is None:
            self._block_fps = [morgan_bitvect(b, SIM_RADIUS, SIM_BITS) for b in self.space.blocks]
        fp = morgan_bitvect(target, SIM_RADIUS, SIM_BITS)
        if fp is None or n <= 0:
            return []
        sims = np.array(DataStructs.BulkTanimotoSimilarity(fp, self._block_fps))
        return np.argsort(-sims, kind="stable")[:n].tolist()

    def _z(self, smiles: str) -> np.ndarray:
        z = np.zeros(self.featurizer.cfg.nbits, dtype=np.float32)
        z[list(self.featurizer.fp(smiles))] = 1.0
        return z

    def _template_mask(self, action: int, m1: str, roots: list[str]) -> np.ndarray:
        return self.space.merge_run_mask(roots[0], roots[1]) if action == MERGE else self.space.reaction_mask(m1)

    def decode_tree(self, target_bits: np.ndarray, k: int = 1, first_block: int | None = None
                    ) -> tuple[SyntheticTree, bool]:
        """One decoding rollout; returns the tree and whether it ended with End (a valid tree).
        ``first_block`` replaces rt1's choice at the first Add (the target-neighbour candidates)."""
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
                if not tree.reactions and first_block is not None:
                    m1 = self.space.blocks[first_block]
                else:
                    kk = k if not tree.reactions else 1  # k applies to the first Add only
                    m1 = self.space.blocks[self.policy.first_reactant(state, kk)]
            else:
                m1 = roots[0]
            z_m1 = self._z(m1)
            mask = self._template_mask(action, m1, roots)
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

    def _similarities(self, nodes: list[str], target: str | None, target_bits: np.ndarray) -> np.ndarray:
        if target is not None:
            return np.array([tanimoto(n, target, SIM_RADIUS, SIM_BITS) for n in nodes])
        return tanimoto_bits(target_bits, nodes, radius=self.featurizer.cfg.radius)  # a genome (GA)

    def best_node(self, tree: SyntheticTree, target: str | None, target_bits: np.ndarray) -> tuple[str, float]:
        nodes = tree.nodes()
        sims = self._similarities(nodes, target, target_bits)
        i = int(np.argmax(sims))
        return nodes[i], float(sims[i])

    def _result(self, tree: SyntheticTree, finished: bool, target: str | None, target_bits: np.ndarray,
                **kw) -> DecodeResult:
        """The answer of one decoded tree: its best node and the route that makes it."""
        if not tree.reactions:
            return DecodeResult(None, False, None, 0.0, rollout=tree, **kw)
        best, sim = self.best_node(tree, target, target_bits)
        if not finished:
            return DecodeResult(None, False, None, 0.0, rollout=tree, raw_similarity=sim, raw_best=best, **kw)
        if best in tree.products():
            route = tree.truncated_at(best) if best != tree.root else tree
        else:  # a building block is the answer: it is bought, no reaction (the route printed must say so)
            route = SyntheticTree()
        return DecodeResult(route, True, best, sim, rollout=tree, raw_similarity=sim, raw_best=best, **kw)

    def decode(self, target_bits: np.ndarray, *, target: str | None = None, k: int = 1,
               first_block: int | None = None) -> DecodeResult:
        t0 = time.perf_counter()
        tree, finished = self.decode_tree(target_bits, k, first_block)
        source = "rt1" if first_block is None else "target_nn"
        r = self._result(tree, finished, target, target_bits, k=k, source=source)
        r.seconds = time.perf_counter() - t0
        return r

    @staticmethod
    def choose(candidates: list[DecodeResult], protocol: str = "ours") -> DecodeResult:
        """The answer among rollouts. ours: the highest similarity with unfinished rollouts at 0 (the first
        wins ties); reference: the highest best-node similarity, finished or not, then 0 if unfinished."""
        if protocol == "reference":
            chosen = max(candidates, key=lambda r: r.raw_similarity)
        elif protocol == "ours":
            chosen = max(candidates, key=lambda r: r.similarity)
        else:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        return replace(chosen, candidates=list(candidates))

    def plan(self, target: str, *, beam: int = 3, options: PlanOptions | None = None) -> DecodeResult:
        """Plan a route to a target SMILES with ``options`` (default: k = 1..``beam`` rollouts, our protocol)."""
        opts = options or PlanOptions(beam=beam)
        t0 = time.perf_counter()
        smiles = canonical_smiles(target)
        if smiles is None:
            return DecodeResult(None, False, None, 0.0, 0, 0.0)
        bits = morgan_bits(smiles, self.featurizer.cfg.radius, self.featurizer.cfg.nbits)
        if opts.search == "beam":
            best = self.beam_search(bits, smiles, opts)
        else:
            best = self.choose(self.rollouts(bits, smiles, opts.beam, opts.target_nn), opts.protocol)
        best.seconds = time.perf_counter() - t0
        return best

    def rollouts(self, target_bits: np.ndarray, target: str, beam: int, target_nn: int = 0) -> list[DecodeResult]:
        """Greedy rollouts: k = 1..beam from rt1, then j = 1..target_nn from the target's nearest blocks."""
        out = [self.decode(target_bits, target=target, k=k) for k in range(1, beam + 1)]
        for j, b in enumerate(self.nearest_blocks(target, target_nn), start=1):
            out.append(self.decode(target_bits, target=target, k=j, first_block=b))
        return out

    # -- beam search over all four decisions ---------------------------------------------------------
    def beam_search(self, target_bits: np.ndarray, target: str | None, opts: PlanOptions) -> DecodeResult:
        """Expand every kept partial tree by its top ``n_actions`` legal actions, ``n_first`` first reactants
        (Add), ``n_templates`` templates and ``n_second`` partners, keep the ``width`` children whose best
        node is most similar to the target (ties: higher action + template log-probability), and answer with
        the best node over every tree that ended (End chosen, or nothing left to react with one root)."""
        t0 = time.perf_counter()
        sim_cache: dict[str, float] = {}

        def sim(smiles: str) -> float:
            if smiles not in sim_cache:
                sim_cache[smiles] = float(self._similarities([smiles], target, target_bits)[0])
            return sim_cache[smiles]

        def score(tree: SyntheticTree) -> float:
            return max((sim(n) for n in tree.nodes()), default=0.0)

        first_nn = self.nearest_blocks(target, opts.target_nn) if target is not None else []
        beams: list[tuple[SyntheticTree, float]] = [(SyntheticTree(), 0.0)]
        ended: list[SyntheticTree] = []
        for _ in range(self.max_steps):
            children: dict[tuple, tuple[SyntheticTree, float]] = {}
            for tree, logp in beams:
                for child in self._expand(tree, logp, target_bits, opts, first_nn, ended):
                    key = tuple((s.action, s.template, s.reactant1, s.reactant2, s.product) for s in child[0].steps)
                    children.setdefault(key, child)
            if not children:
                break
            ranked = sorted(children.values(), key=lambda c: (-score(c[0]), -c[1]))
            beams = ranked[: opts.width]
        ended = [t for t in ended if t.reactions]
        if not ended:
            r = DecodeResult(None, False, None, 0.0, 0, source="beam")
        else:
            best_tree = max(ended, key=score)  # the first ended wins ties
            r = self._result(best_tree, True, target, target_bits, k=0, source="beam")
        r.seconds = time.perf_counter() - t0
        return r

    def _expand(self, tree: SyntheticTree, logp: float, target_bits: np.ndarray, opts: PlanOptions,
                first_nn: list[int], ended: list[SyntheticTree]) -> list[tuple[SyntheticTree, float]]:
        roots = tree.roots
        state = self.featurizer.state_vector(roots, target_bits)
        p_act = (self.policy.action_probs(state) + 1e-10) * self.action_mask(roots)
        actions = [int(a) for a in np.argsort(-p_act, kind="stable")[: opts.n_actions] if p_act[a] > 0]
        children = []

        def end(t: SyntheticTree) -> None:
            done = SyntheticTree(list(t.steps))
            done.update(END)
            ended.append(done)

        for action in actions:
            lp = logp + float(np.log(p_act[action] / p_act.sum()))
            if action == END:
                end(tree)
                continue
            if action == ADD:
                m1s = [self.space.blocks[i] for i in self.policy.first_reactants(state, opts.n_first)]
                if not tree.reactions:
                    m1s += [self.space.blocks[i] for i in first_nn if self.space.blocks[i] not in m1s]
            else:
                m1s = [roots[0]]
            for m1 in m1s:
                z_m1 = self._z(m1)
                mask = self._template_mask(action, m1, roots)
                if not mask.any():
                    if len(roots) == 1:  # as the greedy decoder: a valid tree when one root is left
                        end(tree)
                    continue
                p_t = (self.policy.template_probs(state, z_m1) + 1e-10) * mask
                for t in [int(t) for t in np.argsort(-p_t, kind="stable")[: opts.n_templates] if p_t[t] > 0]:
                    template = self.space.templates[t]
                    if not template.bimolecular:
                        m2s = [None]
                    elif action == MERGE:
                        m2s = [roots[1]]
                    else:
                        cand = self.space.partner_candidates(t, m1)
                        m2s = [self.space.blocks[i] for i in
                               self.policy.second_reactants(state, z_m1, t, cand, opts.n_second)]
                    for m2 in m2s:
                        product = template.run_one(m1, m2)
                        if product is None:
                            if len(roots) == 1:
                                end(tree)
                            continue
                        child = SyntheticTree(list(tree.steps) + [Step(action, t, m1, m2, product)])
                        children.append((child, lp + float(np.log(p_t[t] / p_t.sum()))))
        return children


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
