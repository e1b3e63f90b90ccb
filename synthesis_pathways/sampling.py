"""Random synthetic trees, sampled as the reference does (training data for the four networks).

Per step: the action is argmax(u * mask) with u ~ U(0,1)^4, i.e. uniform over the legal actions; Add
draws a uniform block, then a uniform template among those the block can enter, then a uniform partner
from the complementary slot; Expand does the same on the most recent root (up to ``expand_attempts``
tries when the template gives no product); Merge draws a template whose slots accept both roots. Any
failure (no template, no product, no End within ``max_steps``) drops the tree. Kept trees then pass the
QED filter: kept if QED(root) > 0.5, else kept with probability QED / 0.5.

Parallelism: the work is cut into shards of ``shard_size`` attempts; shard k draws from
``SeedSequence([seed, k])``, so the trees do not depend on the number of worker processes. Each shard
is written to its own JSONL file atomically, which makes sampling resumable (finished shards are
skipped) and streams trees to disk instead of holding them in memory.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chem import Template, qed
from .space import ReactionSpace
from .syntree import ADD, END, EXPAND, MERGE, SyntheticTree


class SamplingFailure(Exception):
    """A tree was dropped; ``reason`` says why (counted in the statistics)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TreeSampler:
    def __init__(self, space: ReactionSpace, rng: np.random.Generator, *, max_steps: int = 15,
                 expand_attempts: int = 3):
        self.space = space
        self.rng = rng
        self.max_steps = max_steps
        self.expand_attempts = expand_attempts

    def action_mask(self, tree: SyntheticTree) -> np.ndarray:
        roots = tree.roots
        if len(roots) == 0:
            return np.array([1, 0, 0, 0], dtype=bool)
        if len(roots) == 1:
            return np.array([1, 1, 0, 1], dtype=bool)
        can_merge = bool(self.space.merge_pattern_mask(roots[0], roots[1]).any())
        return np.array([0, 1, can_merge, 0], dtype=bool)

    def _react_with_block(self, mol: str) -> tuple[int, str | None, list[str]]:
        """Template (uniform over applicable), partner (uniform over its list), and all products."""
        mask = self.space.reaction_mask(mol)
        if not mask.any():
            raise SamplingFailure("no template")
        t = int(self.rng.choice(np.flatnonzero(mask)))
        partner = None
        if self.space.templates[t].bimolecular:
            candidates = self.space.partner_candidates(t, mol)
            if len(candidates) == 0:
                raise SamplingFailure("no partner")
            partner = self.space.blocks[int(self.rng.choice(candidates))]
        return t, partner, self.space.templates[t].run(mol, partner)

    def sample(self) -> SyntheticTree:
        tree = SyntheticTree()
        for _ in range(self.max_steps):
            mask = self.action_mask(tree)
            action = int(np.argmax(self.rng.random(4) * mask))
            if action == END:
                tree.update(END)
                return tree
            roots = tree.roots
            if action == MERGE:
                r1, r2 = roots[0], roots[1]
                t = int(self.rng.choice(np.flatnonzero(self.space.merge_pattern_mask(r1, r2))))
                products = self.space.templates[t].run(r1, r2)
            else:
                r1 = self.space.blocks[int(self.rng.integers(len(self.space.blocks)))] if action == ADD \
                    else roots[0]
                attempts = self.expand_attempts if action == EXPAND else 1
                for _attempt in range(attempts):
                    t, r2, products = self._react_with_block(r1)
                    if products:
                        break
            if not products:
                raise SamplingFailure("no product")
            product = products[int(self.rng.integers(len(products)))] if len(products) > 1 else products[0]
            tree.update(action, t, r1, r2, product)
        raise SamplingFailure("max steps")

    def keep(self, tree: SyntheticTree, qed_threshold: float = 0.5) -> bool:
        """The reference's QED filter (always drawn, so the random stream does not depend on QED)."""
        u = self.rng.random()
        q = qed(tree.root)
        return q > qed_threshold or u < q / qed_threshold


@dataclass
class SamplingStats:
    attempts: int = 0
    sampled: int = 0
    kept: int = 0
    failures: Counter = field(default_factory=Counter)
    depths: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def merge(self, other: SamplingStats) -> None:
        self.attempts += other.attempts
        self.sampled += other.sampled
        self.kept += other.kept
        self.failures.update(other.failures)
        self.depths.update(other.depths)
        self.seconds += other.seconds
        self.cpu_seconds += other.cpu_seconds

    def to_dict(self) -> dict:
        return {"attempts": self.attempts, "sampled": self.sampled, "kept": self.kept,
                "success_rate": self.sampled / max(self.attempts, 1),
                "qed_pass_rate": self.kept / max(self.sampled, 1),
                "failures": dict(self.failures), "depths": {int(k): v for k, v in sorted(self.depths.items())},
                "process_seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "attempts_per_cpu_second": self.attempts / self.cpu_seconds if self.cpu_seconds else None}

    @classmethod
    def from_dict(cls, d: dict) -> SamplingStats:
        return cls(d["attempts"], d["sampled"], d["kept"], Counter(d["failures"]),
                   Counter({int(k): v for k, v in d["depths"].items()}), d["process_seconds"], d.get("cpu_seconds", 0.0))


def sample_shard(space: ReactionSpace, seed: int, shard: int, attempts: int, *, max_steps: int = 15,
                 qed_filter: bool = True) -> tuple[list[SyntheticTree], SamplingStats]:
    """``attempts`` sampling tries with the shard's own generator; returns the kept trees."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, shard]))
    sampler = TreeSampler(space, rng, max_steps=max_steps)
    stats = SamplingStats()
    kept: list[SyntheticTree] = []
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(attempts):
        stats.attempts += 1
        try:
            tree = sampler.sample()
        except SamplingFailure as e:
            stats.failures[e.reason] += 1
            continue
        stats.sampled += 1
        stats.depths[tree.depth] += 1
        if not qed_filter or sampler.keep(tree):
            kept.append(tree)
            stats.kept += 1
    stats.seconds = time.perf_counter() - t0
    stats.cpu_seconds = time.process_time() - cpu0
    return kept, stats


# ---------------------------------------------------------------------------------------------------
# Sharded, multi-process, resumable sampling to disk

_WORKER_SPACE: ReactionSpace | None = None


def _init_worker(smarts: list[str], blocks: list[str], matches: np.ndarray) -> None:
    # spawn-safe: everything the worker needs arrives as arguments, nothing relies on forked globals
    global _WORKER_SPACE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    templates = [Template(s, i) for i, s in enumerate(smarts)]
    _WORKER_SPACE = ReactionSpace(templates, blocks, matches=matches)


def _run_shard(args: tuple) -> tuple[int, list[str], dict]:
    seed, shard, attempts, max_steps, qed_filter = args
    trees, stats = sample_shard(_WORKER_SPACE, seed, shard, attempts, max_steps=max_steps, qed_filter=qed_filter)
    return shard, [t.to_json() for t in trees], stats.to_dict()


def shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard_{shard:05d}.jsonl"


def _write_shard(out_dir: Path, shard: int, lines: list[str], stats: dict) -> None:
    path = shard_path(out_dir, shard)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps({"shard": shard, "stats": stats}) + "\n")
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def sample_to_disk(space: ReactionSpace, out_dir: str | os.PathLike, *, attempts: int, seed: int = 0,
                   shard_size: int = 500, workers: int = 1, max_steps: int = 15, qed_filter: bool = True,
                   progress: bool = True) -> SamplingStats:
    """Sample ``attempts`` trees into ``out_dir/shard_*.jsonl``; finished shards are kept (resume)."""
    from common.progress import progress as progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (attempts + shard_size - 1) // shard_size
    sizes = [min(shard_size, attempts - k * shard_size) for k in range(n_shards)]
    todo = [(seed, k, sizes[k], max_steps, qed_filter) for k in range(n_shards)
            if not shard_path(out, k).exists()]
    bar = progress_bar(total=n_shards, desc="sampling shards", enabled=progress)
    bar.update(n_shards - len(todo))
    init_args = ([t.smarts for t in space.templates], space.blocks, space.matches)
    if workers <= 1:
        _init_worker(*init_args)
        results: Iterator = map(_run_shard, todo)
        pool = None
    else:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init_args)
        results = pool.imap_unordered(_run_shard, todo)
    try:
        for shard, lines, stats in results:
            _write_shard(out, shard, lines, stats)
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    return read_stats(out, n_shards)


def read_stats(out_dir: str | os.PathLike, n_shards: int | None = None) -> SamplingStats:
    total = SamplingStats()
    for path in sorted(Path(out_dir).glob("shard_*.jsonl"))[:n_shards]:
        with open(path) as f:
            total.merge(SamplingStats.from_dict(json.loads(f.readline())["stats"]))
    return total


def iter_trees(out_dir: str | os.PathLike) -> Iterator[SyntheticTree]:
    """Trees in shard order (independent of how many workers produced them)."""
    for path in sorted(Path(out_dir).glob("shard_*.jsonl")):
        with open(path) as f:
            f.readline()  # shard header
            for line in f:
                if line.strip():
                    yield SyntheticTree.from_json(line)


def split_indices(n: int, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> list[np.ndarray]:
    """Random train/valid/test split (6:2:2 in the reference), reproducible from the seed."""
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return [np.sort(p) for p in np.split(perm, bounds)]
