"""Text corpora as token streams, and the deterministic batch of every step.

The batch of step k depends only on (seed, k): a run resumed at any step sees the same data as an
uninterrupted one, without saving any loader state.
"""

from __future__ import annotations

import torch

from common.corpora import read_reuters as read_reuters_docs


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256, id 0 separates documents): for random-init models."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [b for b in text.encode("utf-8") if b != 0]


class HFTokenizer:
    """A transformers tokenizer behind the same small interface (no special tokens added)."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id if tok.eos_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)


def read_reuters(split: str = "training", data_dir: str | None = None, limit: int | None = None) -> list[str]:
    """The documents of one Reuters-21578 split (``training`` or ``test``), in file-id order.

    Reading and validation are the shared :func:`common.corpora.read_reuters` (its ``cats.txt`` order is
    the numeric file-id order).
    """
    if split not in ("training", "test"):
        raise ValueError(f"split must be training or test, not {split!r}")
    want = {"training": "train", "test": "test"}[split]
    out = [d.text for d in read_reuters_docs(data_dir=data_dir, splits=(want,))]
    return out[:limit] if limit else out


def token_stream(texts: list[str], tokenizer, eos_id: int | None = None) -> torch.Tensor:
    """All documents tokenized and concatenated, each followed by ``eos_id``, as one int64 tensor."""
    eos = tokenizer.eos_id if eos_id is None else eos_id
    ids: list[int] = []
    for t in texts:
        enc = tokenizer.encode(t)
        ids.extend(enc if isinstance(enc, list) else list(enc))
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def synthetic_stream(vocab: int, length: int, period: int = 7, seed: int = 0) -> torch.Tensor:
    """A solvable corpus: one fixed random cycle of ``period`` tokens repeated, so the next token is
    determined by the previous one and a small model drives the loss towards zero."""
    g = torch.Generator().manual_seed(seed)
    cycle = torch.randperm(vocab, generator=g)[:period]
    return cycle.repeat(length // period + 1)[:length].clone()


def batch_for_step(stream: torch.Tensor, step: int, batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets), each (batch, seq): random windows of the stream chosen from (seed, step)."""
    if stream.numel() < seq + 2:
        raise ValueError(f"the corpus has {stream.numel()} tokens, fewer than seq_len + 2 = {seq + 2}")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, stream.numel() - seq - 1, (batch,), generator=g)
    win = torch.stack([stream[s : s + seq + 1] for s in starts.tolist()])
    return win[:, :-1].contiguous(), win[:, 1:].contiguous()


def load_corpus(kind: str, tokenizer, *, data_dir: str | None = None, limit_docs: int | None = None,
                synthetic_tokens: int = 1 << 16, seed: int = 0) -> torch.Tensor:
    if kind == "reuters":
        return token_stream(read_reuters("training", data_dir, limit_docs), tokenizer)
    if kind == "synthetic":
        return synthetic_stream(tokenizer.vocab_size, synthetic_tokens, seed=seed)
    raise ValueError(f"unknown corpus {kind!r} (reuters | synthetic)")
