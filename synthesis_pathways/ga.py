"""Genetic algorithm over conditioning fingerprints (synthesizable molecular design).

A genome is a 0/1 vector of the state's fingerprint size. Its fitness is the objective of the molecule
obtained by decoding it (k = 1, no beam, as the reference) and taking the tree node most similar to
the genome. The operators follow the reference:

* parents: two distinct members drawn with weight N + 10 - r (r = 1-based rank); in the last fifth of
  the generations, with softmax of those integers;
* crossover: ceil(N(L/2, L/10)) bits (clipped to [L/5, 4L/5]) at uniform positions from parent 1,
  the rest from parent 2;
* mutation: with probability 0.5, flip ``num_mut`` (24) distinct bits;
* selection: parents and offspring (unique genomes, order kept) are scored; the top N with unique
  SMILES survive, keeping their genomes;
* stop: after ``generations``, or after generation 30 when the mean score improved by less than 0.01
  over the last 10 generations.

Unlike the reference, decodes and oracle scores are cached (per genome and per SMILES), so parents
are not re-decoded every generation and the reported oracle-call count is the true one: one call per
distinct molecule scored (a failed decode costs none).

Reported numbers (:meth:`GAResult.summary`): top-1/10/100 are the means of the best 1/10/100 distinct
molecules over *every* oracle call of the run, not of the final population (which holds only
``population`` molecules: a "top-100" of a population of 32 is the mean of those 32); the top-10 AUC over
oracle calls (:func:`top_k_auc`) is the budgeted benchmarks' measure of sample efficiency.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.checkpoint import load_checkpoint, save_checkpoint
from common.logging import MetricLogger
from common.progress import progress

from .chem import morgan_bits
from .config import GAConfig
from .decode import Decoder
from .oracles import Oracle


def top_k_mean(scores: Sequence[float], k: int) -> float:
    """Mean of the k best scores (of all there are when fewer than k); NaN for none."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    return float(s[:k].mean()) if len(s) else math.nan


def top_k_auc(scores: Sequence[float], *, k: int = 10, budget: int | None = None, every: int = 100) -> float:
    """Area under the curve of the top-k mean against the number of oracle calls, divided by the budget.

    ``scores`` are the oracle values in call order. The curve is sampled every ``every`` calls and at the last
    call and integrated by trapezoids from 0 calls (value 0); a run that stopped before the budget keeps its
    final value up to the budget (it has finished, so that is what more calls would have reported). This is
    the sample-efficiency measure of budgeted molecular-optimization benchmarks (PMO's "AUC top-10")."""
    n = len(scores)
    budget = budget or n
    if n == 0 or budget <= 0:
        return math.nan
    n = min(n, budget)
    points = list(range(every, n, every)) + [n]
    area, prev_x, prev_y = 0.0, 0, 0.0
    for x in points:
        y = top_k_mean(scores[:x], k)
        area += (x - prev_x) * (y + prev_y) / 2
        prev_x, prev_y = x, y
    area += (budget - n) * prev_y
    return area / budget


@dataclass
class GAResult:
    top_smiles: list[str]
    top_scores: list[float]
    seed_scores: list[float]
    history: list[dict] = field(default_factory=list)
    oracle_calls: int = 0
    decode_calls: int = 0
    generations: int = 0
    seconds: float = 0.0
    call_scores: list[float] = field(default_factory=list)
    """Oracle values in call order (one per distinct molecule scored)."""
    call_smiles: list[str] = field(default_factory=list)
    budget: int | None = None
    auc_every: int = 100

    def summary(self) -> dict[str, float]:
        seeds = np.array(self.seed_scores)
        return {"top1": top_k_mean(self.call_scores, 1), "top10": top_k_mean(self.call_scores, 10),
                "top100": top_k_mean(self.call_scores, 100),
                "auc_top10": top_k_auc(self.call_scores, k=10, budget=self.budget, every=self.auc_every),
                "population_mean": float(np.mean(self.top_scores)) if self.top_scores else math.nan,
                "seed_mean": float(seeds.mean()), "seed_std": float(seeds.std()),
                "oracle_calls": self.oracle_calls, "budget": self.budget, "decode_calls": self.decode_calls,
                "generations": self.generations, "seconds": self.seconds}

    def best(self, n: int = 10) -> list[tuple[str, float]]:
        """The n best distinct molecules over every oracle call."""
        order = np.argsort(-np.asarray(self.call_scores), kind="stable")[:n]
        return [(self.call_smiles[i], float(self.call_scores[i])) for i in order]


def crossover(p1: np.ndarray, p2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    L = len(p1)
    n = int(math.ceil(rng.normal(L / 2, L / 10)))
    n = min(max(n, L // 5), (4 * L) // 5)
    child = p2.copy()
    idx = rng.choice(L, n, replace=False)
    child[idx] = p1[idx]
    return child


def mutate(child: np.ndarray, rng: np.random.Generator, num_mut: int = 24, probability: float = 0.5) -> np.ndarray:
    if rng.random() < probability:
        idx = rng.choice(len(child), num_mut, replace=False)
        child = child.copy()
        child[idx] = 1 - child[idx]
    return child


def parent_weights(n: int, softmax: bool) -> np.ndarray:
    w = (n + 10 - np.arange(1, n + 1)).astype(np.float64)  # rank 1 is the best member
    if softmax:
        w = np.exp(w - w.max())
    return w / w.sum()


def unique_rows(x: np.ndarray) -> np.ndarray:
    """Unique genomes in first-seen order (``np.unique(axis=0)`` reorders, a reference defect)."""
    seen: set[bytes] = set()
    keep = []
    for i, row in enumerate(x):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return x[keep]


class GeneticOptimizer:
    def __init__(self, decoder: Decoder, oracle: Oracle, cfg: GAConfig):
        self.decoder, self.oracle, self.cfg = decoder, oracle, cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.decode_cache: dict[bytes, str | None] = {}
        self.score_cache: dict[str | None, float] = {}  # insertion order = oracle-call order

    @property
    def oracle_calls(self) -> int:
        """Distinct molecules scored (a failed decode costs no oracle call)."""
        return sum(smi is not None for smi in self.score_cache)

    @property
    def exhausted(self) -> bool:
        return self.cfg.max_oracle_calls is not None and self.oracle_calls >= self.cfg.max_oracle_calls

    def score(self, genomes: np.ndarray) -> tuple[list[str | None], np.ndarray]:
        smiles, scores = [], []
        for g in genomes:
            key = g.tobytes()
            if key not in self.decode_cache:
                r = self.decoder.decode(g.astype(np.float32), target=None, k=1)
                self.decode_cache[key] = r.best
            smi = self.decode_cache[key]
            if smi not in self.score_cache:
                if smi is not None and self.exhausted:  # over budget: not scored, not kept
                    smiles.append(None)
                    scores.append(self.oracle(None))
                    continue
                self.score_cache[smi] = self.oracle(smi)
            smiles.append(smi)
            scores.append(self.score_cache[smi])
        return smiles, np.array(scores, dtype=np.float64)

    def select(self, genomes: np.ndarray, smiles: list, scores: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        order = np.argsort(-scores, kind="stable")
        keep, seen = [], set()
        for i in order:
            if smiles[i] is None or smiles[i] in seen:
                continue
            seen.add(smiles[i])
            keep.append(i)
            if len(keep) == self.cfg.population:
                break
        if len(keep) < self.cfg.population:  # too few distinct molecules: fill with the rest, best first
            rest = [i for i in order if i not in set(keep)]
            keep += rest[: self.cfg.population - len(keep)]
        keep = np.array(keep)
        return genomes[keep], [smiles[i] for i in keep], scores[keep]

    def offspring(self, population: np.ndarray, generation: int) -> np.ndarray:
        softmax = generation >= self.cfg.generations * 4 / 5
        w = parent_weights(len(population), softmax)
        kids = []
        for _ in range(self.cfg.offspring):
            i, j = self.rng.choice(len(population), 2, replace=False, p=w)
            child = crossover(population[i], population[j], self.rng)
            kids.append(mutate(child, self.rng, self.cfg.num_mut, self.cfg.mut_probability))
        return np.stack(kids)

    def run(self, seed_genomes: np.ndarray, *, run_dir: str | os.PathLike | None = None, resume: bool = False,
            progress_bar: bool = True) -> GAResult:
        t0 = time.time()
        cfg = self.cfg
        state_path = Path(run_dir) / "ga_state.pt" if run_dir else None
        logger = MetricLogger(run_dir, tensorboard=False) if run_dir else None
        start = 0
        if resume and state_path is not None and state_path.exists():
            st = load_checkpoint(state_path)
            pop, history, seed_scores = st["population"], st["history"], st["seed_scores"]
            self.decode_cache, self.score_cache = st["decode_cache"], st["score_cache"]
            self.rng.bit_generator.state = st["rng"]
            start = st["generation"]
        else:
            pop = unique_rows(seed_genomes.astype(np.uint8))
            smiles, scores = self.score(pop)
            seed_scores = scores.tolist()
            pop, _, _ = self.select(pop, smiles, scores)
            history = []
        gen = start
        for gen in progress(range(start, cfg.generations), total=cfg.generations - start, desc="GA generations",
                            enabled=progress_bar):
            merged = unique_rows(np.concatenate([pop, self.offspring(pop, gen)]))
            smiles, scores = self.score(merged)
            pop, smiles, scores = self.select(merged, smiles, scores)
            rec = {"generation": gen + 1, "mean": float(scores.mean()), "max": float(scores.max()),
                   "oracle_calls": self.oracle_calls, "decode_calls": len(self.decode_cache)}
            history.append(rec)
            if logger:
                logger.log(gen + 1, {f"ga/{k}": v for k, v in rec.items() if k != "generation"})
            if state_path is not None:
                save_checkpoint(state_path, {"population": pop, "history": history, "seed_scores": seed_scores,
                                             "decode_cache": self.decode_cache, "score_cache": self.score_cache,
                                             "rng": self.rng.bit_generator.state, "generation": gen + 1,
                                             "config": asdict(cfg)})
            if self.exhausted:
                break
            w = cfg.early_stop_window
            if gen + 1 > cfg.early_stop_after and len(history) > w and \
                    history[-1]["mean"] - history[-1 - w]["mean"] < cfg.early_stop_delta:
                break
        if logger:
            logger.close()
        smiles, scores = self.score(pop)
        order = np.argsort(-scores, kind="stable")
        calls = [(smi, v) for smi, v in self.score_cache.items() if smi is not None]
        return GAResult([smiles[i] for i in order], [float(scores[i]) for i in order], seed_scores, history,
                        oracle_calls=self.oracle_calls, decode_calls=len(self.decode_cache),
                        generations=len(history), seconds=time.time() - t0,
                        call_scores=[v for _, v in calls], call_smiles=[smi for smi, _ in calls],
                        budget=cfg.max_oracle_calls, auc_every=cfg.auc_every)


def seed_genomes(smiles: Sequence[str], nbits: int, radius: int = 2) -> np.ndarray:
    return np.stack([morgan_bits(s, radius, nbits) for s in smiles]).astype(np.uint8)


def random_genomes(n: int, nbits: int, rng: np.random.Generator, density: float = 0.01) -> np.ndarray:
    return (rng.random((n, nbits)) < density).astype(np.uint8)
