"""Knowledge-graph-based NLU (Hu et al.'s KE-PLM taxonomy) on UMLS triple classification.

K0 KG-only: TransE / DistMult embeddings trained on the train triples, one score threshold per relation
    tuned on dev (Socher et al. 2013 protocol).
K1 text-only (KG-BERT style): MiniLM reads "[CLS] head [SEP] relation [SEP] tail [SEP]" with KG-BERT's segment
    ids (0 / 1 / 0); linear on [CLS].
K2 ERNIE-style fusion: K1 plus frozen K0 entity vectors, projected to the encoder width and gated-added to
    the embedding output at the first sub-token of the head and of the tail:
    h <- h + sigmoid(g . [h; W e]) * W e.
Negatives: one corruption per positive (head or tail, p = 0.5) by a uniform entity, rejecting known triples.
Beside triple classification, filtered link prediction (Hits@10, MR, MRR) as KG-BERT reports for UMLS.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from common.data import DataFormatError, dataset_path

UMLS_SOURCE = "the KG-BERT repository (yao8839836/kg-bert, data/umls)"
Triple = tuple[int, int, int]  # (head, relation, tail) ids


@dataclass
class UMLS:
    entities: list[str]
    relations: list[str]
    entity_text: list[str]
    relation_text: list[str]
    train: list[Triple]
    dev: list[Triple]
    test: list[Triple]

    def known(self) -> set[Triple]:
        return set(self.train) | set(self.dev) | set(self.test)


def _read_pairs(path: Path) -> dict[str, str]:
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataFormatError(path, f"expected 'name<TAB>text', got {len(parts)} fields", line=i)
        out[parts[0]] = parts[1]
    return out


def _read_triples(path: Path, ent: dict[str, int], rel: dict[str, int]) -> list[Triple]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataFormatError(path, f"expected 'head<TAB>relation<TAB>tail', got {len(parts)} fields", line=i)
        h, r, t = parts
        for name, table, kind in ((h, ent, "entity"), (r, rel, "relation"), (t, ent, "entity")):
            if name not in table:
                raise DataFormatError(path, f"unknown {kind} {name!r}", line=i)
        out.append((ent[h], rel[r], ent[t]))
    return out


def read_umls(data_dir=None, folder: str = "umls") -> UMLS:
    root = dataset_path("UMLS", folder, source=UMLS_SOURCE, data_dir=data_dir)
    ent_text = _read_pairs(root / "entity2text.txt")
    rel_text = _read_pairs(root / "relation2text.txt")
    entities, relations = sorted(ent_text), sorted(rel_text)
    ent = {e: i for i, e in enumerate(entities)}
    rel = {r: i for i, r in enumerate(relations)}
    splits = {s: _read_triples(root / f"{s}.tsv", ent, rel) for s in ("train", "dev", "test")}
    return UMLS(entities, relations, [ent_text[e] for e in entities], [rel_text[r] for r in relations], **splits)


def corrupt(triples: list[Triple], n_entities: int, reject: set[Triple], seed: int) -> list[Triple]:
    """One negative per positive: replace head or tail (p = 0.5) by a uniform entity, never a known triple."""
    rng = random.Random(seed)
    out = []
    for h, r, t in triples:
        while True:
            e = rng.randrange(n_entities)
            cand = (e, r, t) if rng.random() < 0.5 else (h, r, e)
            if cand not in reject:
                out.append(cand)
                break
    return out


def labelled(pos: list[Triple], neg: list[Triple]) -> tuple[list[Triple], np.ndarray]:
    return pos + neg, np.array([1] * len(pos) + [0] * len(neg))


# ----------------------------------------------------------------------------------------- K0
class KGEmbedding(nn.Module):
    """TransE (score = -|h + r - t|_1) or DistMult (score = <h, r, t>); higher means more plausible."""

    def __init__(self, n_entities: int, n_relations: int, dim: int = 100, kind: str = "distmult"):
        super().__init__()
        if kind not in ("transe", "distmult"):
            raise ValueError(f"kind must be transe or distmult, not {kind!r}")
        self.kind = kind
        self.ent = nn.Embedding(n_entities, dim)
        self.rel = nn.Embedding(n_relations, dim)
        nn.init.xavier_uniform_(self.ent.weight)
        nn.init.xavier_uniform_(self.rel.weight)

    def forward(self, triples: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B,)
        h, r, t = self.ent(triples[:, 0]), self.rel(triples[:, 1]), self.ent(triples[:, 2])
        if self.kind == "transe":
            return -(h + r - t).abs().sum(-1)
        return (h * r * t).sum(-1)


def train_kg_embedding(kg: UMLS, kind: str = "distmult", dim: int = 100, epochs: int = 200, lr: float = 1e-2,
                       batch_size: int = 512, seed: int = 0) -> KGEmbedding:
    """Logistic loss on train positives against negatives resampled every epoch (filtered against train)."""
    torch.manual_seed(seed)
    model = KGEmbedding(len(kg.entities), len(kg.relations), dim, kind)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_set = set(kg.train)
    pos = torch.tensor(kg.train)
    for epoch in range(epochs):
        neg = torch.tensor(corrupt(kg.train, len(kg.entities), train_set, seed * 10_007 + epoch))
        perm = torch.randperm(len(pos))
        for i in range(0, len(pos), batch_size):
            idx = perm[i:i + batch_size]
            scores = torch.cat([model(pos[idx]), model(neg[idx])])
            target = torch.cat([torch.ones(len(idx)), torch.zeros(len(idx))])
            loss = nn.functional.binary_cross_entropy_with_logits(scores, target)
            loss = loss + 1e-4 * (model.ent.weight.pow(2).mean() + model.rel.weight.pow(2).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def tune_thresholds(scores: np.ndarray, labels: np.ndarray, relations: np.ndarray) -> tuple[dict[int, float], float]:
    """Per-relation thresholds maximising dev accuracy, plus a global one for unseen relations."""

    def best(s, y):
        cands = np.unique(s)
        accs = [((s >= c) == y).mean() for c in cands]
        return float(cands[int(np.argmax(accs))])

    per = {int(r): best(scores[relations == r], labels[relations == r]) for r in np.unique(relations)}
    return per, best(scores, labels)


def classify(scores: np.ndarray, relations: np.ndarray, thresholds: dict[int, float], fallback: float) -> np.ndarray:
    return np.array([s >= thresholds.get(int(r), fallback) for s, r in zip(scores, relations)], dtype=int)


@dataclass
class TripleResult:
    model: str
    accuracy: float  # per-relation thresholds tuned on dev (Socher et al. 2013)
    auc: float
    trainable_params: int
    seed: int = 0
    accuracy_global: float | None = None  # one threshold tuned on the whole dev set (~28 dev triples a relation
    # make per-relation thresholds noisy: both are reported)
    correct: list[int] = field(default_factory=list)  # 0/1 per test triple (per-relation thresholds), in order
    hits10: float | None = None  # filtered link prediction on the chosen test triples, head and tail queries
    mr: float | None = None
    mrr: float | None = None
    lp_ranks: list[float] = field(default_factory=list)


def evaluate_scores(name: str, dev_scores, dev_y, dev_rel, test_scores, test_y, test_rel, params: int,
                    seed: int = 0) -> TripleResult:
    thr, fallback = tune_thresholds(dev_scores, dev_y, dev_rel)
    pred = classify(test_scores, test_rel, thr, fallback)
    _, glob = tune_thresholds(dev_scores, dev_y, np.zeros_like(dev_rel))
    return TripleResult(name, float((pred == test_y).mean()), float(roc_auc_score(test_y, test_scores)), params,
                        seed=seed, accuracy_global=float(((test_scores >= glob).astype(int) == test_y).mean()),
                        correct=[int(c) for c in (pred == test_y)])


# ----------------------------------------------------------------------------------------- link prediction
def link_prediction_ranks(score: Callable[[list[Triple]], np.ndarray], queries: list[Triple], n_entities: int,
                          known: set[Triple]) -> list[float]:
    """Filtered ranks (KG-BERT's link prediction): for every query triple, its head and then its tail is
    replaced by each of the ``n_entities`` entities; the true triple's rank among the candidates that are not
    other known true triples (train, dev or test), ties counted half. ``score`` maps triples to scores (higher
    = more plausible) and sees all candidates in one call, so a model can batch them."""
    cands: list[Triple] = []
    for h, r, t in queries:
        cands += [(e, r, t) for e in range(n_entities)] + [(h, r, e) for e in range(n_entities)]
    scores = np.asarray(score(cands), dtype=np.float64).reshape(len(queries), 2, n_entities)
    ranks = []
    for q, (h, r, t) in enumerate(queries):
        for side, target in ((0, h), (1, t)):
            s = scores[q, side]
            other = np.array([((e, r, t) if side == 0 else (h, r, e)) not in known or e == target
                              for e in range(n_entities)])
            other[target] = False
            rivals = s[other]
            ranks.append(float(1 + (rivals > s[target]).sum() + 0.5 * (rivals == s[target]).sum()))
    return ranks


def link_metrics(ranks: list[float]) -> dict[str, float]:
    r = np.asarray(ranks, dtype=np.float64)
    return {"hits10": float((r <= 10).mean()), "mr": float(r.mean()), "mrr": float((1 / r).mean())}


# ----------------------------------------------------------------------------------------- K1 / K2
def text_pieces(kg: UMLS, tokenizer, max_piece: int = 10) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every entity's and relation's text (each cut to ``max_piece``), computed once."""
    enc = lambda text: list(tokenizer(text, add_special_tokens=False).input_ids[:max_piece])
    return [enc(t) for t in kg.entity_text], [enc(t) for t in kg.relation_text]


class TripleTextDataset(torch.utils.data.Dataset):
    """Token ids of "[CLS] head [SEP] relation [SEP] tail [SEP]" with KG-BERT's segment ids (0 for
    "[CLS] head [SEP]", 1 for "relation [SEP]", 0 for "tail [SEP]", as its run_bert_triple_classifier.py
    builds them) and the head/tail first-token positions. ``pieces``: :func:`text_pieces`, when the same
    texts are encoded for many datasets (link prediction)."""

    def __init__(self, kg: UMLS, triples: list[Triple], labels, tokenizer, max_piece: int = 10, pieces=None):
        ent, rel = pieces or text_pieces(kg, tokenizer, max_piece)
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.items = []
        for (h, r, t), y in zip(triples, labels):
            ids = [cls, *ent[h], sep, *rel[r], sep, *ent[t], sep]
            segments = [0] * (len(ent[h]) + 2) + [1] * (len(rel[r]) + 1) + [0] * (len(ent[t]) + 1)
            tail_pos = 1 + len(ent[h]) + 1 + len(rel[r]) + 1
            self.items.append((ids, (h, t), (1, tail_pos), int(y), segments))
        self.pad = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def collate(self, batch):
        n = max(len(ids) for ids, *_ in batch)
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        mask, segments = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, (x, *_rest, seg) in enumerate(batch):
            ids[i, : len(x)], mask[i, : len(x)], segments[i, : len(x)] = torch.tensor(x), 1, torch.tensor(seg)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments,
                "entities": torch.tensor([b[1] for b in batch]), "positions": torch.tensor([b[2] for b in batch]),
                "labels": torch.tensor([b[3] for b in batch], dtype=torch.float32)}


class TripleClassifier(nn.Module):
    """K1 (entity_vectors=None) or K2 (gated fusion of frozen KG entity vectors at the embedding output)."""

    def __init__(self, encoder: nn.Module, entity_vectors: torch.Tensor | None = None):
        super().__init__()
        self.encoder = encoder
        width = encoder.config.hidden_size
        self.head = nn.Linear(width, 1)
        self.fusion = entity_vectors is not None
        if self.fusion:
            self.register_buffer("entity_vectors", entity_vectors.detach().clone())  # frozen K0 vectors
            self.project = nn.Linear(entity_vectors.shape[1], width)  # W_e
            self.gate = nn.Linear(2 * width, width)  # g
            encoder.embeddings.register_forward_hook(self._fuse)
        self._batch = None

    def _fuse(self, module, inputs, hidden):  # hidden: (B, T, H) embedding output
        ents, pos = self._batch
        we = self.project(self.entity_vectors[ents])  # (B, 2, H): head, tail
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(-1).expand_as(pos)
        h = hidden[rows, pos]  # (B, 2, H)
        gate = torch.sigmoid(self.gate(torch.cat([h, we], dim=-1)))
        hidden = hidden.clone()
        hidden[rows, pos] = h + gate * we
        return hidden

    def forward(self, input_ids, attention_mask, entities, positions, labels=None, token_type_ids=None):
        self._batch = (entities, positions)
        cls = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state[:, 0]
        logits = self.head(cls).squeeze(-1)
        return logits


def triple_loss(model, batch) -> torch.Tensor:
    logits = model(**batch)
    return nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])


@torch.no_grad()
def predict_scores(model, dataset: TripleTextDataset, batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(dataset), batch_size):
        batch = dataset.collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        out.append(model(**batch).float())
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------------------- K3
class KAdapterClassifier(nn.Module):
    """K3, K-Adapter-style: the encoder is **frozen**; a knowledge adapter of ``len(plug_layers)`` adapter
    layers, each ``depth`` transformer layers of the encoder's width, reads the encoder's hidden states at
    ``plug_layers`` (outputs of those transformer layers, as K-Adapter plugs into RoBERTa-large at 0/11/23):
    a_j = x_j + T_j(x_j) with x_j = h^(plug_j) + a_{j-1}. The frozen K0 entity vectors, projected to the
    width, are added at the head/tail first sub-tokens of the adapter's input. The head reads
    concat(h_CLS of the encoder, h_CLS of the adapter)."""

    def __init__(self, encoder: nn.Module, entity_vectors: torch.Tensor | None = None,
                 plug_layers: tuple[int, ...] = (0, 3, 5), depth: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        for p in encoder.parameters():
            p.requires_grad_(False)
        n_layers = encoder.config.num_hidden_layers
        if not plug_layers or any(not 0 <= k < n_layers for k in plug_layers):
            raise ValueError(f"plug_layers must index the encoder's {n_layers} layers, got {plug_layers}")
        self.plug_layers = tuple(plug_layers)
        width = encoder.config.hidden_size
        self.adapters = nn.ModuleList(
            nn.TransformerEncoder(nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu",
                                                             batch_first=True), depth, enable_nested_tensor=False)
            for _ in plug_layers)
        self.fusion = entity_vectors is not None
        if self.fusion:
            self.register_buffer("entity_vectors", entity_vectors.detach().clone())
            self.project = nn.Linear(entity_vectors.shape[1], width)
        self.head = nn.Linear(2 * width, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout in the backbone either
        return self

    def forward(self, input_ids, attention_mask, entities=None, positions=None, labels=None, token_type_ids=None):
        with torch.no_grad():
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               output_hidden_states=True)
        hidden = out.hidden_states  # embeddings, then one per transformer layer
        pad = attention_mask == 0
        a = torch.zeros_like(hidden[0])
        for j, (k, block) in enumerate(zip(self.plug_layers, self.adapters)):
            x = hidden[k + 1] + a
            if j == 0 and self.fusion:
                rows = torch.arange(x.shape[0], device=x.device).unsqueeze(-1).expand_as(positions)
                x = x.index_put((rows, positions), self.project(self.entity_vectors[entities]), accumulate=True)
            a = x + block(x, src_key_padding_mask=pad)
        return self.head(torch.cat([out.last_hidden_state[:, 0], a[:, 0]], dim=-1)).squeeze(-1)
