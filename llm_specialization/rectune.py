"""TALLRec-style rec-tuning (protocol B): will the user like the target movie? Yes/No from an LLM.

Examples (TALLRec's ``preprocess_movie.py`` construction, re-implemented): like = rating > 3; per user, in
time order (ties by item id), every position i >= ``history`` yields the previous ``history`` items with
their like/dislike labels and item i as the target. Users are visited in id order and the last
``max_records`` examples of that user-ordered list are kept.

- parity build: that list sliced 80/10/10 in order (TALLRec's split: neither temporal nor random, and
  neighbouring examples share history items);
- clean build: the same examples split 80/10/10 by user id with a fixed seed (no user in two splits).

Score s = p(Yes) / (p(Yes) + p(No)) at the first response position, the Yes/No ids taken from the tokenizer
(with and without a leading space) instead of TALLRec's hard-coded LLaMA ids. Metric: AUC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.distributed import gather_shards, shard
from llm_specialization.models import lm_loss, pad_lm_batch

LIKE_ABOVE = 3.0  # like = rating > 3

TALLREC_INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like the "
                       "target movie by answering \"Yes.\" or \"No.\".")
ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n"
          "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


@dataclass(frozen=True)
class RecExample:
    user: int
    history: tuple[int, ...]  # item ids, oldest first
    liked: tuple[bool, ...]  # like label of each history item
    target: int
    label: int  # 1 when the user liked the target


# ----------------------------------------------------------------------------------------- data
def build_examples(ml, history: int = 10, max_records: int | None = 10_000) -> list[RecExample]:
    """TALLRec's example construction over a :class:`~llm_specialization.personal.MovieLens`."""
    if history < 1:
        raise ValueError("history must be at least 1")
    order = np.lexsort((ml.items, ml.timestamps, ml.users))
    seqs: dict[int, list[tuple[int, bool]]] = {}
    for j in order:
        seqs.setdefault(int(ml.users[j]), []).append((int(ml.items[j]), bool(ml.ratings[j] > LIKE_ABOVE)))
    out = []
    for u in sorted(seqs):
        s = seqs[u]
        for i in range(history, len(s)):
            past = s[i - history:i]
            out.append(RecExample(u, tuple(it for it, _ in past), tuple(lk for _, lk in past), s[i][0],
                                  int(s[i][1])))
    return out[-max_records:] if max_records else out


def split_examples(examples: list[RecExample], build: str = "parity", seed: int = 0
                   ) -> tuple[list[RecExample], list[RecExample], list[RecExample]]:
    """80/10/10: ``parity`` slices the user-ordered list; ``clean`` splits by user id (seeded)."""
    n = len(examples)
    if build == "parity":
        a, b = int(0.8 * n), int(0.9 * n)
        return examples[:a], examples[a:b], examples[b:]
    if build == "clean":
        users = sorted({e.user for e in examples})
        np.random.default_rng(seed).shuffle(users)
        a, b = int(0.8 * len(users)), int(0.9 * len(users))
        part = {u: 0 for u in users[:a]} | {u: 1 for u in users[a:b]} | {u: 2 for u in users[b:]}
        splits: tuple[list, list, list] = ([], [], [])
        for e in examples:
            splits[part[e.user]].append(e)
        return splits
    raise ValueError(f"build must be parity or clean, not {build!r}")


def sample(examples: list[RecExample], n: int | None, seed: int) -> list[RecExample]:
    """n examples drawn without replacement with a seed (all when n is None or larger than the list)."""
    if n is None or n >= len(examples):
        return list(examples)
    idx = np.random.default_rng(seed).choice(len(examples), size=n, replace=False)
    return [examples[i] for i in sorted(idx)]


def synthetic_ratings(n_users: int = 40, n_items: int = 30, length: int = 12, seed: int = 0):
    """Random histories where the like label is a property of the item (odd ids liked, titled 'Sunny k';
    even ids disliked, 'Gloomy k'): learnable from the target title alone. For tests and smoke runs."""
    from llm_specialization.personal import MovieLens

    rng = np.random.default_rng(seed)
    users, items, ratings, ts = [], [], [], []
    for u in range(1, n_users + 1):
        for t, it in enumerate(rng.choice(np.arange(1, n_items + 1), size=length, replace=False)):
            users.append(u)
            items.append(int(it))
            ratings.append(5.0 if it % 2 else 2.0)
            ts.append(1000 * u + t)
    titles = {i: f"{'Sunny' if i % 2 else 'Gloomy'} {i}" for i in range(1, n_items + 1)}
    return MovieLens(np.array(users), np.array(items), np.array(ratings), np.array(ts), titles)


# ----------------------------------------------------------------------------------------- prompts
def prompt_input(ex: RecExample, titles: dict[int, str]) -> str:
    liked = ", ".join(f'"{titles[i]}"' for i, lk in zip(ex.history, ex.liked) if lk)
    disliked = ", ".join(f'"{titles[i]}"' for i, lk in zip(ex.history, ex.liked) if not lk)
    return (f"User Preference: {liked}\nUser Unpreference: {disliked}\n"
            f"Whether the user will like the target movie \"{titles[ex.target]}\"?")


def render_prompt(ex: RecExample, titles: dict[int, str], tokenizer=None, template: str = "alpaca") -> str:
    """The prompt up to the response: TALLRec's Alpaca layout, or the tokenizer's chat template (ChatML
    for SmolLM2) with the generation prompt appended."""
    if template == "alpaca":
        return ALPACA.format(instruction=TALLREC_INSTRUCTION, input=prompt_input(ex, titles))
    if template == "chat":
        if not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError("template=chat needs a tokenizer with a chat template")
        msg = [{"role": "user", "content": f"{TALLREC_INSTRUCTION}\n\n{prompt_input(ex, titles)}"}]
        return tokenizer.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"template must be alpaca or chat, not {template!r}")


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def answer_ids(tokenizer) -> tuple[list[int], list[int]]:
    """First-token ids of 'Yes'/' Yes' and 'No'/' No' from the tokenizer (no hard-coded ids)."""
    yes = {_ids(tokenizer, w)[0] for w in ("Yes", " Yes")}
    no = {_ids(tokenizer, w)[0] for w in ("No", " No")}
    shared = yes & no  # e.g. a byte tokenizer's ' ': says nothing about the answer
    yes, no = sorted(yes - shared), sorted(no - shared)
    if not yes or not no:
        raise ValueError("the tokenizer gives Yes and No no distinct first token")
    return yes, no


# ----------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def yes_probability(model, tokenizer, prompts: list[str], batch_size: int = 8, sharded: bool = False) -> np.ndarray:
    """s = p(Yes) / (p(Yes) + p(No)) at the position after each prompt (right-padded batches: the last real
    position never sees the padding under the causal mask). ``sharded`` (every rank of a torchrun job calls
    it): the same batches are dealt to the ranks and the scores gathered in order."""
    yes, no = answer_ids(tokenizer)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    starts = list(range(0, len(prompts), batch_size))

    def score(i: int) -> torch.Tensor:
        ids = [_ids(tokenizer, p) for p in prompts[i:i + batch_size]]
        T = max(len(x) for x in ids)
        tokens = torch.full((len(ids), T), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), T), dtype=torch.long)
        for j, x in enumerate(ids):
            tokens[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        logits = model(input_ids=tokens.to(device), attention_mask=mask.to(device)).logits.float()
        last = logits[torch.arange(len(ids)), mask.sum(1).to(device) - 1]  # (B, V)
        lse_yes = last[:, yes].logsumexp(-1)
        lse_no = last[:, no].logsumexp(-1)
        return torch.sigmoid(lse_yes - lse_no).cpu()

    out = gather_shards([score(i) for i in shard(starts)], len(starts)) if sharded else [score(i) for i in starts]
    return torch.cat(out).numpy() if out else np.zeros(0)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count 1/2."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both liked and disliked examples")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ci(labels, scores, groups, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
           ) -> tuple[float, float] | None:
    """Percentile 95% CI of the AUC by a cluster bootstrap over ``groups`` (users): the examples of one user
    share a history and a propensity to like, so resampling examples alone would understate the spread.
    Resamples without both labels are skipped; None with fewer than 2 groups. Hand-written: common.stats
    has no cluster bootstrap, and the AUC is not a mean over items."""
    from scipy.stats import rankdata

    y, s, g = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64), np.asarray(groups)
    ids = np.unique(g)
    if len(ids) < 2:
        return None
    members = [np.flatnonzero(g == u) for u in ids]
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(ids), size=len(ids))])
        yy, pos = y[idx], int(y[idx].sum())
        if 0 < pos < len(idx):  # Mann-Whitney with mid-ranks: the AUC with ties counted half
            aucs.append((rankdata(s[idx])[yy].sum() - pos * (pos + 1) / 2) / (pos * (len(idx) - pos)))
    alpha = (1 - confidence) / 2
    lo, hi = np.percentile(aucs, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------- baselines
def history_like_fraction(examples: list[RecExample]) -> np.ndarray:
    """Baseline: the fraction of liked items in the user's history."""
    return np.array([np.mean(e.liked) for e in examples])


def item_like_rate(train: list[RecExample], examples: list[RecExample]) -> np.ndarray:
    """Baseline: the target item's like rate over every (history or target) occurrence in the training
    examples; items never seen there get the global training like rate."""
    count: dict[int, list[int]] = {}
    for e in train:
        for it, lk in zip(e.history, e.liked):
            count.setdefault(it, []).append(int(lk))
        count.setdefault(e.target, []).append(e.label)
    glob = float(np.mean([v for vs in count.values() for v in vs])) if count else 0.5
    return np.array([np.mean(count[e.target]) if e.target in count else glob for e in examples])


# ----------------------------------------------------------------------------------------- training
class RecTuneDataset(torch.utils.data.Dataset):
    """Prompt + 'Yes.'/'No.' + EOS; the loss covers the response only unless ``train_on_inputs`` (TALLRec's
    shell script trains on the whole prompt: the parity switch)."""

    def __init__(self, lm, examples: list[RecExample], titles: dict[int, str], template: str = "alpaca",
                 train_on_inputs: bool = False):
        tok = lm.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.rows = []
        for e in examples:
            p = _ids(tok, render_prompt(e, titles, tok, template))
            r = _ids(tok, "Yes." if e.label else "No.") + [tok.eos_token_id]
            labels = (p if train_on_inputs else [-100] * len(p)) + r
            self.rows.append((p + r, labels))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def collate(self, batch):
        return pad_lm_batch(batch, self.pad)


rectune_loss = lm_loss  # cross-entropy on the response tokens (or the whole prompt with train_on_inputs)


def evaluate_auc(model, tokenizer, examples: list[RecExample], titles: dict[int, str], template: str = "alpaca",
                 batch_size: int = 8, sharded: bool = False) -> tuple[float, np.ndarray]:
    scores = yes_probability(model, tokenizer, [render_prompt(e, titles, tokenizer, template) for e in examples],
                             batch_size, sharded)
    return roc_auc([e.label for e in examples], scores), scores


# ----------------------------------------------------------------------------------------- SASRec baseline
class LabelledSASRec(torch.nn.Module):
    """TALLRec's few-shot SASRec baseline design: SASRec's encoder over the history, each item embedding plus
    a like/dislike embedding; logit = <h_last, e_target> + b, trained with BCE on the same n examples."""

    def __init__(self, n_items: int, hidden: int = 64, layers: int = 2, heads: int = 2, dropout: float = 0.2,
                 max_len: int = 10):
        super().__init__()
        self.item = torch.nn.Embedding(n_items + 1, hidden)
        self.like = torch.nn.Embedding(2, hidden)
        self.pos = torch.nn.Embedding(max_len, hidden)
        block = torch.nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout, activation="gelu",
                                                 batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(hidden)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        torch.nn.init.normal_(self.item.weight, std=0.02)

    def forward(self, history, liked, target, labels=None):  # (B, L), (B, L), (B,) -> (B,) logits
        L = history.shape[1]
        h = self.item(history) + self.like(liked) + self.pos(torch.arange(L, device=history.device))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=history.device), 1)
        h = self.norm(self.encoder(h, mask=causal))[:, -1]
        return (h * self.item(target)).sum(-1) + self.bias


class LabelledSeqDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[RecExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        e = self.examples[i]
        return {"history": torch.tensor(e.history), "liked": torch.tensor([int(x) for x in e.liked]),
                "target": torch.tensor(e.target), "labels": torch.tensor(float(e.label))}


def labelled_sasrec_loss(model, batch) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(model(**batch), batch["labels"])


@torch.no_grad()
def labelled_sasrec_scores(model: LabelledSASRec, examples: list[RecExample]) -> np.ndarray:
    model.eval()
    batch = torch.utils.data.default_collate([LabelledSeqDataset(examples)[i] for i in range(len(examples))])
    return torch.sigmoid(model(**batch)).numpy()
